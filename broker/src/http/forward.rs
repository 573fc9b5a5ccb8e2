//! Asking another broker's admin API, as Pulsar's brokers do for what a peer serves (the
//! partitions of a partitioned topic spread over brokers), and a bookie's HTTP server for
//! its state. The caller's credentials go along: the peer checks them as it would the
//! caller's own request.

use std::time::Duration;

use axum::http::{header, HeaderValue, Request, StatusCode};
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use super::ApiError;

/// How long a peer has to answer.
const PEER_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest answer taken from a peer.
const MAX_ANSWER_BYTES: usize = 16 * 1024 * 1024;

/// `GET {base}{path}` on a peer's HTTP port, as JSON. A peer that cannot be reached
/// or answers an error is a 503 naming it (its own reason included).
pub async fn get_json(base: &str, path: &str, authorization: Option<&HeaderValue>) -> Result<Value, ApiError> {
    let unavailable = |why: String| ApiError(StatusCode::SERVICE_UNAVAILABLE, format!("{base}: {why}"));
    if !base.starts_with("http://") {
        return Err(unavailable("only a peer's plain HTTP port is asked (it serves HTTPS only)".to_owned()));
    }
    let mut request = Request::get(format!("{base}{path}"));
    if let Some(value) = authorization {
        request = request.header(header::AUTHORIZATION, value);
    }
    let request = request.body(Empty::<Bytes>::new()).map_err(|error| unavailable(error.to_string()))?;
    let client = Client::builder(TokioExecutor::new()).build_http();
    let response = tokio::time::timeout(PEER_TIMEOUT, client.request(request))
        .await
        .map_err(|_| unavailable(format!("no answer in {PEER_TIMEOUT:?}")))?
        .map_err(|error| unavailable(error.to_string()))?;
    let status = response.status();
    let body = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
        .collect()
        .await
        .map_err(|error| unavailable(format!("reading its answer: {error}")))?
        .to_bytes();
    if !status.is_success() {
        return Err(unavailable(format!("answered {status}: {}", String::from_utf8_lossy(&body))));
    }
    serde_json::from_slice(&body).map_err(|error| unavailable(format!("answered JSON that does not parse: {error}")))
}
