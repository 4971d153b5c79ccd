//! How the CLI presents itself to shells: the name it was invoked under, and completion
//! scripts.
//!
//! kubectl runs any executable named `kubectl-<name>` on `$PATH` for `kubectl <name> …`
//! (the plugin convention), so a `kubectl-konnectivity` link to this binary makes
//! `kubectl konnectivity doctor …` work. Nothing changes in behaviour; only help and
//! usage texts name the command as the user typed it.
use std::ffi::OsStr;
use std::io::Write;
use std::path::Path;

use clap::Command;
use clap_complete::Shell;

/// The name kubectl looks for on `$PATH` for `kubectl konnectivity`.
pub(crate) const PLUGIN_EXECUTABLE: &str = "kubectl-konnectivity";

/// How help and usage name the command: `kubectl konnectivity` when this binary was run
/// as the kubectl plugin (`argv[0]` named `kubectl-konnectivity`), else `konnectivity`.
pub(crate) fn display_name(argv0: Option<&OsStr>) -> &'static str {
    let stem = argv0
        .and_then(|a| Path::new(a).file_stem())
        .and_then(OsStr::to_str);
    if stem == Some(PLUGIN_EXECUTABLE) {
        "kubectl konnectivity"
    } else {
        "konnectivity"
    }
}

/// Writes the completion script for `shell` (for the `konnectivity` command) to `out`;
/// hidden (internal) subcommands are not offered.
pub(crate) fn write_completion(shell: Shell, cmd: &Command, out: &mut dyn Write) {
    let mut visible = Command::new("konnectivity")
        .version(env!("CARGO_PKG_VERSION"))
        .args(cmd.get_arguments().cloned())
        .subcommands(cmd.get_subcommands().filter(|s| !s.is_hide_set()).cloned());
    clap_complete::generate(shell, &mut visible, "konnectivity", out);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugin_name_is_recognised_with_or_without_a_directory() {
        for argv0 in [
            "kubectl-konnectivity",
            "/usr/local/bin/kubectl-konnectivity",
        ] {
            assert_eq!(
                display_name(Some(OsStr::new(argv0))),
                "kubectl konnectivity"
            );
        }
        for argv0 in ["konnectivity", "/opt/bin/konnectivity", "kubectl"] {
            assert_eq!(display_name(Some(OsStr::new(argv0))), "konnectivity");
        }
        assert_eq!(display_name(None), "konnectivity");
    }
}
