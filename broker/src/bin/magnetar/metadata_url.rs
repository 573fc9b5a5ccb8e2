//! `--metadata-url`: which metadata store a `magnetar bookie` (and later `magnetar broker`)
//! process uses.
//!
//! - `etcd://host:port[,host:port...]`: an etcd cluster ([`EtcdStore`]); a missing port means
//!   etcd's default, 2379; IPv6 hosts go in brackets (`etcd://[::1]:2379`).
//! - `local:/path` or `local:///path` (`local://relative/path` for a relative one): a
//!   [`LocalStore`] in that directory. Single host only: one process can open it at a time,
//!   which suits a benchmark's own bookie, not a cluster.
//!
//! Parsing is plain code ([`MetadataUrl::from_str`]); [`MetadataUrl::connect`] does the I/O.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use magnetar_meta::{retry_transient, EtcdOptions, EtcdStore, LocalStore, MetaError, MetadataStore, STARTUP_PATIENCE};

/// etcd's client port when a URL names none.
pub const DEFAULT_ETCD_PORT: u16 = 2379;

/// Why a metadata URL cannot be used.
///
/// Its own enum rather than a [`BrokerError`](magnetar_broker::BrokerError) variant: it is a startup
/// configuration error of the binary, never answered to a client.
#[derive(Debug, thiserror::Error)]
pub enum MetadataUrlError {
    #[error("invalid metadata URL {url:?}: {reason} (expected etcd://host:port[,host:port...] or local:/path)")]
    Invalid { url: String, reason: String },
    #[error("connect to metadata store {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: MetaError,
    },
    #[error("create the local metadata directory {path}: {source}")]
    CreateDir {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("metadata store opening thread stopped")]
    Stopped,
}

/// A parsed metadata URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetadataUrl {
    /// etcd endpoints as `http://host:port`.
    Etcd { endpoints: Vec<String> },
    /// A LocalStore directory.
    Local { path: PathBuf },
}

impl FromStr for MetadataUrl {
    type Err = MetadataUrlError;

    fn from_str(url: &str) -> Result<Self, Self::Err> {
        let invalid = |reason: &str| MetadataUrlError::Invalid { url: url.to_owned(), reason: reason.to_owned() };
        if let Some(hosts) = url.strip_prefix("etcd://") {
            let hosts = hosts.trim_end_matches('/');
            if hosts.is_empty() {
                return Err(invalid("no etcd endpoint"));
            }
            let endpoints = hosts
                .split(',')
                .map(|host| etcd_endpoint(host).map_err(|reason| invalid(&reason)))
                .collect::<Result<Vec<_>, _>>()?;
            return Ok(MetadataUrl::Etcd { endpoints });
        }
        if let Some(rest) = url.strip_prefix("local:") {
            let path = rest.strip_prefix("//").unwrap_or(rest);
            if path.is_empty() {
                return Err(invalid("no directory after local:"));
            }
            return Ok(MetadataUrl::Local { path: PathBuf::from(path) });
        }
        Err(invalid("unknown scheme"))
    }
}

/// `host:port` (or `host`, or `[v6]:port`) as `http://host:port`.
fn etcd_endpoint(host_port: &str) -> Result<String, String> {
    let host_port = host_port.trim();
    let (host, port) = if let Some(bracketed) = host_port.strip_prefix('[') {
        let (host, rest) = bracketed.split_once(']').ok_or_else(|| format!("unclosed '[' in {host_port:?}"))?;
        let port = match rest {
            "" => None,
            rest => Some(rest.strip_prefix(':').ok_or_else(|| format!("expected ':port' after ']' in {host_port:?}"))?),
        };
        (format!("[{host}]"), port)
    } else {
        match host_port.split_once(':') {
            Some((_, rest)) if rest.contains(':') => {
                return Err(format!("{host_port:?}: put an IPv6 address in brackets, [addr]:port"))
            }
            Some((host, port)) => (host.to_owned(), Some(port)),
            None => (host_port.to_owned(), None),
        }
    };
    if host.is_empty() || host == "[]" {
        return Err(format!("empty host in {host_port:?}"));
    }
    let port = match port {
        None => DEFAULT_ETCD_PORT,
        Some(port) => port.parse::<u16>().map_err(|_| format!("bad port {port:?} in {host_port:?}"))?,
    };
    Ok(format!("http://{host}:{port}"))
}

impl fmt::Display for MetadataUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MetadataUrl::Etcd { endpoints } => {
                let hosts: Vec<&str> =
                    endpoints.iter().map(|endpoint| endpoint.trim_start_matches("http://")).collect();
                write!(f, "etcd://{}", hosts.join(","))
            }
            MetadataUrl::Local { path } => write!(f, "local:{}", path.display()),
        }
    }
}

impl MetadataUrl {
    /// Connects to etcd as `options`' user and over its TLS, or opens the local store (where
    /// `options` has no use).
    pub async fn connect_with(&self, options: &EtcdOptions) -> Result<Arc<dyn MetadataStore>, MetadataUrlError> {
        let connect_error = |source| MetadataUrlError::Connect { url: self.to_string(), source };
        match self {
            MetadataUrl::Etcd { endpoints } => {
                // etcd electing a leader, or a member still starting, is waited out.
                let connect = || EtcdStore::connect_with(endpoints, options);
                let store = retry_transient("connecting to etcd", STARTUP_PATIENCE, MetaError::is_transient, connect)
                    .await
                    .map_err(connect_error)?;
                Ok(Arc::new(store))
            }
            MetadataUrl::Local { path } => {
                if *options != EtcdOptions::default() {
                    tracing::warn!(url = %self, "metadata store user and TLS settings apply to etcd only: ignored");
                }
                let path = path.clone();
                let url = self.to_string();
                let store = tokio::task::spawn_blocking(move || {
                    std::fs::create_dir_all(&path)
                        .map_err(|source| MetadataUrlError::CreateDir { path: path.display().to_string(), source })?;
                    LocalStore::open(&path).map_err(|source| MetadataUrlError::Connect { url, source })
                })
                .await
                .map_err(|_| MetadataUrlError::Stopped)??;
                Ok(Arc::new(store))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(url: &str) -> MetadataUrl {
        url.parse().unwrap_or_else(|error| panic!("{url}: {error}"))
    }

    #[test]
    fn etcd_urls_list_every_endpoint() {
        assert_eq!(
            parse("etcd://10.0.0.1:2379,etcd-2:12379"),
            MetadataUrl::Etcd { endpoints: vec!["http://10.0.0.1:2379".into(), "http://etcd-2:12379".into()] }
        );
        assert_eq!(parse("etcd://etcd"), MetadataUrl::Etcd { endpoints: vec!["http://etcd:2379".into()] });
        assert_eq!(parse("etcd://[::1]:2380"), MetadataUrl::Etcd { endpoints: vec!["http://[::1]:2380".into()] });
        assert_eq!(parse("etcd://127.0.0.1:2379").to_string(), "etcd://127.0.0.1:2379");
    }

    #[test]
    fn local_urls_name_a_directory() {
        assert_eq!(parse("local:/var/lib/meta"), MetadataUrl::Local { path: "/var/lib/meta".into() });
        assert_eq!(parse("local:///var/lib/meta"), MetadataUrl::Local { path: "/var/lib/meta".into() });
        assert_eq!(parse("local://data/meta"), MetadataUrl::Local { path: "data/meta".into() });
    }

    #[test]
    fn bad_urls_say_why() {
        for (url, reason) in [
            ("zk://localhost:2181", "unknown scheme"),
            ("etcd://", "no etcd endpoint"),
            ("etcd://host:notaport", "bad port"),
            ("etcd://host:99999", "bad port"),
            ("etcd://:2379", "empty host"),
            ("etcd://::1:2379", "brackets"),
            ("local:", "no directory"),
        ] {
            match url.parse::<MetadataUrl>() {
                Err(error) => assert!(error.to_string().contains(reason), "{url}: {error}"),
                Ok(parsed) => panic!("{url} parsed as {parsed:?}"),
            }
        }
    }

    #[tokio::test]
    async fn local_url_opens_a_store_in_a_new_directory() {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = parse(&format!("local:{}", dir.path().join("a/meta").display()));
        let store = url.connect_with(&EtcdOptions::default()).await.expect("open");
        store.put("/k", b"v".to_vec(), magnetar_meta::Expected::Any).await.expect("put");
    }
}
