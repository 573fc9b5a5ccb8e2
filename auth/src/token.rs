//! JSON Web Tokens as Pulsar makes and checks them: signed with a secret key (HS256) or a
//! key pair (RS256, ES256); the role in a claim (`sub` unless `tokenAuthClaim` says
//! otherwise); `exp` honoured with no clock skew allowed.
//!
//! Keys are given as Pulsar gives them (`tokenSecretKey`, `tokenPublicKey`): `file:///path`,
//! `data:;base64,...`, a plain path, or the key's base64. A secret key is raw bytes; a public
//! key is X.509 SubjectPublicKeyInfo and a private key PKCS#8, in DER (what `pulsar tokens
//! create-key-pair` writes) or PEM. The same functions make keys and tokens for `magnetar
//! tokens`, so what one side writes the other reads.

use std::collections::HashSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{Map, Value};

/// Longest token accepted: a token is a few hundred bytes; anything this long is not one.
pub const MAX_TOKEN_LEN: usize = 16 * 1024;
/// Largest key file read.
const MAX_KEY_LEN: u64 = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// A key that cannot be read or decoded; names where it came from, never its bytes.
    #[error("token key {source_name}: {reason}")]
    Key { source_name: String, reason: String },
    /// A token refused: malformed, badly signed, expired, or without the role claim.
    #[error("{0}")]
    Invalid(String),
}

fn key_error(source_name: &str, reason: impl ToString) -> TokenError {
    TokenError::Key { source_name: redact_source(source_name), reason: reason.to_string() }
}

/// Where a key came from, fit for a log line: a path stays, inline data does not.
pub fn redact_source(source: &str) -> String {
    if source.starts_with("data:") {
        "data:(inline key)".to_owned()
    } else if source.starts_with("file:") || std::path::Path::new(source).exists() {
        source.to_owned()
    } else {
        "(inline base64 key)".to_owned()
    }
}

/// The bytes of a key given as Pulsar takes it: `data:[...];base64,DATA`, `file:///path`, a
/// path to a file, or else the key itself in base64.
pub fn read_key(source: &str) -> Result<Vec<u8>, TokenError> {
    let source = source.trim();
    if let Some(rest) = source.strip_prefix("data:") {
        let (meta, data) = rest.split_once(',').ok_or_else(|| key_error(source, "a data: URL needs a comma"))?;
        if !meta.ends_with(";base64") {
            return Ok(data.as_bytes().to_vec());
        }
        return base64::engine::general_purpose::STANDARD
            .decode(data.trim())
            .map_err(|error| key_error(source, format!("not base64: {error}")));
    }
    let path = match source.strip_prefix("file://") {
        Some(path) => Some(path.to_owned()),
        None if std::path::Path::new(source).is_file() => Some(source.to_owned()),
        None => None,
    };
    match path {
        Some(path) => {
            let metadata = std::fs::metadata(&path).map_err(|error| key_error(source, error))?;
            if metadata.len() > MAX_KEY_LEN {
                return Err(key_error(source, format!("{} bytes: larger than any key", metadata.len())));
            }
            std::fs::read(&path).map_err(|error| key_error(source, error))
        }
        None => base64::engine::general_purpose::STANDARD
            .decode(source)
            .map_err(|_| key_error(source, "neither a data: or file: URL, an existing file, nor base64")),
    }
}

/// Shortest HS256 secret key: 256 bits, as Pulsar (jjwt) requires when it makes or checks
/// tokens.
pub const MIN_SECRET_KEY_LEN: usize = 32;

fn check_secret_length(secret: &[u8], source: &str) -> Result<(), TokenError> {
    if secret.len() < MIN_SECRET_KEY_LEN {
        return Err(key_error(
            source,
            format!("{} bytes: a secret key needs at least {MIN_SECRET_KEY_LEN} (256 bits, as Pulsar)", secret.len()),
        ));
    }
    Ok(())
}

/// The kind of a key pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyPairKind {
    Rsa,
    Ec,
}

impl KeyPairKind {
    /// Pulsar's `--algorithm` / `tokenPublicAlg` name of the key family.
    pub fn from_algorithm(name: &str) -> Result<(Self, Algorithm), TokenError> {
        let algorithm: Algorithm =
            name.parse().map_err(|_| TokenError::Invalid(format!("unknown signature algorithm {name}")))?;
        let kind = match algorithm {
            Algorithm::RS256 | Algorithm::RS384 | Algorithm::RS512 => KeyPairKind::Rsa,
            Algorithm::PS256 | Algorithm::PS384 | Algorithm::PS512 => KeyPairKind::Rsa,
            Algorithm::ES256 | Algorithm::ES384 => KeyPairKind::Ec,
            other => return Err(TokenError::Invalid(format!("{other:?} is not a key-pair algorithm"))),
        };
        Ok((kind, algorithm))
    }

    fn algorithms(self) -> Vec<Algorithm> {
        match self {
            KeyPairKind::Rsa => vec![
                Algorithm::RS256,
                Algorithm::RS384,
                Algorithm::RS512,
                Algorithm::PS256,
                Algorithm::PS384,
                Algorithm::PS512,
            ],
            KeyPairKind::Ec => vec![Algorithm::ES256, Algorithm::ES384],
        }
    }
}

fn pem(label: &str, der: &[u8]) -> String {
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in body.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// DER of a PEM block (the first), or the bytes as they are if they are not PEM.
fn der_of(bytes: &[u8], source: &str) -> Result<Vec<u8>, TokenError> {
    let text = match std::str::from_utf8(bytes) {
        Ok(text) if text.trim_start().starts_with("-----BEGIN") => text,
        _ => return Ok(bytes.to_vec()),
    };
    let body: String = text
        .lines()
        .map(str::trim)
        .skip_while(|line| !line.starts_with("-----BEGIN"))
        .skip(1)
        .take_while(|line| !line.starts_with("-----END"))
        .collect();
    base64::engine::general_purpose::STANDARD.decode(body).map_err(|error| key_error(source, format!("PEM: {error}")))
}

/// A public key (X.509 SubjectPublicKeyInfo, DER or PEM), RSA or EC P-256.
fn public_key(bytes: &[u8], source: &str) -> Result<(KeyPairKind, DecodingKey), TokenError> {
    use p256::pkcs8::DecodePublicKey;
    let der = der_of(bytes, source)?;
    let spki = pem("PUBLIC KEY", &der);
    if rsa::RsaPublicKey::from_public_key_der(&der).is_ok() {
        let key = DecodingKey::from_rsa_pem(spki.as_bytes()).map_err(|error| key_error(source, error))?;
        return Ok((KeyPairKind::Rsa, key));
    }
    if p256::PublicKey::from_public_key_der(&der).is_ok() {
        let key = DecodingKey::from_ec_pem(spki.as_bytes()).map_err(|error| key_error(source, error))?;
        return Ok((KeyPairKind::Ec, key));
    }
    Err(key_error(source, "not an RSA or EC P-256 public key (X.509 SubjectPublicKeyInfo, DER or PEM)"))
}

/// A private key (PKCS#8, DER or PEM), RSA or EC P-256.
fn private_key(bytes: &[u8], source: &str) -> Result<(KeyPairKind, EncodingKey), TokenError> {
    use p256::pkcs8::DecodePrivateKey;
    let der = der_of(bytes, source)?;
    let pkcs8 = pem("PRIVATE KEY", &der);
    if rsa::RsaPrivateKey::from_pkcs8_der(&der).is_ok() {
        let key = EncodingKey::from_rsa_pem(pkcs8.as_bytes()).map_err(|error| key_error(source, error))?;
        return Ok((KeyPairKind::Rsa, key));
    }
    if p256::SecretKey::from_pkcs8_der(&der).is_ok() {
        let key = EncodingKey::from_ec_pem(pkcs8.as_bytes()).map_err(|error| key_error(source, error))?;
        return Ok((KeyPairKind::Ec, key));
    }
    Err(key_error(source, "not an RSA or EC P-256 private key (PKCS#8, DER or PEM)"))
}

/// Checks tokens against one key, as Pulsar's token provider does.
#[derive(Clone)]
pub struct TokenValidator {
    key: DecodingKey,
    validation: Validation,
    /// The claim holding the role (`tokenAuthClaim`, default `sub`).
    role_claim: String,
    /// The claim and the audience it must hold (`tokenAudienceClaim`, `tokenAudience`).
    audience: Option<(String, String)>,
}

impl std::fmt::Debug for TokenValidator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenValidator").field("role_claim", &self.role_claim).finish_non_exhaustive()
    }
}

/// What a valid token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidToken {
    pub role: String,
    /// `exp`, if the token has one.
    pub expires: Option<SystemTime>,
}

impl TokenValidator {
    /// A validator for tokens signed with the secret key at `secret_source`
    /// (`tokenSecretKey`).
    pub fn with_secret_key(secret_source: &str) -> Result<Self, TokenError> {
        let secret = read_key(secret_source)?;
        check_secret_length(&secret, secret_source)?;
        // As Pulsar (jjwt): HS384 and HS512 only with a key at least as long as their hash.
        let algorithms = [(Algorithm::HS256, 32), (Algorithm::HS384, 48), (Algorithm::HS512, 64)]
            .into_iter()
            .filter(|(_, bytes)| secret.len() >= *bytes)
            .map(|(algorithm, _)| algorithm)
            .collect();
        Ok(Self::new(DecodingKey::from_secret(&secret), algorithms))
    }

    /// A validator for tokens signed with the private key of `public_source`
    /// (`tokenPublicKey`).
    pub fn with_public_key(public_source: &str) -> Result<Self, TokenError> {
        let bytes = read_key(public_source)?;
        let (kind, key) = public_key(&bytes, public_source)?;
        Ok(Self::new(key, kind.algorithms()))
    }

    fn new(key: DecodingKey, algorithms: Vec<Algorithm>) -> Self {
        let mut validation = Validation::new(algorithms[0]);
        validation.algorithms = algorithms;
        validation.required_spec_claims = HashSet::new();
        validation.leeway = 0;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        // The audience is checked here, in the claim Pulsar's `tokenAudienceClaim` names.
        validation.validate_aud = false;
        TokenValidator { key, validation, role_claim: "sub".to_owned(), audience: None }
    }

    /// Allows this much clock difference on `exp` and `nbf` (`tokenAllowedClockSkewSeconds`).
    pub fn clock_skew(mut self, seconds: u64) -> Self {
        self.validation.leeway = seconds;
        self
    }

    /// Accepts only `algorithm` (`tokenPublicAlg`); it must fit the key.
    pub fn algorithm(mut self, name: &str) -> Result<Self, TokenError> {
        let algorithm: Algorithm =
            name.parse().map_err(|_| TokenError::Invalid(format!("unknown signature algorithm {name}")))?;
        if !self.validation.algorithms.contains(&algorithm) {
            return Err(TokenError::Invalid(format!("signature algorithm {name} does not fit the key")));
        }
        self.validation.algorithms = vec![algorithm];
        Ok(self)
    }

    /// Takes the role from `claim` instead of `sub` (`tokenAuthClaim`).
    pub fn role_claim(mut self, claim: &str) -> Self {
        claim.clone_into(&mut self.role_claim);
        self
    }

    /// Requires `audience` in the token's claim `claim` (`tokenAudienceClaim`, `tokenAudience`):
    /// the claim is that string or an array holding it.
    pub fn audience(mut self, claim: &str, audience: &str) -> Self {
        self.audience = Some((claim.to_owned(), audience.to_owned()));
        self
    }

    /// The token's role and expiry, or why it is refused (never the token itself).
    pub fn validate(&self, token: &str) -> Result<ValidToken, TokenError> {
        let token = token.trim();
        if token.is_empty() {
            return Err(TokenError::Invalid("empty token".to_owned()));
        }
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Invalid(format!("token of {} bytes is too long", token.len())));
        }
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &self.key, &self.validation)
            .map_err(|error| TokenError::Invalid(format!("invalid token: {error}")))?;
        if let Some((claim, audience)) = &self.audience {
            let holds = match data.claims.get(claim) {
                Some(Value::String(value)) => value == audience,
                Some(Value::Array(values)) => values.iter().any(|value| value.as_str() == Some(audience)),
                _ => false,
            };
            if !holds {
                return Err(TokenError::Invalid(format!("token claim {claim} does not hold this broker's audience")));
            }
        }
        let role = match data.claims.get(&self.role_claim) {
            Some(Value::String(role)) if !role.is_empty() => role.clone(),
            Some(_) => return Err(TokenError::Invalid(format!("token claim {} is not a role name", self.role_claim))),
            None => return Err(TokenError::Invalid(format!("token has no {} claim", self.role_claim))),
        };
        let expires = match data.claims.get("exp") {
            Some(exp) => {
                let seconds = exp
                    .as_f64()
                    .filter(|s| s.is_finite() && *s >= 0.0)
                    .ok_or_else(|| TokenError::Invalid("token claim exp is not a time".to_owned()))?;
                Some(UNIX_EPOCH + Duration::from_secs(seconds as u64))
            }
            None => None,
        };
        Ok(ValidToken { role, expires })
    }
}

/// How a token is signed when made.
pub enum SigningKey {
    /// HS256 with a secret key.
    Secret(Vec<u8>),
    /// RS256/ES256... with a private key.
    Private(Algorithm, EncodingKey),
}

impl SigningKey {
    /// The secret key at `source` (HS256).
    pub fn secret(source: &str) -> Result<Self, TokenError> {
        let secret = read_key(source)?;
        check_secret_length(&secret, source)?;
        Ok(SigningKey::Secret(secret))
    }

    /// The private key at `source`, signing with `algorithm` (RS256 unless given, as Pulsar).
    pub fn private(source: &str, algorithm: Option<&str>) -> Result<Self, TokenError> {
        let bytes = read_key(source)?;
        let (kind, key) = private_key(&bytes, source)?;
        let algorithm = match algorithm {
            Some(name) => {
                let (wanted, algorithm) = KeyPairKind::from_algorithm(name)?;
                if wanted != kind {
                    return Err(key_error(source, format!("{name} does not fit a {kind:?} key")));
                }
                algorithm
            }
            None if kind == KeyPairKind::Rsa => Algorithm::RS256,
            None => Algorithm::ES256,
        };
        Ok(SigningKey::Private(algorithm, key))
    }
}

/// A token for `subject`, expiring after `expiry` if given, with extra claims (`--headers`
/// are not Pulsar's; Pulsar adds only `sub` and `exp`).
pub fn create_token(key: &SigningKey, subject: &str, expiry: Option<Duration>) -> Result<String, TokenError> {
    let mut claims = Map::new();
    claims.insert("sub".to_owned(), Value::String(subject.to_owned()));
    if let Some(expiry) = expiry {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        claims.insert("exp".to_owned(), Value::from((now + expiry).as_secs()));
    }
    let (header, encoding) = match key {
        SigningKey::Secret(secret) => (Header::new(Algorithm::HS256), EncodingKey::from_secret(secret)),
        SigningKey::Private(algorithm, key) => (Header::new(*algorithm), key.clone()),
    };
    jsonwebtoken::encode(&header, &claims, &encoding).map_err(|error| TokenError::Invalid(error.to_string()))
}

/// A new HS256 secret key: 32 random bytes, as Pulsar's `create-secret-key` makes.
pub fn create_secret_key() -> Vec<u8> {
    let mut key = vec![0u8; 32];
    rand::fill(&mut key[..]);
    key
}

/// A new key pair as (private PKCS#8 DER, public X.509 SPKI DER), as Pulsar's
/// `create-key-pair` writes them.
pub fn create_key_pair(kind: KeyPairKind) -> Result<(Vec<u8>, Vec<u8>), TokenError> {
    use p256::pkcs8::{EncodePrivateKey, EncodePublicKey};
    let failed = |error: &dyn std::fmt::Display| TokenError::Invalid(format!("cannot make a key pair: {error}"));
    let mut rng = rsa::rand_core::OsRng;
    match kind {
        KeyPairKind::Rsa => {
            let private = rsa::RsaPrivateKey::new(&mut rng, 2048).map_err(|e| failed(&e))?;
            let public = private.to_public_key();
            let private_der = private.to_pkcs8_der().map_err(|e| failed(&e))?.as_bytes().to_vec();
            let public_der = public.to_public_key_der().map_err(|e| failed(&e))?.as_bytes().to_vec();
            Ok((private_der, public_der))
        }
        KeyPairKind::Ec => {
            let private = p256::SecretKey::random(&mut rng);
            let public = private.public_key();
            let private_der = private.to_pkcs8_der().map_err(|e| failed(&e))?.as_bytes().to_vec();
            let public_der = public.to_public_key_der().map_err(|e| failed(&e))?.as_bytes().to_vec();
            Ok((private_der, public_der))
        }
    }
}

/// The header and claims of a token, unchecked (`tokens show`).
pub fn show(token: &str) -> Result<(Value, Value), TokenError> {
    let token = token.trim();
    if token.len() > MAX_TOKEN_LEN {
        return Err(TokenError::Invalid("token too long".to_owned()));
    }
    let mut parts = token.split('.');
    let mut part = |what: &str| -> Result<Value, TokenError> {
        let text = parts.next().ok_or_else(|| TokenError::Invalid(format!("token has no {what}")))?;
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(text.trim_end_matches('='))
            .map_err(|_| TokenError::Invalid(format!("token {what} is not base64url")))?;
        serde_json::from_slice(&bytes).map_err(|_| TokenError::Invalid(format!("token {what} is not JSON")))
    };
    Ok((part("header")?, part("claims")?))
}

/// A duration as Pulsar's tools write one: `30s`, `10m`, `2h`, `1d`, `1w`, `1y`, or seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 =
        number.parse().map_err(|_| format!("{text:?}: expected a number and a unit (s, m, h, d, w, y)"))?;
    let seconds = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        "y" => 365 * 86_400,
        other => return Err(format!("{text:?}: unknown unit {other:?} (s, m, h, d, w, y)")),
    };
    number.checked_mul(seconds).map(Duration::from_secs).ok_or_else(|| format!("{text:?}: too long"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn data_url(bytes: &[u8]) -> String {
        format!("data:;base64,{}", base64::engine::general_purpose::STANDARD.encode(bytes))
    }

    #[test]
    fn secret_key_tokens_round_trip_and_bad_ones_are_refused() {
        let secret = create_secret_key();
        let key = SigningKey::secret(&data_url(&secret)).expect("key");
        let validator = TokenValidator::with_secret_key(&data_url(&secret)).expect("validator");
        let token = create_token(&key, "alice", None).expect("token");
        assert_eq!(validator.validate(&token).expect("valid"), ValidToken { role: "alice".into(), expires: None });
        let (header, claims) = show(&token).expect("shows");
        assert_eq!(header["alg"], "HS256");
        assert_eq!(claims["sub"], "alice");

        let other = TokenValidator::with_secret_key(&data_url(&create_secret_key())).expect("validator");
        assert!(other.validate(&token).is_err(), "another key's token");
        let mut tampered = token.clone();
        tampered.insert(token.find('.').expect("dot") + 2, 'x');
        assert!(validator.validate(&tampered).is_err(), "tampered");
        assert!(validator.validate("").is_err());
        assert!(validator.validate("a.b.c").is_err());
        assert!(validator.validate(&"x".repeat(MAX_TOKEN_LEN + 1)).is_err());

        let expired = {
            let mut claims = Map::new();
            claims.insert("sub".into(), "bob".into());
            claims.insert("exp".into(), Value::from(1_000u64));
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(&secret))
                .expect("encode")
        };
        let error = validator.validate(&expired).expect_err("expired").to_string();
        assert!(error.contains("Expired"), "{error}");
    }

    #[test]
    fn key_pair_tokens_round_trip_in_der_and_pem() {
        for (kind, algorithm) in [(KeyPairKind::Rsa, "RS256"), (KeyPairKind::Ec, "ES256")] {
            let (private, public) = create_key_pair(kind).expect("pair");
            let key = SigningKey::private(&data_url(&private), Some(algorithm)).expect("private");
            let token = create_token(&key, "svc", Some(Duration::from_secs(3600))).expect("token");
            let valid = TokenValidator::with_public_key(&data_url(&public)).expect("der").validate(&token).expect("ok");
            assert_eq!(valid.role, "svc");
            assert!(valid.expires.expect("exp") > SystemTime::now());
            let pem_public = pem("PUBLIC KEY", &public);
            let from_pem = TokenValidator::with_public_key(&data_url(pem_public.as_bytes())).expect("pem");
            assert_eq!(from_pem.validate(&token).expect("ok").role, "svc");
            let (_, other_public) = create_key_pair(kind).expect("pair");
            assert!(TokenValidator::with_public_key(&data_url(&other_public)).expect("v").validate(&token).is_err());
        }
        let (rsa_private, _) = create_key_pair(KeyPairKind::Rsa).expect("pair");
        assert!(SigningKey::private(&data_url(&rsa_private), Some("ES256")).is_err(), "algorithm of another family");
    }

    #[test]
    fn keys_come_from_files_data_urls_and_base64_and_errors_hide_inline_keys() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("secret.key");
        std::fs::write(&path, b"0123456789abcdef0123456789abcdef").expect("write");
        let from_url = read_key(&format!("file://{}", path.display())).expect("file url");
        let from_path = read_key(path.to_str().expect("utf8")).expect("path");
        assert_eq!(from_url, from_path);
        assert_eq!(read_key("MDEy").expect("base64"), b"012");
        let error = read_key("data:;base64,!!!secret!!!").expect_err("bad").to_string();
        assert!(!error.contains("secret!!!"), "{error}");
        let error = TokenValidator::with_public_key("c2VjcmV0").expect_err("not a key").to_string();
        assert!(!error.contains("c2VjcmV0"), "{error}");
    }

    #[test]
    fn a_custom_role_claim_and_audience() {
        let secret = create_secret_key();
        let mut claims = Map::new();
        claims.insert("sub".into(), "ignored".into());
        claims.insert("role".into(), "ops".into());
        claims.insert("aud".into(), "magnetar".into());
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(&secret))
            .expect("encode");
        let validator = TokenValidator::with_secret_key(&data_url(&secret)).expect("v").role_claim("role");
        assert_eq!(validator.clone().audience("aud", "magnetar").validate(&token).expect("ok").role, "ops");
        assert!(validator.clone().audience("aud", "other").validate(&token).is_err());
        assert!(validator.audience("aud2", "magnetar").validate(&token).is_err(), "the named claim is checked");
    }

    #[test]
    fn short_keys_early_tokens_and_strong_algorithms_with_short_keys_are_refused() {
        let short = data_url(&[7u8; 16]);
        assert!(SigningKey::secret(&short).is_err());
        assert!(TokenValidator::with_secret_key(&short).is_err());
        let secret = create_secret_key();
        let validator = TokenValidator::with_secret_key(&data_url(&secret)).expect("v");
        let sign = |algorithm: Algorithm, claims: &Map<String, Value>| {
            jsonwebtoken::encode(&Header::new(algorithm), claims, &EncodingKey::from_secret(&secret)).expect("encode")
        };
        let mut claims = Map::new();
        claims.insert("sub".into(), "early".into());
        let later = SystemTime::now().duration_since(UNIX_EPOCH).expect("now").as_secs() + 3600;
        claims.insert("nbf".into(), Value::from(later));
        assert!(validator.validate(&sign(Algorithm::HS256, &claims)).is_err(), "not before an hour from now");
        claims.remove("nbf");
        assert!(validator.validate(&sign(Algorithm::HS256, &claims)).is_ok());
        assert!(validator.validate(&sign(Algorithm::HS512, &claims)).is_err(), "HS512 needs a 64-byte key");
        let long = TokenValidator::with_secret_key(&data_url(&[9u8; 64])).expect("v");
        let token =
            jsonwebtoken::encode(&Header::new(Algorithm::HS512), &claims, &EncodingKey::from_secret(&[9u8; 64]))
                .expect("encode");
        assert!(long.validate(&token).is_ok());
        assert!(long.clone().algorithm("HS256").expect("fits").validate(&token).is_err(), "tokenPublicAlg narrows");
        assert!(long.algorithm("RS256").is_err(), "an algorithm of another family");
    }

    #[test]
    fn durations_as_pulsar_writes_them() {
        assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert!(parse_duration("1x").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("99999999999999999999y").is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        /// Random bytes and near-tokens are refused, never a panic.
        #[test]
        fn random_input_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600),
                                     dots in proptest::collection::vec("[A-Za-z0-9_-]{0,80}", 0..5)) {
            let validator = TokenValidator::with_secret_key("data:;base64,c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0").expect("v");
            let text = String::from_utf8_lossy(&bytes);
            prop_assert!(validator.validate(&text).is_err());
            let _ = show(&text);
            let joined = dots.join(".");
            prop_assert!(validator.validate(&joined).is_err());
            let _ = show(&joined);
            let _ = public_key(&bytes, "fuzz");
            let _ = private_key(&bytes, "fuzz");
        }
    }
}
