//! Who may call a bookie, and how bookie clients (brokers, auto-recovery) prove who they are.
//!
//! **Bookie side** ([`ServerSecurity`]): with `[auth] enabled`, every gRPC call must carry a
//! JSON Web Token in its `authorization: Bearer <jwt>` metadata, checked with the same code and
//! keys a broker uses for its clients ([`magnetar_auth::token`]); `allowed_roles` limits which
//! roles may call (empty: any valid token). A missing or bad token is answered
//! `UNAUTHENTICATED`, a role not allowed `PERMISSION_DENIED`, before the call reaches storage.
//! Add streams are checked when they open. With `tls_certificate_path` and `tls_key_path`
//! the listener speaks TLS, and the bookie registers itself as TLS so clients dial it so.
//!
//! **Client side** ([`ClientSecurity`]): the token to send (Pulsar's token parameters, a file
//! read again at each new connection) and the CA that signed the bookies' certificates.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use magnetar_auth::credential::TokenParam;
use magnetar_auth::token::TokenValidator;
use tonic::metadata::MetadataValue;
use tonic::service::Interceptor;
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};
use tonic::{Request, Status};
use tracing::warn;

use crate::config::{BookieAuthConfig, BookieClientConfig, BookieConfig};
use crate::error::BookieError;

/// Largest certificate or key file read.
const MAX_PEM_LEN: u64 = 1024 * 1024;

fn security_error(what: impl Into<String>, reason: impl ToString) -> BookieError {
    BookieError::Security { what: what.into(), reason: reason.to_string() }
}

/// Reads a PEM file, bounded; the error names the setting and the file.
fn read_pem(setting: &str, path: &Path) -> Result<Vec<u8>, BookieError> {
    let what = || format!("{setting} {}", path.display());
    let length = std::fs::metadata(path).map_err(|error| security_error(what(), error))?.len();
    if length > MAX_PEM_LEN {
        return Err(security_error(what(), format!("{length} bytes: larger than any certificate or key")));
    }
    std::fs::read(path).map_err(|error| security_error(what(), error))
}

/// What a bookie checks on every call, and its TLS identity.
#[derive(Clone, Default)]
pub struct ServerSecurity {
    gate: TokenGate,
    tls: Option<ServerTlsConfig>,
}

impl ServerSecurity {
    /// Reads the keys and certificates `config` names; errors name the setting and file.
    pub fn from_config(config: &BookieConfig) -> Result<Self, BookieError> {
        let gate = TokenGate::from_config(&config.auth)?;
        let tls = match (&config.tls_certificate_path, &config.tls_key_path) {
            (None, None) => None,
            (Some(certificate), Some(key)) => {
                let identity =
                    Identity::from_pem(read_pem("tls_certificate_path", certificate)?, read_pem("tls_key_path", key)?);
                Some(ServerTlsConfig::new().identity(identity))
            }
            _ => return Err(security_error("tls_certificate_path and tls_key_path", "must be given together")),
        };
        Ok(ServerSecurity { gate, tls })
    }

    pub fn gate(&self) -> TokenGate {
        self.gate.clone()
    }

    pub fn tls(&self) -> Option<&ServerTlsConfig> {
        self.tls.as_ref()
    }
}

/// The check run before every call: a valid token of an allowed role, when auth is on.
#[derive(Clone, Default)]
pub struct TokenGate {
    /// `None`: auth is off and every call passes.
    validator: Option<Arc<TokenValidator>>,
    allowed_roles: Arc<[String]>,
}

impl TokenGate {
    pub fn from_config(auth: &BookieAuthConfig) -> Result<Self, BookieError> {
        if !auth.enabled {
            return Ok(TokenGate::default());
        }
        let key_error = |setting: &str, error: magnetar_auth::token::TokenError| security_error(setting, error);
        let mut validator = match (&auth.token_secret_key, &auth.token_public_key) {
            (Some(secret), None) => {
                TokenValidator::with_secret_key(secret).map_err(|e| key_error("auth.token_secret_key", e))?
            }
            (None, Some(public)) => {
                TokenValidator::with_public_key(public).map_err(|e| key_error("auth.token_public_key", e))?
            }
            _ => {
                return Err(security_error(
                    "auth",
                    "enabled needs exactly one of token_secret_key and token_public_key",
                ))
            }
        };
        if let Some(claim) = auth.token_auth_claim.as_deref().filter(|claim| !claim.is_empty()) {
            validator = validator.role_claim(claim);
        }
        if let Some(algorithm) = auth.token_public_alg.as_deref().filter(|name| !name.is_empty()) {
            validator = validator.algorithm(algorithm).map_err(|e| key_error("auth.token_public_alg", e))?;
        }
        validator = validator.clock_skew(auth.token_allowed_clock_skew_seconds);
        Ok(TokenGate { validator: Some(Arc::new(validator)), allowed_roles: auth.allowed_roles.clone().into() })
    }

    /// The caller's role, or the status refusing the call (`None` when auth is off).
    pub fn check<T>(&self, request: &Request<T>) -> Result<Option<String>, Status> {
        let Some(validator) = &self.validator else { return Ok(None) };
        let peer = request.remote_addr().map_or_else(|| "unknown peer".to_owned(), |addr| addr.to_string());
        let refuse = |reason: String| {
            warn!(%peer, %reason, "bookie refused a call");
            Status::unauthenticated(format!("bookie authentication failed: {reason}"))
        };
        let header = request
            .metadata()
            .get("authorization")
            .ok_or_else(|| refuse("no token (the authorization metadata is missing)".to_owned()))?;
        let token = header
            .to_str()
            .ok()
            .and_then(|value| value.strip_prefix("Bearer "))
            .ok_or_else(|| refuse("the authorization metadata is not \"Bearer <token>\"".to_owned()))?;
        let valid = validator.validate(token).map_err(|error| refuse(error.to_string()))?;
        if !self.allowed_roles.is_empty() && !self.allowed_roles.contains(&valid.role) {
            warn!(%peer, role = %valid.role, "bookie refused a role not in allowed_roles");
            return Err(Status::permission_denied(format!("role {} may not use this bookie", valid.role)));
        }
        Ok(Some(valid.role))
    }
}

impl Interceptor for TokenGate {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        self.check(&request)?;
        Ok(request)
    }
}

/// How a bookie client proves who it is and checks the bookies it dials.
#[derive(Clone, Default)]
pub struct ClientSecurity {
    /// The token sent on every call; read again (a file) at each new connection.
    token: Option<TokenParam>,
    /// The CA that signed the bookies' certificates; needed to dial a TLS bookie.
    trust_certs: Option<(PathBuf, Vec<u8>)>,
}

impl std::fmt::Debug for ClientSecurity {
    /// Where the token and CA come from; never the token.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientSecurity")
            .field("token", &self.token)
            .field("trust_certs", &self.trust_certs.as_ref().map(|(path, _)| path))
            .finish()
    }
}

impl ClientSecurity {
    /// From a `[client]` section (or a broker's `bookkeeper_*` settings).
    pub fn from_config(config: &BookieClientConfig) -> Result<Self, BookieError> {
        let token = match (&config.authentication_plugin, &config.authentication_parameters) {
            (None, None) => None,
            (plugin, Some(params)) => {
                let plugin = plugin.as_deref().unwrap_or(magnetar_auth::credential::TOKEN_PLUGIN);
                Some(
                    TokenParam::from_plugin(plugin, params)
                        .map_err(|error| security_error("authentication_parameters", error))?,
                )
            }
            (Some(_), None) => return Err(security_error("authentication_plugin", "needs authentication_parameters")),
        };
        let trust_certs = match &config.tls_trust_certs_file_path {
            Some(path) => Some((path.clone(), read_pem("tls_trust_certs_file_path", path)?)),
            None => None,
        };
        Ok(ClientSecurity { token, trust_certs })
    }

    pub fn with_token(mut self, token: TokenParam) -> Self {
        self.token = Some(token);
        self
    }

    /// Trusts the CA in `pem` (read from `path`, named in errors) for TLS bookies.
    pub fn with_trust_certs(mut self, path: PathBuf, pem: Vec<u8>) -> Self {
        self.trust_certs = Some((path, pem));
        self
    }

    /// The metadata value to send now, if any: `Bearer <token>`.
    pub fn authorization(&self, bookie_id: &str) -> Result<Option<MetadataValue<tonic::metadata::Ascii>>, BookieError> {
        let Some(token) = &self.token else { return Ok(None) };
        let what = || format!("token for bookie {bookie_id}");
        let token = token.read().map_err(|error| security_error(what(), error))?;
        let mut value: MetadataValue<_> = format!("Bearer {token}")
            .parse()
            .map_err(|_| security_error(what(), "the token holds characters not allowed in gRPC metadata"))?;
        value.set_sensitive(true);
        Ok(Some(value))
    }

    /// TLS settings to dial `host`, for a bookie registered as TLS.
    pub fn tls_for(&self, bookie_id: &str, host: &str) -> Result<ClientTlsConfig, BookieError> {
        let (_, pem) = self.trust_certs.as_ref().ok_or_else(|| {
            security_error(
                format!("bookie {bookie_id}"),
                "it serves TLS, but no CA to check it is set (the broker's bookkeeper_tls_trust_certs_file_path, \
                 or tls_trust_certs_file_path in a bookie's [client] section)",
            )
        })?;
        Ok(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)).domain_name(host))
    }
}

/// Adds the token to every call of one connection.
#[derive(Clone)]
pub struct AddToken(pub Option<MetadataValue<tonic::metadata::Ascii>>);

impl Interceptor for AddToken {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request.metadata_mut().insert("authorization", value.clone());
        }
        Ok(request)
    }
}
