//! Existence checks for the path flags (certificates, keys, tokens, kubeconfig).
//!
//! Upstream validation only fails when `os.Stat` reports that a file does not exist (other
//! errors, such as permissions, surface later when the file is read). The complaint mimics Go's
//! `stat <path>: no such file or directory` so messages match upstream's.

/// Go's `os.Stat` complaint for a missing file, or `None` when the path exists or cannot be
/// checked for another reason.
pub(crate) fn missing_file(path: &str) -> Option<String> {
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Some(format!("stat {path}: no such file or directory"))
        }
        _ => None,
    }
}

/// Fails with `message(path, stat error)` when `path` is set but does not exist.
pub(crate) fn check_file(path: &str, message: impl Fn(&str, &str) -> String) -> Result<(), String> {
    if path.is_empty() {
        return Ok(());
    }
    match missing_file(path) {
        Some(err) => Err(message(path, &err)),
        None => Ok(()),
    }
}

/// Key then cert: each must exist when set, and each requires the other (`what` is
/// `server`, `cluster` or `agent` in the messages).
pub(crate) fn check_pair(what: &str, key: &str, cert: &str) -> Result<(), String> {
    for (file, is, other, other_is) in [(key, "key", cert, "cert"), (cert, "cert", key, "key")] {
        if file.is_empty() {
            continue;
        }
        check_file(file, |p, e| {
            format!("error checking {what} {is} {p}, got {e}")
        })?;
        if other.is_empty() {
            return Err(format!(
                "cannot have {what} {other_is} empty when {what} {is} is set to {}",
                crate::go::strconv::quote(file)
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_missing_files_fail() {
        assert_eq!(check_file("", |_, _| "unused".to_owned()), Ok(()));
        assert_eq!(check_file("/", |_, _| "unused".to_owned()), Ok(()));
        assert_eq!(
            check_file("/nonexistent/x", |p, e| format!("checking {p}, got {e}")),
            Err(
                "checking /nonexistent/x, got stat /nonexistent/x: no such file or directory"
                    .to_owned()
            )
        );
    }
}
