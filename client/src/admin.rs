//! A client of the admin REST API (Pulsar's `/admin/v2`), as `magnetar-admin` uses it: the
//! web service URL, authentication and TLS come from a [`ClientConf`] (Pulsar's client.conf
//! and its flags). Every call answers the JSON body, or [`ClientError::Admin`] with the
//! status and the server's own reason.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::{header, Method, Request};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use crate::auth::Authentication;
use crate::client_conf::ClientConf;
use crate::error::ClientError;
use crate::tls::{client_tls_config, TlsOptions};

/// How long one admin call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest answer read (peeked messages included).
const MAX_ANSWER_BYTES: usize = 64 * 1024 * 1024;

/// One answer: status, headers and body bytes.
#[derive(Debug, Clone)]
pub struct AdminAnswer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl AdminAnswer {
    /// The header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(key, _)| key.eq_ignore_ascii_case(name)).map(|(_, value)| value.as_str())
    }

    /// The body as JSON (`null` for an empty body).
    pub fn json(&self) -> Result<Value, ClientError> {
        if self.body.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&self.body)
            .map_err(|error| ClientError::Admin { status: self.status, reason: format!("answer is not JSON: {error}") })
    }
}

/// The admin API of one cluster.
pub struct AdminClient {
    base: String,
    auth: Option<Arc<dyn Authentication>>,
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl AdminClient {
    /// A client of `conf`'s `webServiceUrl` (`http://` or `https://`), with its
    /// authentication and TLS settings.
    pub async fn new(conf: &ClientConf) -> Result<AdminClient, ClientError> {
        let base = conf
            .web_service_url
            .clone()
            .ok_or_else(|| ClientError::InvalidUrl { url: String::new(), reason: "no admin URL (webServiceUrl)" })?;
        if !base.starts_with("http://") && !base.starts_with("https://") {
            return Err(ClientError::InvalidUrl { url: base, reason: "an admin URL starts with http:// or https://" });
        }
        let auth = conf.authentication()?;
        let tls = client_tls_config(TlsOptions {
            trust_certs_file_path: conf.tls_trust_certs_file_path.as_deref(),
            allow_insecure_connection: conf.tls_allow_insecure_connection.unwrap_or(false),
            hostname_verification: conf.tls_hostname_verification.unwrap_or(true),
            client_certificate: auth.as_ref().and_then(|auth| auth.tls_client_certificate().cloned()).or_else(
                || match (&conf.tls_certificate_file_path, &conf.tls_key_file_path) {
                    (Some(certificate), Some(key)) => Some(crate::auth::ClientCertificateFiles {
                        certificate: certificate.clone(),
                        private_key: key.clone(),
                    }),
                    _ => None,
                },
            ),
        })
        .await?;
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config((*tls).clone())
            .https_or_http()
            .enable_http1()
            .build();
        let client = Client::builder(TokioExecutor::new()).build(connector);
        Ok(AdminClient { base: base.trim_end_matches('/').to_owned(), auth, client })
    }

    /// The `Authorization` header for the configured authentication, if it has one (`tls`
    /// authenticates with the certificate instead).
    async fn authorization(&self) -> Result<Option<String>, ClientError> {
        let Some(auth) = &self.auth else { return Ok(None) };
        let data = auth.auth_data().await?;
        Ok(match auth.method_name() {
            "token" => Some(format!("Bearer {}", String::from_utf8_lossy(data.as_bytes()))),
            "basic" => Some(format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(data.as_bytes()))),
            _ => None,
        })
    }

    /// One call; any status is an answer (see [`Self::call`] for errors as errors).
    pub async fn request(&self, method: Method, path: &str, body: Option<Vec<u8>>) -> Result<AdminAnswer, ClientError> {
        let mut request = Request::builder().method(method).uri(format!("{}{path}", self.base));
        if let Some(value) = self.authorization().await? {
            request = request.header(header::AUTHORIZATION, value);
        }
        if body.is_some() {
            request = request.header(header::CONTENT_TYPE, "application/json");
        }
        let request = request
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|error| ClientError::Admin { status: 0, reason: format!("bad request {path}: {error}") })?;
        let unreachable = |reason: String| ClientError::Admin { status: 0, reason };
        let response = tokio::time::timeout(CALL_TIMEOUT, self.client.request(request))
            .await
            .map_err(|_| unreachable(format!("{} did not answer in {CALL_TIMEOUT:?}", self.base)))?
            .map_err(|error| unreachable(format!("{}: {}", self.base, crate::error::error_chain(&error))))?;
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .map(|(name, value)| (name.to_string(), String::from_utf8_lossy(value.as_bytes()).into_owned()))
            .collect();
        let body = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|error| unreachable(format!("reading the answer: {error}")))?
            .to_bytes();
        Ok(AdminAnswer { status, headers, body })
    }

    /// One call, following redirects to a topic's owner (as pulsar-admin does); a status
    /// other than 2xx is [`ClientError::Admin`] with the server's reason.
    pub async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Result<AdminAnswer, ClientError> {
        let body = body.map(|value| value.to_string().into_bytes());
        let mut answer = self.request(method.clone(), path, body.clone()).await?;
        for _ in 0..3 {
            if !matches!(answer.status, 307 | 308) {
                break;
            }
            let Some(location) = answer.header("location").map(str::to_owned) else { break };
            let path = location.find("/admin/").map_or(location.as_str(), |at| &location[at..]).to_owned();
            let other = AdminClient { base: origin(&location), auth: self.auth.clone(), client: self.client.clone() };
            answer = other.request(method.clone(), &path, body.clone()).await?;
        }
        if !(200..300).contains(&answer.status) {
            let reason = serde_json::from_slice::<Value>(&answer.body)
                .ok()
                .and_then(|value| value.get("reason").and_then(Value::as_str).map(str::to_owned))
                .unwrap_or_else(|| String::from_utf8_lossy(&answer.body).into_owned());
            return Err(ClientError::Admin { status: answer.status, reason });
        }
        Ok(answer)
    }

    pub async fn get(&self, path: &str) -> Result<Value, ClientError> {
        self.call(Method::GET, path, None).await?.json()
    }
}

/// `scheme://host:port` of a URL.
fn origin(url: &str) -> String {
    let after_scheme = url.find("://").map_or(0, |at| at + 3);
    let end = url[after_scheme..].find('/').map_or(url.len(), |at| after_scheme + at);
    url[..end].to_owned()
}
