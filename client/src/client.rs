//! [`Client`]: the entry point. It holds the service URL, the settings, and a pool of broker
//! connections keyed by broker address, so every producer and consumer on the same broker
//! shares one TCP connection.
//!
//! Before a producer or consumer is created, its topic is looked up: a LOOKUP goes to the
//! service URL, and each Redirect answer sends the next LOOKUP (marked authoritative when the
//! broker says so) to the broker it names, until one answers Connect with the owner. At most
//! [`MAX_LOOKUP_REDIRECTS`] redirects are followed.
//!
//! Security: a `pulsar+ssl://` service URL makes every connection TLS (tls.rs builds the
//! rustls configuration once, here, when the client is created); lookups then answer with
//! the brokers' TLS URLs. The [`Authentication`] in the settings is used by every connection.
//!
//! The pool's lock is a plain mutex held only to read or insert, never across an `.await`;
//! two tasks that connect to the same new broker at once may both open a connection, and the
//! second one to finish is dropped.

use parking_lot::{Mutex, MutexGuard};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use magnetar_proto::command;
use magnetar_proto::pulsar::{command_lookup_topic_response::LookupType, command_partitioned_topic_metadata_response};
use magnetar_proto::topic_name::partition_topic_name;
use tracing::{debug, warn};

use crate::address::{BrokerAddress, ServiceUrl};
use crate::auth::Authentication;
use crate::connection::{Connection, ConnectionConfig};
use crate::consumer::ConsumerBuilder;
use crate::error::{error_chain, ClientError};
use crate::producer::ProducerBuilder;
use crate::reader::ReaderBuilder;
use crate::topic::TopicName;

/// How many Redirect answers a lookup follows before giving up.
pub const MAX_LOOKUP_REDIRECTS: u32 = 8;

/// Client settings. The defaults are Pulsar's, except that TLS host names are verified.
///
/// The TLS settings apply to `pulsar+ssl://` service URLs and are ignored otherwise.
/// [`ClientConf`](crate::ClientConf) reads them from Pulsar's client.conf.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// How long a request (lookup, create a producer, subscribe, close) and a send wait for
    /// the broker's answer.
    pub operation_timeout: Duration,
    /// TCP connect plus the protocol handshake.
    pub connection_timeout: Duration,
    /// How often each connection sends a PING; a connection silent for a whole interval
    /// after one is closed as dead.
    pub keepalive_interval: Duration,
    /// Commands (sends, acks, requests) waiting for a connection's writer. When full, the
    /// callers wait.
    pub connection_queue_size: usize,
    /// The first wait before a producer or consumer reconnects after losing its broker; it
    /// doubles with every failed attempt up to `max_backoff_interval` (Pulsar: 100 ms, 60 s).
    pub initial_backoff_interval: Duration,
    pub max_backoff_interval: Duration,
    /// How the client proves who it is: its method and data go in every CONNECT, and fresh
    /// data answers every AUTH_CHALLENGE. `None`: no authentication. Build one with
    /// [`TokenAuthentication`](crate::TokenAuthentication),
    /// [`BasicAuthentication`](crate::BasicAuthentication),
    /// [`TlsAuthentication`](crate::TlsAuthentication) or
    /// [`authentication_from_plugin`](crate::authentication_from_plugin).
    pub authentication: Option<Arc<dyn Authentication>>,
    /// A PEM file of the CA certificates that sign brokers' certificates (Pulsar's
    /// `tlsTrustCertsFilePath`). `None`: the system's trusted roots.
    pub tls_trust_certs_file_path: Option<PathBuf>,
    /// Accept any broker certificate, trusted or not (Pulsar's `tlsAllowInsecureConnection`).
    /// The connection is still encrypted but can be intercepted: for tests only.
    pub tls_allow_insecure_connection: bool,
    /// Check that a broker's certificate is issued for the host name connected to (Pulsar's
    /// `tlsHostnameVerificationEnable`). On by default here (Pulsar's Java client has it off).
    pub tls_hostname_verification: bool,
    /// A client certificate (PEM, with any intermediates) and its key (PEM) for mutual TLS,
    /// when the authentication provides none (Pulsar's `tlsCertificateFilePath` and
    /// `tlsKeyFilePath`). Both or neither.
    pub tls_certificate_file_path: Option<PathBuf>,
    pub tls_key_file_path: Option<PathBuf>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            operation_timeout: Duration::from_secs(30),
            connection_timeout: Duration::from_secs(10),
            keepalive_interval: Duration::from_secs(30),
            connection_queue_size: 1000,
            initial_backoff_interval: Duration::from_millis(100),
            max_backoff_interval: Duration::from_secs(30),
            authentication: None,
            tls_trust_certs_file_path: None,
            tls_allow_insecure_connection: false,
            tls_hostname_verification: true,
            tls_certificate_file_path: None,
            tls_key_file_path: None,
        }
    }
}

impl ClientConfig {
    fn validate(&self) -> Result<(), ClientError> {
        let invalid = |setting, reason| Err(ClientError::InvalidConfig { setting, reason });
        if self.operation_timeout.is_zero() {
            return invalid("operation_timeout", "must be more than zero");
        }
        if self.connection_timeout.is_zero() {
            return invalid("connection_timeout", "must be more than zero");
        }
        if self.keepalive_interval.is_zero() {
            return invalid("keepalive_interval", "must be more than zero");
        }
        if self.initial_backoff_interval.is_zero() || self.max_backoff_interval < self.initial_backoff_interval {
            return invalid(
                "max_backoff_interval",
                "must be at least initial_backoff_interval, which must be more than zero",
            );
        }
        if self.connection_queue_size == 0 {
            return invalid("connection_queue_size", "must be at least 1");
        }
        if self.tls_certificate_file_path.is_some() != self.tls_key_file_path.is_some() {
            return invalid("tls_certificate_file_path", "needs tls_key_file_path, and the other way round");
        }
        Ok(())
    }
}

/// A client of a Magnetar (or Pulsar) cluster. Cheap to clone; clones share connections.
#[derive(Debug, Clone)]
pub struct Client {
    inner: Arc<ClientInner>,
}

#[derive(Debug)]
struct ClientInner {
    service_url: ServiceUrl,
    config: ClientConfig,
    /// What every new connection is opened with, TLS and authentication included.
    connection_config: ConnectionConfig,
    connections: Mutex<HashMap<BrokerAddress, Connection>>,
}

impl Client {
    /// Connects to the service URL (`pulsar://host:port`, or `pulsar+ssl://host:port` for
    /// TLS) with the default settings.
    pub async fn connect(service_url: &str) -> Result<Client, ClientError> {
        Client::connect_with_config(service_url, ClientConfig::default()).await
    }

    /// Connects to the service URL with the given settings. The first connection is opened
    /// here, so an unreachable cluster, a TLS setup that does not work or refused credentials
    /// are reported at once.
    pub async fn connect_with_config(service_url: &str, config: ClientConfig) -> Result<Client, ClientError> {
        config.validate()?;
        let service_url = ServiceUrl::parse(service_url)?;
        let tls = match service_url.uses_tls() {
            true => Some(crate::tls::client_tls_config(tls_options(&config)).await?),
            false => None,
        };
        if tls.is_none() && config.authentication.as_ref().is_some_and(|auth| auth.tls_client_certificate().is_some()) {
            warn!(%service_url, "TLS authentication presents its certificate only over TLS: use a pulsar+ssl:// service URL");
        }
        let connection_config = ConnectionConfig {
            connection_timeout: config.connection_timeout,
            operation_timeout: config.operation_timeout,
            keepalive_interval: config.keepalive_interval,
            command_queue_size: config.connection_queue_size,
            authentication: config.authentication.clone(),
            tls,
        };
        let client = Client {
            inner: Arc::new(ClientInner {
                service_url,
                config,
                connection_config,
                connections: Mutex::new(HashMap::new()),
            }),
        };
        client.service_connection().await?;
        Ok(client)
    }

    pub fn service_url(&self) -> &ServiceUrl {
        &self.inner.service_url
    }

    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// Starts building a producer for `topic` (a short name means `public/default`).
    pub fn producer(&self, topic: impl Into<String>) -> ProducerBuilder {
        ProducerBuilder::new(self.clone(), topic.into())
    }

    /// Starts building a consumer of `subscription` on `topic`.
    pub fn consumer(&self, topic: impl Into<String>, subscription: impl Into<String>) -> ConsumerBuilder {
        ConsumerBuilder::new(self.clone(), topic.into(), subscription.into())
    }

    /// Starts building a reader of `topic`: a non-durable subscription from a start position.
    pub fn reader(&self, topic: impl Into<String>) -> ReaderBuilder {
        ReaderBuilder::new(self.clone(), topic.into())
    }

    /// Starts building a table view of `topic`: the latest value of every key, kept current.
    pub fn table_view(&self, topic: impl Into<String>) -> crate::table_view::TableViewBuilder {
        crate::table_view::TableViewBuilder::new(self.clone(), topic.into())
    }

    /// The broker that serves `topic`, following redirects.
    pub async fn lookup(&self, topic: &TopicName) -> Result<BrokerAddress, ClientError> {
        Ok(self.lookup_connection(topic).await?.broker().clone())
    }

    /// How many partitions `topic` has; 0 for a topic that is not partitioned.
    pub async fn partitions(&self, topic: &TopicName) -> Result<u32, ClientError> {
        let connection = self.service_connection().await?;
        let topic_name = topic.to_string();
        let answer = connection.request(|request_id| command::partitioned_metadata(&topic_name, request_id)).await?;
        let broker = connection.broker().to_string();
        let metadata = answer.partition_metadata_response.ok_or_else(|| ClientError::UnexpectedResponse {
            broker,
            expected: "PARTITIONED_METADATA_RESPONSE",
            got: crate::connection::command_name(answer.command_type),
        })?;
        if metadata.response == Some(command_partitioned_topic_metadata_response::LookupType::Failed as i32) {
            return Err(ClientError::from_server(metadata.error.unwrap_or(0), metadata.message.unwrap_or_default()));
        }
        Ok(metadata.partitions.unwrap_or(0))
    }

    /// Forgets the pooled connections. Each closes once the producers and consumers that use
    /// it are closed or dropped.
    pub fn close(&self) {
        self.pool().clear();
    }

    /// Parses `topic` and connects to the broker that owns it. The caller has resolved
    /// partitions already: `topic` is a partition or a topic that is not partitioned.
    pub(crate) async fn topic_connection(&self, topic: &str) -> Result<(TopicName, Connection), ClientError> {
        let topic = TopicName::parse(topic)?;
        let connection = self.lookup_connection(&topic).await?;
        Ok((topic, connection))
    }

    /// The topics to attach to for `topic`: its partitions `<topic>-partition-<i>` when it is
    /// partitioned, else the topic itself.
    pub(crate) async fn resolve_partitions(&self, topic: &str) -> Result<(TopicName, Vec<String>), ClientError> {
        let topic = TopicName::parse(topic)?;
        let partitions = self.retry_while_unreachable(|| self.partitions(&topic)).await?;
        let names = if partitions == 0 {
            vec![topic.to_string()]
        } else {
            (0..partitions).map(|index| partition_topic_name(&topic, index)).collect()
        };
        Ok((topic, names))
    }

    /// Runs `operation` (a lookup plus registering a producer or consumer) again with
    /// backoff while it fails because a broker connection was lost or refused, as after a
    /// broker restart (the pool may still hold the dead connection for the first try), for
    /// at most the operation timeout. Other errors are returned at once.
    pub(crate) async fn retry_while_unreachable<T, F, Fut>(&self, mut operation: F) -> Result<T, ClientError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, ClientError>>,
    {
        let deadline = tokio::time::Instant::now() + self.inner.config.operation_timeout;
        let mut attempt = 0;
        loop {
            match operation().await {
                Err(error @ (ClientError::Disconnected { .. } | ClientError::Connect { .. }))
                    if tokio::time::Instant::now() < deadline =>
                {
                    debug!(attempt, error = %error_chain(&error), "broker unreachable; trying again");
                    self.backoff(attempt).await;
                    attempt += 1;
                }
                result => return result,
            }
        }
    }

    /// Waits before reconnect attempt `attempt` (0-based): exponential backoff with jitter.
    pub(crate) async fn backoff(&self, attempt: u32) {
        let config = &self.inner.config;
        let base = config.initial_backoff_interval.saturating_mul(1u32 << attempt.min(16));
        let wait = base.min(config.max_backoff_interval);
        // Up to 10% less, so clients that lost the same broker do not all return at once.
        let jitter = wait.mul_f64(rand::random::<f64>() * 0.1);
        tokio::time::sleep(wait - jitter).await;
    }

    /// The connection to the broker that owns `topic`.
    pub(crate) async fn lookup_connection(&self, topic: &TopicName) -> Result<Connection, ClientError> {
        let topic_name = topic.to_string();
        let mut connection = self.service_connection().await?;
        let mut authoritative = false;
        for _ in 0..=MAX_LOOKUP_REDIRECTS {
            let answer =
                connection.request(|request_id| command::lookup(&topic_name, request_id, authoritative)).await?;
            let unexpected = |got: &str| ClientError::UnexpectedResponse {
                broker: connection.broker().to_string(),
                expected: "LOOKUP_RESPONSE",
                got: got.to_owned(),
            };
            let lookup = answer
                .lookup_topic_response
                .ok_or_else(|| unexpected(&crate::connection::command_name(answer.command_type)))?;
            let response = lookup
                .response
                .and_then(|response| LookupType::try_from(response).ok())
                .ok_or_else(|| unexpected("LOOKUP_RESPONSE without a known response type"))?;
            if response == LookupType::Failed {
                return Err(ClientError::from_server(lookup.error.unwrap_or(0), lookup.message.unwrap_or_default()));
            }
            let tls = self.inner.service_url.uses_tls();
            let url = if tls { lookup.broker_service_url_tls.as_deref() } else { lookup.broker_service_url.as_deref() };
            let Some(url) = url else {
                return Err(match (tls, lookup.broker_service_url_tls.is_some()) {
                    (true, _) => unexpected("LOOKUP_RESPONSE without a TLS broker URL (the broker may not serve TLS)"),
                    (false, true) => ClientError::Unsupported {
                        what: format!("a broker reachable only with TLS (lookup of {topic_name}): use pulsar+ssl://"),
                    },
                    (false, false) => unexpected("LOOKUP_RESPONSE without a broker URL"),
                });
            };
            // As in Pulsar's clients, the client's URL decides TLS, not the scheme the broker wrote.
            let broker = BrokerAddress::parse_url(url)?.with_tls(tls);
            if lookup.proxy_through_service_url == Some(true) {
                warn!(%topic, %broker, "the lookup asks to go through a proxy, which this client does not support yet; connecting directly");
            }
            if response == LookupType::Connect {
                debug!(%topic, %broker, "lookup found the owner");
                return self.connection(&broker).await;
            }
            debug!(%topic, %broker, "lookup redirected");
            authoritative = lookup.authoritative.unwrap_or(false);
            connection = self.connection(&broker).await?;
        }
        Err(ClientError::TooManyRedirects { topic: topic_name, hops: MAX_LOOKUP_REDIRECTS })
    }

    /// A connection to one of the service URL's hosts, trying them in order.
    pub(crate) async fn service_connection(&self) -> Result<Connection, ClientError> {
        let mut last_error = None;
        for host in self.inner.service_url.hosts() {
            match self.connection(host).await {
                Ok(connection) => return Ok(connection),
                Err(error) => {
                    debug!(%host, error = %error_chain(&error), "service host unavailable");
                    last_error = Some(error);
                }
            }
        }
        Err(last_error
            .unwrap_or_else(|| ClientError::InvalidUrl { url: self.inner.service_url.to_string(), reason: "no hosts" }))
    }

    /// The pooled connection to `broker`, opening one when there is none or it has ended.
    pub(crate) async fn connection(&self, broker: &BrokerAddress) -> Result<Connection, ClientError> {
        if let Some(connection) = self.pool().get(broker).filter(|c| !c.is_closed()) {
            return Ok(connection.clone());
        }
        let fresh = Connection::connect(broker.clone(), &self.inner.connection_config).await?;
        let mut pool = self.pool();
        match pool.get(broker) {
            Some(existing) if !existing.is_closed() => Ok(existing.clone()),
            _ => {
                pool.insert(broker.clone(), fresh.clone());
                Ok(fresh)
            }
        }
    }

    fn pool(&self) -> MutexGuard<'_, HashMap<BrokerAddress, Connection>> {
        self.inner.connections.lock()
    }
}

/// The TLS side of `config`: its TLS fields, and the client certificate its authentication
/// supplies (TLS authentication) or else its certificate files name.
fn tls_options(config: &ClientConfig) -> crate::tls::TlsOptions<'_> {
    let client_certificate =
        match (&config.authentication, &config.tls_certificate_file_path, &config.tls_key_file_path) {
            (Some(authentication), ..) if authentication.tls_client_certificate().is_some() => {
                authentication.tls_client_certificate().cloned()
            }
            (_, Some(certificate), Some(private_key)) => Some(crate::auth::ClientCertificateFiles {
                certificate: certificate.clone(),
                private_key: private_key.clone(),
            }),
            _ => None,
        };
    crate::tls::TlsOptions {
        trust_certs_file_path: config.tls_trust_certs_file_path.as_deref(),
        allow_insecure_connection: config.tls_allow_insecure_connection,
        hostname_verification: config.tls_hostname_verification,
        client_certificate,
    }
}
