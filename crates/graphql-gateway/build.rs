//! Embeds the web console's built assets (`console/dist`, written by `npm
//! run build` in `console/`; `cargo xtask console` does it) into the
//! gateway. Without them the gateway still builds, and `/console` answers
//! 503 saying how to build it.

use std::path::{Path, PathBuf};

fn main() {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let console = manifest.join("../../console");
    let dist = console.join("dist");
    let mut files = Vec::new();
    if dist.join("index.html").is_file() {
        // Built: a new build changes what is in dist.
        println!("cargo:rerun-if-changed={}", dist.display());
        walk(&dist, &dist, &mut files);
    } else {
        // Not built: the folder that dist will appear in (a path that does
        // not exist would make the script run, and the crate build, every
        // time).
        println!("cargo:rerun-if-changed={}", console.display());
    }
    files.sort();
    let mut out = String::from(
        "/// The console's files by path under `console/dist` (empty: not built).\n\
         pub static ASSETS: &[(&str, &[u8])] = &[\n",
    );
    for (rel, abs) in &files {
        out.push_str(&format!("    ({rel:?}, include_bytes!({abs:?})),\n"));
    }
    out.push_str("];\n");
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").unwrap_or_default());
    if let Err(e) = std::fs::write(out_dir.join("console_assets.rs"), out) {
        panic!("cannot write the console's asset list: {e}");
    }
}

fn walk(root: &Path, dir: &Path, files: &mut Vec<(String, String)>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            walk(root, &path, files);
        } else if let (Ok(rel), Ok(abs)) = (path.strip_prefix(root), path.canonicalize()) {
            let rel = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join("/");
            files.push((rel, abs.to_string_lossy().into_owned()));
        }
    }
}
