//! The migrations are embedded with `include_str!` from the workspace's
//! `migrations/`; watch that folder relative to this package so that clones
//! sharing one target directory each rebuild from their own files.

fn main() {
    println!("cargo:rerun-if-changed=../../migrations");
}
