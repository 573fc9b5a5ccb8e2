//! Who a client is, and what it may do.
//!
//! - [`tls`]: the TLS side of the listeners (certificates from PEM files, reloaded when they
//!   change; client certificates requested and optionally required);
//! - [`token`], [`basic`]: the credentials the providers check (JWTs, htpasswd files);
//! - [`Authenticator`]: the providers configured (`authenticationProviders`: token, TLS
//!   client certificate, basic) and `anonymousUserRole`, turning what a client presents on
//!   CONNECT or in an HTTP `Authorization` header into a role, as Pulsar does;
//! - [`authz`]: super-users, tenant admins, and the permissions granted on namespaces,
//!   topics and subscriptions.
//!
//! Nothing secret is logged: errors name what was refused and why, never the token, password
//! or key.

pub mod authz;
pub mod basic;
pub mod tls;

pub use magnetar_auth::token;

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

use base64::Engine;

use basic::Htpasswd;
use token::TokenValidator;

pub use authz::{Authorizer, TopicAction};
pub use tls::{TlsAcceptor, TlsSettings};

/// An authentication provider, by Pulsar's class name or a short name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Provider {
    Token,
    Tls,
    Basic,
}

impl Provider {
    /// `org.apache.pulsar.broker.authentication.AuthenticationProviderToken` or `token`, ...
    pub fn parse(name: &str) -> Result<Provider, String> {
        let short = name.trim().rsplit('.').next().unwrap_or_default();
        match short {
            "AuthenticationProviderToken" | "token" => Ok(Provider::Token),
            "AuthenticationProviderTls" | "tls" => Ok(Provider::Tls),
            "AuthenticationProviderBasic" | "basic" => Ok(Provider::Basic),
            _ => Err(format!(
                "authenticationProviders: {name} is not a provider Magnetar has \
                 (AuthenticationProviderToken, AuthenticationProviderTls, AuthenticationProviderBasic)"
            )),
        }
    }

    /// The method name clients send for this provider.
    pub fn method(self) -> &'static str {
        match self {
            Provider::Token => "token",
            Provider::Tls => "tls",
            Provider::Basic => "basic",
        }
    }
}

/// The token provider's keys and claims.
#[derive(Clone, Default, PartialEq)]
pub struct TokenSettings {
    /// `tokenSecretKey`: HS256 (a URL or base64, see [`token::read_key`]).
    pub secret_key: Option<String>,
    /// `tokenPublicKey`: RS256/ES256.
    pub public_key: Option<String>,
    /// `tokenAuthClaim` (default `sub`).
    pub auth_claim: Option<String>,
    /// `tokenAudience`: required in the token's audience claim.
    pub audience: Option<String>,
    /// `tokenAudienceClaim`: the claim holding the audience (default `aud`).
    pub audience_claim: Option<String>,
    /// `tokenAllowedClockSkewSeconds` (default 0).
    pub allowed_clock_skew_seconds: u64,
    /// `tokenPublicAlg`: the one algorithm accepted (default: any of the key's family).
    pub public_alg: Option<String>,
}

impl std::fmt::Debug for TokenSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSettings")
            .field("secret_key", &self.secret_key.as_ref().map(|_| "(set)"))
            .field("public_key", &self.public_key.as_ref().map(|_| "(set)"))
            .field("auth_claim", &self.auth_claim)
            .field("audience", &self.audience)
            .field("audience_claim", &self.audience_claim)
            .field("allowed_clock_skew_seconds", &self.allowed_clock_skew_seconds)
            .field("public_alg", &self.public_alg)
            .finish()
    }
}

/// Authentication and authorization as the broker is configured.
#[derive(Debug, Clone, PartialEq)]
pub struct SecurityConfig {
    /// `authenticationEnabled`.
    pub authentication_enabled: bool,
    /// `authenticationProviders`.
    pub providers: BTreeSet<Provider>,
    /// `anonymousUserRole`: the role of clients that present nothing.
    pub anonymous_user_role: Option<String>,
    pub token: TokenSettings,
    /// `basicAuthConf`: an htpasswd file's path or base64 contents.
    pub basic_auth_conf: Option<String>,
    /// `authorizationEnabled`.
    pub authorization_enabled: bool,
    /// `superUserRoles`.
    pub super_user_roles: BTreeSet<String>,
    /// `authenticationRefreshCheckSeconds`: how often connections' credentials are checked
    /// for expiry (AUTH_CHALLENGE when they expired).
    pub refresh_check: Duration,
}

impl Default for SecurityConfig {
    fn default() -> Self {
        SecurityConfig {
            authentication_enabled: false,
            providers: BTreeSet::new(),
            anonymous_user_role: None,
            token: TokenSettings::default(),
            basic_auth_conf: None,
            authorization_enabled: false,
            super_user_roles: BTreeSet::new(),
            refresh_check: Duration::from_secs(60),
        }
    }
}

/// A broker's authentication and authorization, as its configuration made them.
#[derive(Debug)]
pub struct Security {
    pub authenticator: Authenticator,
    pub authorizer: Authorizer,
    /// How often connections' credentials are checked for expiry.
    pub refresh_check: Duration,
}

impl Security {
    /// Loads the providers' keys and files; an error names the setting.
    pub fn new(config: &SecurityConfig) -> Result<Self, String> {
        if config.refresh_check.is_zero() {
            return Err("authenticationRefreshCheckSeconds must be positive".into());
        }
        Ok(Security {
            authenticator: Authenticator::new(config)?,
            authorizer: Authorizer::new(config.authorization_enabled, config.super_user_roles.clone()),
            refresh_check: config.refresh_check,
        })
    }
}

/// Who a client is once authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// None when authentication is off (everything is allowed).
    pub role: Option<String>,
    /// The method that gave the role (`token`, `tls`, `basic`, `anonymous`, `none`).
    pub method: &'static str,
    /// When the credentials stop being valid (a token's `exp`).
    pub expires: Option<SystemTime>,
}

impl Identity {
    /// A client of a broker without authentication.
    pub fn unauthenticated() -> Self {
        Identity { role: None, method: "none", expires: None }
    }

    pub fn is_expired(&self, now: SystemTime) -> bool {
        self.expires.is_some_and(|expires| expires <= now)
    }
}

/// Credentials refused; the message is safe to send back and to log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct AuthError(pub String);

/// What a client presents.
#[derive(Clone, Copy)]
pub struct Credentials<'a> {
    /// The method it names (`token`, `basic`, `tls`, ...), if any.
    pub method: Option<&'a str>,
    /// Its data (a token, `user:password`).
    pub data: &'a [u8],
    /// The common name of the TLS client certificate, if the connection has one.
    pub client_common_name: Option<&'a str>,
}

/// The configured providers.
pub struct Authenticator {
    enabled: bool,
    providers: BTreeSet<Provider>,
    anonymous_user_role: Option<String>,
    token: Option<TokenValidator>,
    basic: Option<Htpasswd>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator").field("enabled", &self.enabled).field("providers", &self.providers).finish()
    }
}

impl Authenticator {
    /// Loads the keys and files of the configured providers; an error names the setting.
    pub fn new(config: &SecurityConfig) -> Result<Self, String> {
        if config.authorization_enabled && !config.authentication_enabled {
            return Err("authorizationEnabled needs authenticationEnabled: without it no client has a role".into());
        }
        if config.authentication_enabled && config.providers.is_empty() && config.anonymous_user_role.is_none() {
            return Err("authenticationEnabled with no authenticationProviders and no anonymousUserRole: \
                        nobody could connect"
                .into());
        }
        let token = if config.providers.contains(&Provider::Token) {
            let settings = &config.token;
            let validator = match (&settings.secret_key, &settings.public_key) {
                (Some(secret), None) => {
                    TokenValidator::with_secret_key(secret).map_err(|e| format!("tokenSecretKey: {e}"))?
                }
                (None, Some(public)) => {
                    TokenValidator::with_public_key(public).map_err(|e| format!("tokenPublicKey: {e}"))?
                }
                (Some(_), Some(_)) => return Err("set one of tokenSecretKey and tokenPublicKey, not both".into()),
                (None, None) => {
                    return Err("AuthenticationProviderToken needs tokenSecretKey or tokenPublicKey".into());
                }
            };
            let validator = match &settings.auth_claim {
                Some(claim) if !claim.is_empty() => validator.role_claim(claim),
                _ => validator,
            };
            let validator = validator.clock_skew(settings.allowed_clock_skew_seconds);
            let validator = match settings.public_alg.as_deref().filter(|alg| !alg.is_empty()) {
                Some(alg) => validator.algorithm(alg).map_err(|e| format!("tokenPublicAlg: {e}"))?,
                None => validator,
            };
            Some(match &settings.audience {
                Some(audience) if !audience.is_empty() => {
                    let claim = settings.audience_claim.as_deref().filter(|c| !c.is_empty()).unwrap_or("aud");
                    validator.audience(claim, audience)
                }
                _ => validator,
            })
        } else {
            None
        };
        let basic = if config.providers.contains(&Provider::Basic) {
            let conf = config.basic_auth_conf.as_deref().ok_or("AuthenticationProviderBasic needs basicAuthConf")?;
            Some(Htpasswd::load(conf)?)
        } else {
            None
        };
        Ok(Authenticator {
            enabled: config.authentication_enabled,
            providers: config.providers.clone(),
            anonymous_user_role: config.anonymous_user_role.clone().filter(|role| !role.is_empty()),
            token,
            basic,
        })
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The identity of `credentials`, or why they are refused.
    pub fn authenticate(&self, credentials: Credentials<'_>) -> Result<Identity, AuthError> {
        if !self.enabled {
            return Ok(Identity::unauthenticated());
        }
        let method = credentials.method.filter(|m| !m.is_empty() && *m != "none");
        match method {
            None => match (&self.anonymous_user_role, credentials.client_common_name) {
                // A client certificate with the TLS provider identifies, even when the client
                // names no method (Pulsar's HTTP side takes it the same way).
                (_, Some(name)) if self.providers.contains(&Provider::Tls) => {
                    Ok(Identity { role: Some(name.to_owned()), method: "tls", expires: None })
                }
                (Some(role), _) => Ok(Identity { role: Some(role.clone()), method: "anonymous", expires: None }),
                (None, _) => Err(AuthError("Authentication required".into())),
            },
            Some("token") if self.token.is_some() => {
                let token = std::str::from_utf8(credentials.data)
                    .map_err(|_| AuthError("Failed to authenticate: the token is not text".into()))?;
                let token = token.strip_prefix("Bearer ").unwrap_or(token);
                let valid =
                    self.token.as_ref().map(|validator| validator.validate(token)).unwrap_or_else(|| {
                        Err(token::TokenError::Invalid("token authentication is not enabled".into()))
                    });
                let valid = valid.map_err(|error| AuthError(format!("Failed to authenticate: {error}")))?;
                Ok(Identity { role: Some(valid.role), method: "token", expires: valid.expires })
            }
            Some("basic") if self.basic.is_some() => {
                let text = std::str::from_utf8(credentials.data)
                    .map_err(|_| AuthError("Failed to authenticate: basic credentials are not text".into()))?;
                let (user, password) = text
                    .split_once(':')
                    .ok_or_else(|| AuthError("Failed to authenticate: expected user:password".into()))?;
                if self.basic.as_ref().is_some_and(|users| users.check(user, password)) {
                    Ok(Identity { role: Some(user.to_owned()), method: "basic", expires: None })
                } else {
                    Err(AuthError(format!("Failed to authenticate: wrong user or password for {user:?}")))
                }
            }
            Some("tls") if self.providers.contains(&Provider::Tls) => match credentials.client_common_name {
                Some(name) => Ok(Identity { role: Some(name.to_owned()), method: "tls", expires: None }),
                None => Err(AuthError("Failed to authenticate: no TLS client certificate".into())),
            },
            // A method no provider handles: the anonymous role if there is one, as Pulsar's
            // ServerCnx does.
            Some(other) => match &self.anonymous_user_role {
                Some(role) => Ok(Identity { role: Some(role.clone()), method: "anonymous", expires: None }),
                None => {
                    Err(AuthError(format!("Failed to authenticate: method {other:?} is not enabled on this broker")))
                }
            },
        }
    }

    /// The identity of an HTTP request: `Authorization: Bearer <token>` or `Basic <base64>`,
    /// else the TLS client certificate, else the anonymous role.
    pub fn authenticate_http(
        &self,
        authorization: Option<&str>,
        client_common_name: Option<&str>,
    ) -> Result<Identity, AuthError> {
        let Some(header) = authorization.map(str::trim).filter(|h| !h.is_empty()) else {
            return self.authenticate(Credentials { method: None, data: &[], client_common_name });
        };
        let (scheme, value) = header.split_once(' ').unwrap_or((header, ""));
        if scheme.eq_ignore_ascii_case("bearer") {
            return self.authenticate(Credentials {
                method: Some("token"),
                data: value.trim().as_bytes(),
                client_common_name,
            });
        }
        if scheme.eq_ignore_ascii_case("basic") {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(value.trim())
                .map_err(|_| AuthError("Failed to authenticate: Basic credentials are not base64".into()))?;
            return self.authenticate(Credentials { method: Some("basic"), data: &decoded, client_common_name });
        }
        Err(AuthError(format!("Failed to authenticate: unknown Authorization scheme {scheme:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret_config() -> (SecurityConfig, token::SigningKey) {
        let secret = token::create_secret_key();
        let url = format!("data:;base64,{}", base64::engine::general_purpose::STANDARD.encode(&secret));
        let config = SecurityConfig {
            authentication_enabled: true,
            providers: [Provider::Token, Provider::Tls, Provider::Basic].into(),
            token: TokenSettings { secret_key: Some(url.clone()), ..TokenSettings::default() },
            basic_auth_conf: Some(
                base64::engine::general_purpose::STANDARD.encode("alice:$apr1$lZL6V/ci$eIMz/iKDkbtys/uU7LEK00\n"),
            ),
            ..SecurityConfig::default()
        };
        (config, token::SigningKey::secret(&url).expect("key"))
    }

    #[test]
    fn each_provider_gives_its_role_and_refuses_bad_credentials() {
        let (config, key) = secret_config();
        let auth = Authenticator::new(&config).expect("auth");
        let token = token::create_token(&key, "svc", None).expect("token");
        let with = |method: Option<&'static str>, data: &[u8], cn: Option<&str>| {
            auth.authenticate(Credentials { method, data, client_common_name: cn })
        };
        assert_eq!(with(Some("token"), token.as_bytes(), None).expect("token").role.as_deref(), Some("svc"));
        assert!(with(Some("token"), b"not.a.token", None).is_err());
        assert_eq!(with(Some("basic"), b"alice:password", None).expect("basic").role.as_deref(), Some("alice"));
        assert!(with(Some("basic"), b"alice:nope", None).is_err());
        assert!(with(Some("basic"), b"alice", None).is_err());
        assert_eq!(with(Some("tls"), b"", Some("client-1")).expect("tls").role.as_deref(), Some("client-1"));
        assert!(with(Some("tls"), b"", None).is_err());
        assert!(with(Some("kerberos"), b"", None).is_err());
        assert!(with(None, b"", None).is_err(), "no anonymous role");
        assert!(with(Some("token"), &[0xff, 0xfe], None).is_err());

        let anonymous =
            Authenticator::new(&SecurityConfig { anonymous_user_role: Some("anon".into()), ..config }).expect("auth");
        let identity = anonymous.authenticate(Credentials { method: None, data: &[], client_common_name: None });
        assert_eq!(identity.expect("anonymous").role.as_deref(), Some("anon"));
        // A method no provider handles is anonymous too (Pulsar's ServerCnx); bad credentials
        // of a known method are still refused.
        let unknown =
            anonymous.authenticate(Credentials { method: Some("kerberos"), data: b"x", client_common_name: None });
        assert_eq!(unknown.expect("anonymous").role.as_deref(), Some("anon"));
        let bad =
            anonymous.authenticate(Credentials { method: Some("token"), data: b"x.y.z", client_common_name: None });
        assert!(bad.is_err());
    }

    #[test]
    fn http_headers_carry_bearer_tokens_and_basic_credentials() {
        let (config, key) = secret_config();
        let auth = Authenticator::new(&config).expect("auth");
        let token = token::create_token(&key, "svc", None).expect("token");
        assert_eq!(
            auth.authenticate_http(Some(&format!("Bearer {token}")), None).expect("ok").role.as_deref(),
            Some("svc")
        );
        let basic = base64::engine::general_purpose::STANDARD.encode("alice:password");
        assert_eq!(
            auth.authenticate_http(Some(&format!("Basic {basic}")), None).expect("ok").role.as_deref(),
            Some("alice")
        );
        assert!(auth.authenticate_http(Some("Basic !!!"), None).is_err());
        assert!(auth.authenticate_http(Some("Digest x"), None).is_err());
        assert!(auth.authenticate_http(None, None).is_err());
        assert_eq!(auth.authenticate_http(None, Some("cn")).expect("cert").role.as_deref(), Some("cn"));
    }

    #[test]
    fn configurations_that_cannot_work_are_refused() {
        let (config, _) = secret_config();
        assert!(Authenticator::new(&SecurityConfig {
            authentication_enabled: false,
            authorization_enabled: true,
            ..config.clone()
        })
        .is_err());
        let no_key = SecurityConfig { token: TokenSettings::default(), ..config.clone() };
        assert!(Authenticator::new(&no_key).expect_err("no key").contains("tokenSecretKey"));
        let no_basic = SecurityConfig { basic_auth_conf: None, ..config };
        assert!(Authenticator::new(&no_basic).expect_err("no file").contains("basicAuthConf"));
        assert!(Provider::parse("org.apache.pulsar.broker.authentication.AuthenticationProviderToken").is_ok());
        assert!(Provider::parse("com.example.Custom").is_err());
        let off = Authenticator::new(&SecurityConfig::default()).expect("off");
        assert_eq!(off.authenticate_http(None, None).expect("open"), Identity::unauthenticated());
    }
}
