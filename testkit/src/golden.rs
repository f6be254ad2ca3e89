//! Golden files: the one place their rules live.
//!
//! A golden pins an output users or other versions depend on (tunnel header
//! bytes, charts, CRDs, injection patches). A test compares its output with
//! the checked-in file; `UPDATE_GOLDEN=1` rewrites the file instead, for a
//! deliberate change that is then reviewed as a diff. In CI (`CI` set) the
//! variable is refused: there goldens are compared, never rewritten, so a
//! run cannot pass by updating what it checks.

use std::path::Path;

/// Whether this run rewrites goldens (and is allowed to).
///
/// # Panics
/// When `UPDATE_GOLDEN` is set in CI.
pub fn updating() -> bool {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    assert!(
        !(update && std::env::var_os("CI").is_some()),
        "UPDATE_GOLDEN is refused in CI: goldens are compared there, never rewritten"
    );
    update
}

/// Compares `actual` with the golden file at `path`, or rewrites the file
/// when [`updating`].
///
/// # Panics
/// When they differ (naming the file, the first differing line and how to
/// refresh it), or the file cannot be read or written.
pub fn check(path: &Path, actual: &str) {
    if updating() {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        }
        std::fs::write(path, actual).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        return;
    }
    let expected = std::fs::read_to_string(path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (create it with UPDATE_GOLDEN=1 and commit it)",
            path.display()
        )
    });
    if let Some(difference) = first_difference(&expected, actual) {
        panic!(
            "{} drifted: {difference}; if the change is intended, refresh with UPDATE_GOLDEN=1 and review the diff",
            path.display()
        );
    }
}

/// Where two texts first differ, as a short description; `None` if equal.
fn first_difference(expected: &str, actual: &str) -> Option<String> {
    if expected == actual {
        return None;
    }
    let mut want = expected.lines();
    let mut got = actual.lines();
    for line in 1.. {
        match (want.next(), got.next()) {
            (Some(w), Some(g)) if w == g => continue,
            (Some(w), Some(g)) => {
                return Some(format!("line {line}: expected `{w}`, got `{g}`"));
            }
            (Some(w), None) => return Some(format!("line {line}: expected `{w}`, got the end")),
            (None, Some(g)) => return Some(format!("line {line}: expected the end, got `{g}`")),
            (None, None) => break,
        }
    }
    Some("only line endings differ".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_first_differing_line() {
        assert_eq!(first_difference("a\nb\n", "a\nb\n"), None);
        assert_eq!(
            first_difference("a\nb\n", "a\nc\n").as_deref(),
            Some("line 2: expected `b`, got `c`")
        );
        assert_eq!(
            first_difference("a\n", "a\nb\n").as_deref(),
            Some("line 2: expected the end, got `b`")
        );
        assert!(first_difference("a\n", "a").is_some());
    }
}
