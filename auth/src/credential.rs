//! The token one Magnetar process presents to another (a broker to its bookies, an
//! auto-recovery worker to the bookies it copies between), given as Pulsar gives a client's
//! token parameters: `token:<jwt>`, `file:///path/to/token` (read again at every use, so a
//! rotated file is picked up on the next connection), or the token itself.
//!
//! Nothing here prints a token: `Debug` shows only where it comes from.

use std::fmt;
use std::path::PathBuf;

use crate::token::{TokenError, MAX_TOKEN_LEN};

/// Pulsar's token authentication plugin, by class name and short name.
pub const TOKEN_PLUGIN: &str = "org.apache.pulsar.client.impl.auth.AuthenticationToken";

/// Where a process finds the token it sends.
#[derive(Clone, PartialEq, Eq)]
pub enum TokenParam {
    /// The token itself (`token:<jwt>` or a bare token).
    Inline(String),
    /// A file holding the token, read at every use.
    File(PathBuf),
}

impl fmt::Debug for TokenParam {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenParam::Inline(_) => f.write_str("TokenParam::Inline(***)"),
            TokenParam::File(path) => write!(f, "TokenParam::File({})", path.display()),
        }
    }
}

impl TokenParam {
    /// Parses a plugin name and its parameters as Pulsar spells them. Only token
    /// authentication is spoken between Magnetar processes: any other plugin is an error.
    pub fn from_plugin(plugin: &str, params: &str) -> Result<Self, TokenError> {
        let plugin = plugin.trim();
        if !(plugin == TOKEN_PLUGIN || plugin.eq_ignore_ascii_case("token")) {
            return Err(TokenError::Invalid(format!(
                "authentication plugin {plugin:?}: only token authentication ({TOKEN_PLUGIN}) is supported here"
            )));
        }
        Self::parse(params)
    }

    /// Parses `token:<jwt>`, `file:///path` or a bare token. Errors never quote the token.
    pub fn parse(params: &str) -> Result<Self, TokenError> {
        let params = params.trim();
        if let Some(path) = params.strip_prefix("file://") {
            if !path.starts_with('/') || path.len() < 2 {
                return Err(TokenError::Invalid(
                    "token parameters: file: must be a file URL with an absolute path, as file:///path/to/token"
                        .to_owned(),
                ));
            }
            return Ok(TokenParam::File(PathBuf::from(path)));
        }
        let token = params.strip_prefix("token:").unwrap_or(params).trim();
        if token.is_empty() {
            return Err(TokenError::Invalid(
                "token parameters: none given, expected token:<token> or file:///path/to/token".to_owned(),
            ));
        }
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Invalid(format!("token parameters: longer than {MAX_TOKEN_LEN} bytes")));
        }
        Ok(TokenParam::Inline(token.to_owned()))
    }

    /// The token now: the inline one, or the file's contents without surrounding whitespace.
    pub fn read(&self) -> Result<String, TokenError> {
        match self {
            TokenParam::Inline(token) => Ok(token.clone()),
            TokenParam::File(path) => {
                let named = |reason: String| TokenError::Invalid(format!("token file {}: {reason}", path.display()));
                let length = std::fs::metadata(path).map_err(|error| named(error.to_string()))?.len();
                if length > MAX_TOKEN_LEN as u64 {
                    return Err(named(format!("{length} bytes: longer than any token")));
                }
                let token = std::fs::read_to_string(path).map_err(|error| named(error.to_string()))?;
                let token = token.trim();
                if token.is_empty() {
                    return Err(named("empty".to_owned()));
                }
                Ok(token.to_owned())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pulsar_spellings() {
        assert_eq!(TokenParam::parse("token:abc").unwrap(), TokenParam::Inline("abc".into()));
        assert_eq!(TokenParam::parse(" abc ").unwrap(), TokenParam::Inline("abc".into()));
        assert_eq!(TokenParam::parse("file:///run/t").unwrap(), TokenParam::File("/run/t".into()));
        assert!(TokenParam::parse("").is_err());
        assert!(TokenParam::parse("token:").is_err());
        assert!(TokenParam::parse("file://relative").is_err());
        assert!(TokenParam::from_plugin(TOKEN_PLUGIN, "token:x").is_ok());
        assert!(TokenParam::from_plugin("token", "token:x").is_ok());
        let other = TokenParam::from_plugin("org.apache.pulsar.client.impl.auth.AuthenticationTls", "token:x");
        assert!(other.unwrap_err().to_string().contains("only token"));
    }

    #[test]
    fn debug_and_errors_never_show_the_token() {
        let param = TokenParam::parse("token:very-secret").unwrap();
        assert!(!format!("{param:?}").contains("very-secret"));
        let long = format!("token:{}", "x".repeat(MAX_TOKEN_LEN + 1));
        assert!(!TokenParam::parse(&long).unwrap_err().to_string().contains("xxxx"));
    }

    #[test]
    fn file_is_read_at_every_use() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        let param = TokenParam::parse(&format!("file://{}", path.display())).unwrap();
        assert!(param.read().unwrap_err().to_string().contains("token file"));
        std::fs::write(&path, "first\n").unwrap();
        assert_eq!(param.read().unwrap(), "first");
        std::fs::write(&path, "second").unwrap();
        assert_eq!(param.read().unwrap(), "second");
        std::fs::write(&path, "  \n").unwrap();
        assert!(param.read().is_err());
    }
}
