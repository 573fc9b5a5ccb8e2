//! A bookie announces itself in the metadata store: an ephemeral key per bookie id under
//! [`BOOKIES_PATH`](crate::BOOKIES_PATH) holding its address, gone when its session ends, so
//! ledger writers only pick live bookies and readers find where a bookie id lives now.
//!
//! A registration also names the bookie's `host` (its network location): placement
//! ([`crate::client::placement`]) keeps the copies of one entry on different hosts where it can.
//! Records written before the field existed read with the host part of their address.

use std::time::Duration;

use magnetar_meta::{Expected, MetadataStore, SessionId};
use serde::{Deserialize, Serialize};

use crate::error::BookieError;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BookieRegistration {
    pub bookie_id: String,
    /// host:port of its BookieService.
    pub address: String,
    /// The machine (or failure domain) the bookie runs on: two bookies with the same host are
    /// lost together. Empty in records of older bookies; [`lookup`] fills it from `address`.
    #[serde(default)]
    pub host: String,
    /// The bookie's listener speaks TLS: clients dial it with `https` and check its
    /// certificate. False in records of older bookies.
    #[serde(default)]
    pub tls: bool,
    /// host:port of its HTTP server (`/metrics`, `/api/v1/bookie/state` and `info`), as
    /// BookKeeper's service info names its `httpserver` endpoint. Empty without one.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub http_address: String,
}

impl BookieRegistration {
    /// A registration whose host is the host part of `address`.
    pub fn new(bookie_id: impl Into<String>, address: impl Into<String>) -> Self {
        let address = address.into();
        let host = host_of(&address).to_owned();
        BookieRegistration { bookie_id: bookie_id.into(), address, host, tls: false, http_address: String::new() }
    }

    /// The same registration, with its HTTP server at `http_address`.
    pub fn with_http(mut self, http_address: impl Into<String>) -> Self {
        self.http_address = http_address.into();
        self
    }

    /// The same registration, speaking TLS or not.
    pub fn with_tls(mut self, tls: bool) -> Self {
        self.tls = tls;
        self
    }

    /// The same registration on host `host` (an empty host keeps the address's).
    pub fn with_host(mut self, host: impl Into<String>) -> Self {
        let host = host.into();
        if !host.is_empty() {
            self.host = host;
        }
        self
    }
}

/// The host part of `host:port` (`[v6]:port` gives `v6`); the whole string without a port.
pub fn host_of(address: &str) -> &str {
    if let Some(rest) = address.strip_prefix('[') {
        return rest.split_once(']').map_or(rest, |(host, _)| host);
    }
    match address.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') && port.chars().all(|c| c.is_ascii_digit()) => host,
        _ => address,
    }
}

pub fn registration_path(bookie_id: &str) -> String {
    format!("{}/{bookie_id}", crate::BOOKIES_PATH)
}

/// Registers the bookie under a new session; returns the session, which the caller closes
/// on shutdown.
pub async fn register(
    store: &dyn MetadataStore,
    registration: &BookieRegistration,
    ttl: Duration,
) -> Result<SessionId, BookieError> {
    let value =
        serde_json::to_vec(registration).map_err(|error| BookieError::InvalidRequest { reason: error.to_string() })?;
    let session = store.create_session(ttl).await?;
    if let Err(error) =
        store.put_ephemeral(session, &registration_path(&registration.bookie_id), value, Expected::Any).await
    {
        // Not kept alive for nothing: the caller registers again under a new session.
        if let Err(closing) = store.close_session(session).await {
            tracing::debug!(%closing, "closing the session of a registration that failed");
        }
        return Err(error.into());
    }
    Ok(session)
}

/// The live bookies.
pub async fn available(store: &dyn MetadataStore) -> Result<Vec<BookieRegistration>, BookieError> {
    let mut out = Vec::new();
    for bookie_id in store.list_children(crate::BOOKIES_PATH).await? {
        if let Some(found) = lookup(store, &bookie_id).await? {
            out.push(found);
        }
    }
    Ok(out)
}

/// Where a bookie id lives now, if it is registered.
pub async fn lookup(store: &dyn MetadataStore, bookie_id: &str) -> Result<Option<BookieRegistration>, BookieError> {
    let Some(found) = store.get(&registration_path(bookie_id)).await? else { return Ok(None) };
    let registration = decode(&found.value)
        .map_err(|error| BookieError::Corrupt { what: registration_path(bookie_id), reason: error.to_string() })?;
    Ok(Some(registration))
}

/// A stored registration; an old record without a host gets its address's host.
fn decode(value: &[u8]) -> Result<BookieRegistration, serde_json::Error> {
    let mut registration: BookieRegistration = serde_json::from_slice(value)?;
    if registration.host.is_empty() {
        registration.host = host_of(&registration.address).to_owned();
    }
    Ok(registration)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_is_the_address_without_its_port() {
        assert_eq!(host_of("10.0.0.7:3181"), "10.0.0.7");
        assert_eq!(host_of("bookie-3.example:3181"), "bookie-3.example");
        assert_eq!(host_of("[::1]:3181"), "::1");
        assert_eq!(host_of("sim:4"), "sim");
        assert_eq!(host_of("no-port"), "no-port");
    }

    #[test]
    fn old_records_without_a_host_take_the_address_host() {
        let old = br#"{"bookie_id":"b1","address":"10.1.2.3:3181"}"#;
        let registration = decode(old).expect("old record");
        assert_eq!(registration, BookieRegistration::new("b1", "10.1.2.3:3181"));
    }
}
