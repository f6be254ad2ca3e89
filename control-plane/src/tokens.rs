//! Bootstrap tokens of file mode: a JSON map from token to workload name.
//!
//! `phoenix up` writes one random token per workload into the state
//! directory (mode 0600) and hands each proxy its own through the
//! environment. In Kubernetes, ServiceAccount tokens checked by TokenReview
//! replace this file.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// File name of the tokens file in the state directory.
pub const TOKENS_FILE: &str = "tokens.json";

/// Token → workload name. `Debug` shows the workloads, never the tokens.
#[derive(Default, Clone, PartialEq, Eq)]
pub struct Tokens {
    by_token: HashMap<String, String>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut workloads: Vec<&str> = self.by_token.values().map(String::as_str).collect();
        workloads.sort_unstable();
        f.debug_struct("Tokens")
            .field("workloads", &workloads)
            .finish_non_exhaustive()
    }
}

/// Why the tokens file is unusable.
#[derive(Debug, thiserror::Error)]
pub enum TokensError {
    /// It cannot be read.
    #[error("cannot read tokens file {path}")]
    Read {
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// It is not a JSON object of strings.
    #[error("tokens file {path} must be a JSON object mapping token to workload name")]
    Parse {
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
}

impl Tokens {
    /// Loads the tokens file; a missing file means no tokens (and so no
    /// certificates), which the caller reports.
    pub fn load(path: &Path) -> Result<Self, TokensError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(source) => {
                return Err(TokensError::Read {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        let by_token = serde_json::from_str(&text).map_err(|source| TokensError::Parse {
            path: path.to_owned(),
            source,
        })?;
        Ok(Self { by_token })
    }

    /// Builds tokens from pairs (tests, and `phoenix up`).
    pub fn from_pairs(pairs: impl IntoIterator<Item = (String, String)>) -> Self {
        Self {
            by_token: pairs.into_iter().collect(),
        }
    }

    /// The workload a token names.
    pub fn workload(&self, token: &str) -> Option<&str> {
        self.by_token.get(token).map(String::as_str)
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.by_token.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.by_token.is_empty()
    }

    /// Writes `tokens` to `path` readable by the owner only.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let text = serde_json::to_string_pretty(&self.by_token).map_err(std::io::Error::other)?;
        let tmp = path.with_extension("json.tmp");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(text.as_bytes())?;
        std::fs::rename(tmp, path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_shows_workloads_not_tokens() {
        let tokens = Tokens::from_pairs([("s3cr3t-token".to_owned(), "web".to_owned())]);
        let shown = format!("{tokens:?}");
        assert!(
            shown.contains("web") && !shown.contains("s3cr3t"),
            "{shown}"
        );
    }
}
