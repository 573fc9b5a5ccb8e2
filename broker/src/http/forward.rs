//! Asking another broker's admin API, as Pulsar's brokers do for what a peer serves (the
//! partitions of a partitioned topic spread over brokers), and a bookie's HTTP server for
//! its state; and, for the web console, the request a route redirected to a topic's owner
//! ([`follow_for_console`]). The caller's credentials go along: the peer checks them as it
//! would the caller's own request.

use std::time::Duration;

use axum::http::{header, HeaderMap, HeaderValue, Method, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use http_body_util::{BodyExt, Full, Limited};
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
    let mut headers = HeaderMap::new();
    if let Some(value) = authorization {
        headers.insert(header::AUTHORIZATION, value.clone());
    }
    let (status, _, body) = send(Method::GET, &format!("{base}{path}"), &headers, Bytes::new()).await?;
    if !status.is_success() {
        return Err(unavailable(format!("answered {status}: {}", String::from_utf8_lossy(&body))));
    }
    serde_json::from_slice(&body).map_err(|error| unavailable(format!("answered JSON that does not parse: {error}")))
}

/// `method url` with `body` and the caller's `Authorization`, `Content-Type` and `Accept`
/// headers, on a peer's plain HTTP port: its status, headers and body. A peer that cannot
/// be reached (or answers nothing in time) is a 503 naming it.
pub async fn send(
    method: Method,
    url: &str,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, HeaderMap, Bytes), ApiError> {
    let unavailable = |why: String| ApiError(StatusCode::SERVICE_UNAVAILABLE, format!("{url}: {why}"));
    if !url.starts_with("http://") {
        return Err(unavailable("only a peer's plain HTTP port is asked (it serves HTTPS only)".to_owned()));
    }
    let mut request = Request::builder().method(method).uri(url);
    for name in [header::AUTHORIZATION, header::CONTENT_TYPE, header::ACCEPT] {
        if let Some(value) = headers.get(&name) {
            request = request.header(name, value);
        }
    }
    let request = request.body(Full::new(body)).map_err(|error| unavailable(error.to_string()))?;
    let client = Client::builder(TokioExecutor::new()).build_http();
    let response = tokio::time::timeout(PEER_TIMEOUT, client.request(request))
        .await
        .map_err(|_| unavailable(format!("no answer in {PEER_TIMEOUT:?}")))?
        .map_err(|error| unavailable(error.to_string()))?;
    let (parts, body) = response.into_parts();
    let body = Limited::new(body, MAX_ANSWER_BYTES)
        .collect()
        .await
        .map_err(|error| unavailable(format!("reading its answer: {error}")))?
        .to_bytes();
    Ok((parts.status, parts.headers, body))
}

/// The header the web console sends: the broker it asks follows a redirect to a topic's
/// owner itself and answers with the owner's answer.
pub const CONSOLE_HEADER: &str = "x-magnetar-console";
/// Largest request body taken for a console request (admin bodies are small JSON).
const MAX_CONSOLE_BODY: usize = 1024 * 1024;

/// Middleware: for a console request that a route answers with a 307 to another broker (the
/// topic's owner), the same request to that broker, its answer returned as this one's.
/// Other requests pass through untouched.
pub async fn follow_for_console(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    if !request.headers().contains_key(CONSOLE_HEADER) {
        return next.run(request).await;
    }
    let (parts, body) = request.into_parts();
    let body = match axum::body::to_bytes(body, MAX_CONSOLE_BODY).await {
        Ok(body) => body,
        Err(error) => return ApiError(StatusCode::PAYLOAD_TOO_LARGE, format!("request body: {error}")).into_response(),
    };
    let (method, headers) = (parts.method.clone(), parts.headers.clone());
    let response = next.run(axum::extract::Request::from_parts(parts, axum::body::Body::from(body.clone()))).await;
    if response.status() != StatusCode::TEMPORARY_REDIRECT {
        return response;
    }
    let Some(location) = response.headers().get(header::LOCATION).and_then(|value| value.to_str().ok()) else {
        return response;
    };
    match send(method, location, &headers, body).await {
        Ok((status, mut answer_headers, answer)) => {
            answer_headers.remove(header::CONTENT_LENGTH);
            answer_headers.remove(header::TRANSFER_ENCODING);
            answer_headers.remove(header::CONNECTION);
            (status, answer_headers, answer).into_response()
        }
        Err(error) => error.into_response(),
    }
}
