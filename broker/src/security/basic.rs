//! Users and passwords from an htpasswd file (Pulsar's `basicAuthConf`: a path or base64
//! data), in the formats Apache's `htpasswd` writes: `$apr1$` MD5 (its default), bcrypt
//! (`-B`: `$2y$`, and `$2a$`/`$2b$`), `{SHA}` (`-s`) and crypt (`-d`).
//!
//! The file is untrusted text: a malformed line is skipped with a log line naming it, and a
//! malformed hash never matches; nothing here panics.

use std::collections::HashMap;

use base64::Engine;
use tracing::warn;

/// Longest password checked (the MD5 of Apache's scheme is computed over the whole of it).
const MAX_PASSWORD_LEN: usize = 1024;

/// The users of one htpasswd file.
pub struct Htpasswd {
    users: HashMap<String, String>,
}

impl std::fmt::Debug for Htpasswd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Htpasswd").field("users", &self.users.len()).finish()
    }
}

impl Htpasswd {
    /// Reads `basicAuthConf`: a file path (or `file://` URL), or the file's contents in base64
    /// (optionally as a `data:;base64,` URL), as Pulsar takes it.
    pub fn load(conf: &str) -> Result<Self, String> {
        let conf = conf.trim();
        let path = conf.strip_prefix("file://").unwrap_or(conf);
        let text = if std::path::Path::new(path).is_file() {
            std::fs::read_to_string(path).map_err(|error| format!("basicAuthConf {path}: {error}"))?
        } else {
            let data = conf.strip_prefix("data:;base64,").unwrap_or(conf);
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(data)
                .map_err(|_| "basicAuthConf: neither an existing file nor base64 data".to_owned())?;
            String::from_utf8(bytes).map_err(|_| "basicAuthConf: the decoded data is not text".to_owned())?
        };
        let users = Self::parse(&text);
        if users.users.is_empty() {
            return Err("basicAuthConf: no user:hash lines".to_owned());
        }
        Ok(users)
    }

    /// The `user:hash` lines of `text`.
    pub fn parse(text: &str) -> Self {
        let mut users = HashMap::new();
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            match line.split_once(':') {
                Some((user, hash)) if !user.is_empty() && !hash.is_empty() => {
                    users.insert(user.to_owned(), hash.to_owned());
                }
                _ => warn!(line = number + 1, "basicAuthConf: skipping a line that is not user:hash"),
            }
        }
        Htpasswd { users }
    }

    /// True if `user` exists and `password` matches its hash.
    pub fn check(&self, user: &str, password: &str) -> bool {
        if password.len() > MAX_PASSWORD_LEN {
            return false;
        }
        let Some(hash) = self.users.get(user) else { return false };
        check_hash(hash, password)
    }
}

fn check_hash(hash: &str, password: &str) -> bool {
    if let Some(rest) = hash.strip_prefix("$apr1$") {
        let Some((salt, digest)) = rest.split_once('$') else { return false };
        if salt.is_empty() || salt.len() > 8 || digest.len() != 22 {
            return false;
        }
        let computed = htpasswd_verify::md5::md5_apr1_encode(password, salt);
        return constant_time_eq(computed.as_bytes(), digest.as_bytes());
    }
    if ["$2y$", "$2a$", "$2b$", "$2x$"].iter().any(|prefix| hash.starts_with(prefix)) {
        return bcrypt::verify(password, hash).unwrap_or(false);
    }
    if hash.starts_with("{SHA}") {
        // The parsing there only strips the prefix.
        return htpasswd_verify::Hash::parse(hash).check(password);
    }
    // Crypt: exactly 13 characters of its alphabet (its decoder panics on anything else).
    let crypt_alphabet = |c: char| c.is_ascii_alphanumeric() || c == '.' || c == '/';
    if hash.len() == 13 && hash.chars().all(crypt_alphabet) {
        return htpasswd_verify::Hash::parse(hash).check(password);
    }
    false
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The password "password" as `htpasswd -m` (apr1), `-s` (SHA) and `-d` (crypt) write it
    /// (checked with `openssl passwd -apr1` and Python's `crypt`); bcrypt is made below.
    const FILE: &str = "\
# comment
md5user:$apr1$lZL6V/ci$eIMz/iKDkbtys/uU7LEK00
shauser:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=
cryptuser:rqVTKtRlPS2tM
not a valid line
";

    #[test]
    fn each_htpasswd_format_checks() {
        let users = Htpasswd::parse(FILE);
        assert!(users.check("md5user", "password"));
        assert!(!users.check("md5user", "Password"));
        assert!(users.check("shauser", "password"));
        assert!(!users.check("shauser", "passwor"));
        assert!(users.check("cryptuser", "password"));
        assert!(!users.check("cryptuser", "wrong"));
        assert!(!users.check("nobody", "password"));
        assert!(!users.check("md5user", &"p".repeat(MAX_PASSWORD_LEN + 1)));
    }

    #[test]
    fn bcrypt_hashes_check_and_malformed_ones_do_not_panic() {
        let hash = bcrypt::hash("secret", 4).expect("hash");
        let users = Htpasswd::parse(&format!("b:{hash}\nbroken:$2y$zz\nshort:$apr1$ab\n"));
        assert!(users.check("b", "secret"));
        assert!(!users.check("b", "other"));
        assert!(!users.check("broken", "x"));
        assert!(!users.check("short", "x"));
    }

    #[test]
    fn load_takes_a_path_or_base64_data() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join(".htpasswd");
        std::fs::write(&path, FILE).expect("write");
        assert!(Htpasswd::load(path.to_str().expect("utf8")).expect("path").check("md5user", "password"));
        let data = base64::engine::general_purpose::STANDARD.encode(FILE);
        assert!(Htpasswd::load(&data).expect("base64").check("shauser", "password"));
        assert!(Htpasswd::load("/no/such/file").is_err());
        assert!(Htpasswd::load("").is_err());
    }

    proptest! {
        #[test]
        fn random_files_and_passwords_never_panic(text in ".{0,300}", user in ".{0,20}", password in ".{0,40}") {
            let users = Htpasswd::parse(&text);
            let _ = users.check(&user, &password);
            let line = format!("{user}:{text}");
            let _ = Htpasswd::parse(&line).check(&user, &password);
        }
    }
}
