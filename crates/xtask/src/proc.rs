//! Running commands and managing background processes by pid file.

use std::fs;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use crate::paths;

pub type Result<T> = std::result::Result<T, String>;

/// Runs a command in the foreground; an error when it fails.
pub fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("+ {}", describe(cmd));
    let status = cmd
        .status()
        .map_err(|e| format!("cannot run {}: {e}", describe(cmd)))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{} failed: {status}", describe(cmd)))
    }
}

pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

pub fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

pub fn port_open(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_ok()
}

pub fn wait_port(name: &str, port: u16, timeout: Duration) -> Result<()> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if port_open(port) {
            return Ok(());
        }
        sleep(Duration::from_millis(200));
    }
    Err(format!(
        "{name} did not open 127.0.0.1:{port} within {}s; see {}",
        timeout.as_secs(),
        log_path(name).display()
    ))
}

pub fn pid_path(name: &str) -> PathBuf {
    paths::run_dir().join("pids").join(format!("{name}.pid"))
}

pub fn log_path(name: &str) -> PathBuf {
    paths::run_dir().join("logs").join(format!("{name}.log"))
}

pub fn ensure_run_dirs() -> Result<()> {
    for d in ["pids", "logs", "mosquitto"] {
        fs::create_dir_all(paths::run_dir().join(d)).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Starts `cmd` detached (own process group), output to `logs/{name}.log`,
/// pid to `pids/{name}.pid`.
pub fn spawn(name: &str, cmd: &mut Command) -> Result<u32> {
    ensure_run_dirs()?;
    let log = fs::File::create(log_path(name)).map_err(|e| e.to_string())?;
    let err = log.try_clone().map_err(|e| e.to_string())?;
    eprintln!("+ {} &  (log: {})", describe(cmd), log_path(name).display());
    let child = cmd
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err)
        .process_group(0)
        .spawn()
        .map_err(|e| format!("cannot start {name}: {e}"))?;
    let pid = child.id();
    fs::write(pid_path(name), pid.to_string()).map_err(|e| e.to_string())?;
    Ok(pid)
}

pub fn read_pid(path: &Path) -> Option<u32> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

pub fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| !s.contains(") Z "))
            .unwrap_or(false)
}

/// The pid of `name` if we started it and it still runs.
pub fn running(name: &str) -> Option<u32> {
    read_pid(&pid_path(name)).filter(|p| alive(*p))
}

/// SIGTERM, wait up to `grace`, then SIGKILL. Removes the pid file.
pub fn stop(name: &str, grace: Duration) {
    let path = pid_path(name);
    let Some(pid) = read_pid(&path) else { return };
    if alive(pid) {
        eprintln!("stopping {name} (pid {pid})");
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
        let start = Instant::now();
        while alive(pid) && start.elapsed() < grace {
            sleep(Duration::from_millis(100));
        }
        if alive(pid) {
            eprintln!("{name} did not stop in {}s, killing", grace.as_secs());
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    }
    let _ = fs::remove_file(path);
}

/// Installs the npm `package` at `version` into `dir`, a package of its
/// own, so that npm neither looks for one in a parent folder nor resolves
/// the version again. Installs npm (Debian's brings Node.js) when missing.
pub fn npm_install(dir: &std::path::Path, package: &str, version: &str) -> Result<()> {
    if !have("npm") {
        crate::stack::apt_install(&["npm"])?;
    }
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    std::fs::write(
        dir.join("package.json"),
        format!("{{\"private\": true, \"dependencies\": {{\"{package}\": \"{version}\"}}}}\n"),
    )
    .map_err(|e| e.to_string())?;
    run(Command::new("npm")
        .args(["install", "--no-audit", "--no-fund", "--ignore-scripts"])
        .arg("--prefix")
        .arg(dir))
}

/// Fails unless `bin` run with `args` prints `want` (an installed tool's
/// version, say).
pub fn require_output(bin: &std::path::Path, args: &[&str], want: &str) -> Result<()> {
    let out = Command::new(bin)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", bin.display()))?;
    let got = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if !out.status.success() || got != want {
        return Err(format!(
            "{} {} printed {got:?}, not {want}: {}",
            bin.display(),
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}
