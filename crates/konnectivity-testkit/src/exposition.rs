//! Golden files of a Prometheus text exposition's shape: every HELP and TYPE line, and
//! every series without its value (values change from run to run; names, HELP texts,
//! types, label sets and bucket bounds must not). Order is not part of the shape
//! (Prometheus ignores it): families are sorted by name, series within a family too.

/// `text` without sample values, families and their series sorted.
pub fn shape(text: &str) -> String {
    let mut families: Vec<(Vec<&str>, Vec<&str>)> = Vec::new();
    for l in text.lines() {
        if l.starts_with("# HELP") || families.is_empty() {
            families.push(Default::default());
        }
        let Some((headers, series)) = families.last_mut() else {
            continue;
        };
        match l.starts_with('#') {
            true => headers.push(l),
            false => series.push(l.rsplit_once(' ').map_or(l, |(s, _)| s)),
        }
    }
    for (_, series) in &mut families {
        series.sort_unstable();
    }
    families.sort_unstable();
    let lines = families
        .into_iter()
        .flat_map(|(h, s)| h.into_iter().chain(s));
    lines.fold(String::new(), |o, l| o + l + "\n")
}

/// Compares the shape of `text` with the golden file at `path`; with
/// `UPDATE_GOLDEN=1` in the environment it writes the file instead. With
/// `EXPOSITION_DUMP=dir`, `text` itself is written to `dir`, under the golden's name.
#[track_caller]
pub fn assert_golden(text: &str, path: &std::path::Path) {
    if let (Some(dir), Some(file)) = (std::env::var_os("EXPOSITION_DUMP"), path.file_name()) {
        let _ = std::fs::write(std::path::Path::new(&dir).join(file), text);
    }
    let got = shape(text);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(path, &got).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        return;
    }
    let want = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    if got != want {
        let diff: Vec<String> = want
            .lines()
            .filter(|l| !got.lines().any(|g| g == *l))
            .map(|l| format!("- {l}"))
            .chain(
                got.lines()
                    .filter(|l| !want.lines().any(|w| w == *l))
                    .map(|l| format!("+ {l}")),
            )
            .collect();
        panic!(
            "{} differs (order or lines; UPDATE_GOLDEN=1 rewrites it):\n{}",
            path.display(),
            diff.join("\n")
        );
    }
}
