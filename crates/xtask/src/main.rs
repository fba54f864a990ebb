//! `cargo xtask <command>`: the project's own set-up, with nothing installed
//! first but the Rust toolchain.
//!
//!   up      install and start the stack and every service, feed it from a
//!           simulated fleet, print where to look
//!   down    stop everything `up` (or `stack`) started
//!   test    install and start what the tests need, run the whole suite
//!   stack   install and start PostgreSQL, Mosquitto and Tansu only
//!   bench   run a benchmark program against the stack (`bench ingest`, and
//!           the others `stack::BENCHES` names)
//!   faults  the fault suite: services killed, brokers and PostgreSQL
//!           restarted, the database link stalled, under a steady fleet
//!           (`--short`: the version `test` runs)
//!   console build the web console (npm ci, checks, vite build) that
//!           graphql-gateway embeds (part of `up` and `test`)
//!   status  show what runs
//!   deploy-check  lint and render the Helm chart and validate what it
//!           renders, and docker-compose.yml, against their schemas (part
//!           of `test`)
//!   proto-check  `buf lint` and `buf breaking` (against the last released
//!           API) on proto/ (part of `test`)

mod console;
mod deploy;
mod helm;
mod paths;
mod pgsize;
mod pgtls;
mod proc;
mod proto;
mod stack;

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cmd = args.first().map(String::as_str).unwrap_or("help");
    let result = match cmd {
        "up" => stack::up(),
        "down" => stack::down(),
        "test" => stack::test(&args[1..]),
        "test-tls" => stack::test_tls(),
        "stack" => stack::infra().map(|_| ()),
        "status" => stack::status(),
        "console" => console::build(),
        "deploy-check" => deploy::check(),
        "proto-check" => proto::check(),
        "bench" => stack::bench(&args[1..]),
        "faults" => stack::faults(&args[1..]),
        _ => {
            eprintln!(
                "usage: cargo xtask <up|down|test|test-tls|stack|status|console|deploy-check|proto-check|faults [--short]|bench {}>",
                stack::BENCHES.join("|")
            );
            return if cmd == "help" {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            };
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask {cmd}: {e}");
            ExitCode::FAILURE
        }
    }
}
