//! The operator CLI as a kubectl plugin (run under the name `kubectl-konnectivity`) and
//! its shell completions (the generated bash script, sourced by a real bash).
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn konnectivity() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_konnectivity"))
}

fn run(program: &Path, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()))
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// `dir/kubectl-konnectivity`, a symbolic link to the built binary (how it is installed
/// beside `konnectivity`, and what kubectl finds on `$PATH`).
fn plugin_link(dir: &Path) -> PathBuf {
    let link = dir.join("kubectl-konnectivity");
    std::os::unix::fs::symlink(konnectivity(), &link).expect("symlink");
    link
}

#[test]
fn runs_as_kubectl_plugin_under_the_plugin_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let plugin = plugin_link(dir.path());

    let help = run(&plugin, &["--help"]);
    assert!(help.status.success(), "{help:?}");
    let text = stdout(&help);
    assert!(
        text.contains("Usage: kubectl konnectivity <COMMAND>"),
        "{text}"
    );
    for sub in ["demo", "dial", "doctor", "bench", "completion"] {
        assert!(
            text.contains(&format!("\n  {sub} ")),
            "no {sub} in:\n{text}"
        );
    }
    let doctor = stdout(&run(&plugin, &["doctor", "server", "--help"]));
    assert!(
        doctor.contains("Usage: kubectl konnectivity doctor server"),
        "{doctor}"
    );

    // It does the work, not only the help: a doctor run against an admin port where
    // nothing listens fails with a finding and exit code 1, as under its own name.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port");
    let sock = dir.path().join("absent.sock");
    let args = [
        "doctor",
        "server",
        "--admin",
        &closed.to_string(),
        "--uds",
        &sock.display().to_string(),
        "--timeout",
        "2s",
    ];
    let as_plugin = run(&plugin, &args);
    let as_itself = run(&konnectivity(), &args);
    assert_eq!(as_plugin.status.code(), Some(1), "{as_plugin:?}");
    assert_eq!(as_plugin.status.code(), as_itself.status.code());
    assert!(
        stdout(&as_plugin).contains(&closed.to_string()),
        "{as_plugin:?}"
    );

    // Under its own name, usage names `konnectivity`.
    let own = stdout(&run(&konnectivity(), &["--help"]));
    assert!(own.contains("Usage: konnectivity <COMMAND>"), "{own}");
}

/// kubectl completes `kubectl konnectivity …` by running `kubectl_complete-konnectivity`
/// with the words after the plugin name; the binary answers under that name.
#[test]
fn completes_for_kubectl_under_the_completion_helper_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let helper = dir.path().join("kubectl_complete-konnectivity");
    std::os::unix::fs::symlink(konnectivity(), &helper).expect("symlink");
    let complete = |words: &[&str]| {
        let o = run(&helper, words);
        assert!(o.status.success(), "{o:?}");
        stdout(&o)
    };
    assert_eq!(complete(&["d"]), "demo\ndial\ndoctor\n:4\n");
    assert_eq!(
        complete(&["doctor", "server", "--a"]),
        "--admin\n--all-agents\n:4\n"
    );
    assert_eq!(complete(&["completion", "f"]), "fish\n:4\n");
}

/// Completions bash offers for the words of `line` (the last one being completed), from
/// `konnectivity completion bash` sourced into a fresh `bash`.
fn bash_complete(line: &[&str]) -> Vec<String> {
    let dir = tempfile::tempdir().expect("tempdir");
    let script = dir.path().join("konnectivity.bash");
    let generated = run(&konnectivity(), &["completion", "bash"]);
    assert!(generated.status.success(), "{generated:?}");
    std::fs::write(&script, &generated.stdout).expect("write script");
    let words = line
        .iter()
        .map(|w| format!("'{w}'"))
        .collect::<Vec<_>>()
        .join(" ");
    // Call the function bash registered for `konnectivity` the way bash's completion
    // does: COMP_WORDS/COMP_CWORD set, arguments (command, word, previous word).
    let prog = format!(
        r#"set -e
source '{script}'
fn=$(complete -p konnectivity | sed -n 's/.*-F \([^ ]*\) .*/\1/p')
[ -n "$fn" ] || {{ echo 'no completion function registered for konnectivity' >&2; exit 3; }}
COMP_WORDS=({words})
COMP_CWORD=$(( ${{#COMP_WORDS[@]}} - 1 ))
COMP_LINE="${{COMP_WORDS[*]}}"
COMP_POINT=${{#COMP_LINE}}
COMP_TYPE=9
"$fn" konnectivity "${{COMP_WORDS[COMP_CWORD]}}" "${{COMP_WORDS[COMP_CWORD-1]}}"
printf '%s\n' "${{COMPREPLY[@]}}"
"#,
        script = script.display()
    );
    let out = Command::new("bash")
        .args(["--norc", "--noprofile", "-c", &prog])
        .output()
        .expect("bash");
    assert!(out.status.success(), "bash completion failed: {out:?}");
    stdout(&out)
        .lines()
        .map(|l| l.trim().to_owned())
        .filter(|l| !l.is_empty())
        .collect()
}

#[test]
fn bash_completion_offers_subcommands_and_flags() {
    let top = bash_complete(&["konnectivity", ""]);
    for sub in ["demo", "dial", "doctor", "bench", "completion", "help"] {
        assert!(top.iter().any(|w| w == sub), "no {sub} in {top:?}");
    }
    assert!(
        !top.iter().any(|w| w.starts_with("bench-")),
        "internal subcommands must stay hidden: {top:?}"
    );

    let doctor = bash_complete(&["konnectivity", "doctor", ""]);
    for sub in ["server", "agent"] {
        assert!(doctor.iter().any(|w| w == sub), "no {sub} in {doctor:?}");
    }
    let flags = bash_complete(&["konnectivity", "doctor", "server", "--a"]);
    assert!(
        flags.iter().any(|w| w == "--admin") && flags.iter().any(|w| w == "--all-agents"),
        "{flags:?}"
    );
    assert!(flags.iter().all(|w| w.starts_with("--a")), "{flags:?}");

    let shells = bash_complete(&["konnectivity", "completion", ""]);
    for sh in ["bash", "zsh", "fish"] {
        assert!(shells.iter().any(|w| w == sh), "no {sh} in {shells:?}");
    }
}

#[test]
fn zsh_and_fish_completions_name_the_subcommands() {
    let zsh = stdout(&run(&konnectivity(), &["completion", "zsh"]));
    assert!(zsh.starts_with("#compdef konnectivity"), "{zsh}");
    let fish = stdout(&run(&konnectivity(), &["completion", "fish"]));
    for sub in ["demo", "dial", "doctor", "bench", "completion"] {
        assert!(zsh.contains(&format!("'{sub}:")), "zsh lacks {sub}");
        assert!(
            fish.contains(&format!("-a \"{sub}\"")),
            "fish lacks {sub}:\n{fish}"
        );
    }
    // Where the shells are installed, their parsers accept the scripts.
    for (shell, script, check) in [
        ("zsh", &zsh, &["-n"][..]),
        ("fish", &fish, &["--no-execute"][..]),
    ] {
        let Ok(mut child) = Command::new(shell)
            .args(check)
            .stdin(std::process::Stdio::piped())
            .spawn()
        else {
            eprintln!("{shell} not installed: its completion script is checked by content only");
            continue;
        };
        use std::io::Write;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(script.as_bytes())
            .expect("write");
        let st = child.wait().expect("wait");
        assert!(st.success(), "{shell} rejects its completion script");
    }
}
