//! The Go interop client (`tests/go-interop`): the real upstream `konnectivity-client`
//! module (what kube-apiserver links) driving our frontends through its scenarios, or
//! timing them in its bench mode.
//!
//! Built with `go build` once per process and binary path ([`build`]), then run with a
//! bound on its own run time ([`run`]). The e2e tests build it next to our binaries, where
//! the bench looks for it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

/// The Go module of the interop client.
pub fn source_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/go-interop")
}

/// Builds the interop client into `out` (once per process for each `out`); `out` again.
pub fn build(out: &Path) -> anyhow::Result<PathBuf> {
    static BUILT: Mutex<Option<HashMap<PathBuf, Result<(), String>>>> = Mutex::new(None);
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    let result = built
        .get_or_insert_with(HashMap::new)
        .entry(out.to_path_buf())
        .or_insert_with(|| {
            let build = Command::new("go")
                .arg("build")
                .arg("-o")
                .arg(out)
                .arg(".")
                .current_dir(source_dir())
                .output()
                .map_err(|e| format!("cannot run `go` (install Go; .ci/run does): {e}"))?;
            if build.status.success() {
                Ok(())
            } else {
                Err(format!(
                    "go build failed: {}",
                    String::from_utf8_lossy(&build.stderr)
                ))
            }
        })
        .clone();
    result.map_err(|e| anyhow::anyhow!(e))?;
    Ok(out.to_path_buf())
}

/// Runs the interop client at `program` with `args`, `-timeout=150s` and `-wait=<wait>`
/// (how long its first dial may wait for an agent); its standard output, which is also
/// printed. Fails with both outputs when any scenario failed.
pub fn run(program: &Path, args: &[String], wait: &str) -> anyhow::Result<String> {
    let out = Command::new(program)
        .args(args)
        .arg("-timeout=150s")
        .arg(format!("-wait={wait}"))
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    println!("{stdout}");
    anyhow::ensure!(
        out.status.success(),
        "Go konnectivity-client interop failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(stdout)
}
