//! Metadata key paths: the validation and directory arithmetic both stores share, so that
//! `LocalStore` and `EtcdStore` accept the same keys and list the same children.
//!
//! Pure functions, no I/O. Invariant: every key a store reads or writes passed [`validate`],
//! so it starts with `/`.

use crate::{MetaError, Result};

/// Checks that `key` is an absolute path (starts with `/`). Used for keys, watch prefixes and
/// listed paths alike.
pub(crate) fn validate(key: &str) -> Result<()> {
    if !key.starts_with('/') {
        return Err(MetaError::InvalidKey { key: key.to_owned(), reason: "must start with '/'" });
    }
    if key.contains('\0') {
        return Err(MetaError::InvalidKey { key: key.to_owned(), reason: "must not contain NUL" });
    }
    Ok(())
}

/// The prefix shared by every key under the directory `path`: `path` with exactly one
/// trailing `/` (`/a` and `/a/` both give `/a/`; `/` gives `/`).
pub(crate) fn children_prefix(path: &str) -> String {
    let mut prefix = path.trim_end_matches('/').to_owned();
    prefix.push('/');
    prefix
}

/// The child segment `key` lies in, for a key under `prefix` (from [`children_prefix`]):
/// `/a/b/c` under `/a/` is `b`. `None` if `key` is not under `prefix` or is the directory
/// itself (`/a/`).
pub(crate) fn child_of<'k>(prefix: &str, key: &'k str) -> Option<&'k str> {
    let rest = key.strip_prefix(prefix)?;
    let child = rest.split('/').next().unwrap_or(rest);
    (!child.is_empty()).then_some(child)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_and_empty_keys_are_rejected() {
        assert!(matches!(validate("a/b"), Err(MetaError::InvalidKey { .. })));
        assert!(matches!(validate(""), Err(MetaError::InvalidKey { .. })));
        assert!(matches!(validate("/a\0b"), Err(MetaError::InvalidKey { .. })));
        assert!(validate("/").is_ok());
        assert!(validate("/a/b").is_ok());
    }

    #[test]
    fn children_prefix_has_one_trailing_slash() {
        assert_eq!(children_prefix("/"), "/");
        assert_eq!(children_prefix("/a"), "/a/");
        assert_eq!(children_prefix("/a/"), "/a/");
        assert_eq!(children_prefix("/a//"), "/a/");
    }

    #[test]
    fn child_is_the_next_segment_under_the_prefix() {
        assert_eq!(child_of("/a/", "/a/b"), Some("b"));
        assert_eq!(child_of("/a/", "/a/b/c/d"), Some("b"));
        assert_eq!(child_of("/", "/x/y"), Some("x"));
        assert_eq!(child_of("/a/", "/a/"), None);
        assert_eq!(child_of("/a/", "/a//b"), None);
        assert_eq!(child_of("/a/", "/ab"), None);
        assert_eq!(child_of("/a/", "/a"), None);
    }
}
