//! How the CLI presents itself to shells: the name it was invoked under, and completion
//! scripts.
//!
//! kubectl runs any executable named `kubectl-<name>` on `$PATH` for `kubectl <name> …`
//! (the plugin convention), so a `kubectl-konnectivity` link to this binary makes
//! `kubectl konnectivity doctor …` work. Nothing changes in behaviour; only help and
//! usage texts name the command as the user typed it. For `kubectl konnectivity <TAB>`,
//! kubectl runs `kubectl_complete-konnectivity` with the words typed after the plugin
//! name (the last one being completed) and reads one completion per line, then an
//! optional `:<cobra directive>` line; the same binary answers under that name too.
use std::ffi::OsStr;
use std::io::Write;
use std::path::Path;

use clap::Command;
use clap_complete::Shell;

/// The name kubectl looks for on `$PATH` for `kubectl konnectivity`.
pub(crate) const PLUGIN_EXECUTABLE: &str = "kubectl-konnectivity";

/// The name kubectl looks for on `$PATH` to complete `kubectl konnectivity …`.
pub(crate) const PLUGIN_COMPLETION_EXECUTABLE: &str = "kubectl_complete-konnectivity";

/// Cobra's `ShellCompDirectiveNoFileComp`: offer nothing but the listed words.
const NO_FILE_COMPLETION: u8 = 4;

/// Whether this binary runs as kubectl's completion helper for the plugin.
pub(crate) fn is_kubectl_completion(argv0: Option<&OsStr>) -> bool {
    argv0
        .and_then(|a| Path::new(a).file_stem())
        .and_then(OsStr::to_str)
        == Some(PLUGIN_COMPLETION_EXECUTABLE)
}

/// kubectl's plugin completion: the visible subcommands (or, for a word starting with
/// `-`, the long flags) of the command `words` lead to that start with the last word,
/// one per line, then the cobra directive; a positional argument with a fixed set of
/// values (`completion <shell>`) offers those. File names are offered only where a
/// command takes neither, and no flag is being typed.
pub(crate) fn kubectl_completions(cmd: &Command, words: &[String]) -> String {
    let (current, typed) = words
        .split_last()
        .map_or(("", &[][..]), |(c, t)| (c.as_str(), t));
    let mut at = cmd;
    for w in typed {
        if let Some(sub) = at
            .get_subcommands()
            .find(|s| !s.is_hide_set() && s.get_name() == w)
        {
            at = sub;
        }
    }
    let mut out: Vec<String> = if current.starts_with('-') {
        at.get_arguments()
            .filter(|a| !a.is_hide_set())
            .filter_map(|a| a.get_long().map(|l| format!("--{l}")))
            .chain(["--help".to_owned()])
            .filter(|f| f.starts_with(current))
            .collect()
    } else {
        let values = at
            .get_positionals()
            .flat_map(|a| a.get_possible_values())
            .filter(|v| !v.is_hide_set())
            .map(|v| v.get_name().to_owned());
        at.get_subcommands()
            .filter(|s| !s.is_hide_set())
            .map(|s| s.get_name().to_owned())
            .chain(values)
            .filter(|w| w.starts_with(current))
            .collect()
    };
    let closed = at.has_subcommands()
        || at
            .get_positionals()
            .any(|a| !a.get_possible_values().is_empty());
    let files = !current.starts_with('-') && !closed;
    out.push(format!(":{}", if files { 0 } else { NO_FILE_COMPLETION }));
    out.join("\n") + "\n"
}

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

    #[test]
    fn kubectl_completion_offers_subcommands_then_flags_with_cobra_directives() {
        let cmd = Command::new("konnectivity")
            .subcommand(
                Command::new("doctor")
                    .subcommand(
                        Command::new("server")
                            .arg(clap::Arg::new("admin").long("admin"))
                            .arg(clap::Arg::new("all").long("all-agents"))
                            .arg(clap::Arg::new("secret").long("as").hide(true)),
                    )
                    .subcommand(Command::new("agent")),
            )
            .subcommand(Command::new("demo"))
            .subcommand(Command::new("dial").arg(clap::Arg::new("address")))
            .subcommand(Command::new("bench-null").hide(true));
        let words = |w: &[&str]| w.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            kubectl_completions(&cmd, &words(&[""])),
            "doctor\ndemo\ndial\n:4\n"
        );
        assert_eq!(
            kubectl_completions(&cmd, &words(&["d"])),
            "doctor\ndemo\ndial\n:4\n"
        );
        assert_eq!(kubectl_completions(&cmd, &words(&["b"])), ":4\n");
        assert_eq!(
            kubectl_completions(&cmd, &words(&["doctor", ""])),
            "server\nagent\n:4\n"
        );
        assert_eq!(
            kubectl_completions(&cmd, &words(&["doctor", "server", "--a"])),
            "--admin\n--all-agents\n:4\n"
        );
        assert_eq!(kubectl_completions(&cmd, &words(&["dial", ""])), ":0\n");
        assert_eq!(kubectl_completions(&cmd, &[]), "doctor\ndemo\ndial\n:4\n");
        assert!(is_kubectl_completion(Some(OsStr::new(
            "/bin/kubectl_complete-konnectivity"
        ))));
        assert!(!is_kubectl_completion(Some(OsStr::new(
            "kubectl-konnectivity"
        ))));
    }
}
