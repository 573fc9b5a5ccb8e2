//! Magnetar's Rust client: an async (tokio) client of the Pulsar binary protocol, for
//! Magnetar and for Apache Pulsar brokers alike.
//!
//! ```no_run
//! use magnetar_client::{Client, InitialPosition, ProducerMessage, SubscriptionType};
//!
//! # async fn example() -> Result<(), magnetar_client::ClientError> {
//! let client = Client::connect("pulsar://127.0.0.1:6650").await?;
//!
//! // "my-topic" is short for "persistent://public/default/my-topic".
//! let mut producer = client.producer("my-topic").name("orders").create().await?;
//! let id = producer.send("hello").await?;
//! println!("stored as {id}");
//! producer.send_with(ProducerMessage::new("with a key").key("customer-7").property("kind", "demo")).await?;
//!
//! // Pipelined: queue many, then wait for the receipts.
//! let mut receipts = Vec::new();
//! for n in 0..100 {
//!     receipts.push(producer.send_async(ProducerMessage::new(format!("message {n}"))).await?);
//! }
//! for receipt in receipts {
//!     receipt.await?;
//! }
//! producer.close().await?;
//!
//! let mut consumer = client
//!     .consumer("my-topic", "my-subscription")
//!     .subscription_type(SubscriptionType::Shared)
//!     .initial_position(InitialPosition::Earliest)
//!     .subscribe()
//!     .await?;
//! let message = consumer.receive().await?;
//! println!("{}: {:?}", message.id, message.payload);
//! consumer.ack(&message).await?;
//! consumer.close().await?;
//! # Ok(())
//! # }
//! ```
//!
//! # Security
//!
//! A `pulsar+ssl://` service URL connects with TLS (rustls): the brokers' certificates must
//! chain to the CA file in [`ClientConfig::tls_trust_certs_file_path`] (else to the system's
//! roots) and be issued for the host name connected to, unless
//! [`ClientConfig::tls_hostname_verification`] is off or
//! [`ClientConfig::tls_allow_insecure_connection`] accepts any certificate. Credentials come
//! from an [`Authentication`] in [`ClientConfig::authentication`]: [`TokenAuthentication`]
//! (a JWT from a string, a file read again at every use, or a function),
//! [`BasicAuthentication`], or [`TlsAuthentication`] (a client certificate for mutual TLS).
//! They go in every CONNECT, and when the broker sends AUTH_CHALLENGE (a token expired) the
//! connection answers with fresh data without dropping producers or consumers. Refused
//! credentials are [`ClientError::AuthenticationFailed`]; secrets never appear in logs or
//! `Debug` output.
//!
//! ```no_run
//! use std::sync::Arc;
//! use magnetar_client::{Client, ClientConf, ClientConfig, TokenAuthentication};
//!
//! # async fn example() -> Result<(), magnetar_client::ClientError> {
//! let config = ClientConfig {
//!     tls_trust_certs_file_path: Some("/etc/pulsar/ca.cert.pem".into()),
//!     authentication: Some(Arc::new(TokenAuthentication::from_file("/run/secrets/pulsar-token"))),
//!     ..ClientConfig::default()
//! };
//! let client = Client::connect_with_config("pulsar+ssl://broker.example.com:6651", config).await?;
//!
//! // Or as Pulsar's tools take it: a plugin and its parameters, or a client.conf file.
//! let authentication = magnetar_client::authentication_from_plugin(
//!     "org.apache.pulsar.client.impl.auth.AuthenticationBasic",
//!     r#"{"userId":"alice","password":"secret"}"#,
//! )?;
//! let conf = ClientConf::read_async("/etc/pulsar/client.conf").await?;
//! let mut config = conf.client_config()?;
//! config.authentication.get_or_insert(authentication);
//! let url = conf.broker_service_url.as_deref().unwrap_or("pulsar://localhost:6650");
//! let client = Client::connect_with_config(url, config).await?;
//! # Ok(())
//! # }
//! ```
//!
//! The CLIs (`magnetar-client`, `magnetar-perf`) share [`ConnectionArgs`]: `--auth-plugin`,
//! `--auth-params`, `--tls-trust-cert-path` (or `--trust-cert-file`), `--tls-allow-insecure`,
//! `--tls-enable-hostname-verification` and `--client-conf FILE`, flags winning over the file.
//!
//! How it is built:
//!
//! - [`Client`] (client.rs) holds one connection per broker and looks topics up, following
//!   redirects to the owning broker, and partitioned topics' partition counts.
//! - connection.rs: one task per connection (TCP or TLS) owns the socket; requests, sends and
//!   consumers are routed to and from it through bounded channels.
//! - [`Producer`] (producer.rs) routes messages to partitions (routing.rs, or the user's
//!   [`MessageRouter`]) and hands them to one task per partition (producer_task.rs) that
//!   batches, compresses (compression.rs: LZ4, ZSTD, ZLIB, SNAPPY), splits large messages into
//!   chunks (chunks.rs), sends, and reconnects and resends after a lost broker; access modes
//!   and [`ProducerInterceptor`]s.
//! - [`Consumer`] (consumer.rs) holds one per-topic consumer (topic_consumer.rs: permits,
//!   batch acks, grouped acks, chunk reassembly, resubscribe) per topic or partition, and adds
//!   nacks (with a [`RedeliveryBackoff`]), ack timeouts, dead letters, the retry topic, batch
//!   receive and [`ConsumerInterceptor`]s; pattern.rs follows a pattern consumer's topics;
//!   [`Reader`] (reader.rs) is a non-durable one over a topic or all its partitions, and
//!   [`TableView`] (table_view.rs) a map of every key's latest value.
//! - entry.rs decompresses delivered entries and splits batches into [`Message`]s.
//! - Security: stream.rs (plain or TLS byte streams), tls.rs (the rustls configuration),
//!   auth/ (the [`Authentication`] providers and Pulsar's plugin spelling), client_conf.rs
//!   (Pulsar's client.conf) and connection_args.rs (the CLIs' flags).
//!
//! Not supported yet: OAuth2, SASL and Athenz authentication, the binary proxy
//! (`proxy_through_service_url`), end-to-end encryption (such a message is reported as an
//! error, never returned as garbage), transactions.

mod address;
pub mod admin;
mod auth;
mod batch;
mod chunks;
mod client;
mod client_conf;
mod compression;
mod connection;
mod connection_args;
mod consumer;
mod entry;
mod error;
mod message;
mod pattern;
mod producer;
mod producer_task;
mod reader;
mod redelivery_backoff;
mod routing;
pub mod schema;
mod stream;
mod table_view;
mod tls;
mod topic;
mod topic_consumer;

#[cfg(test)]
mod fake_broker;
#[cfg(test)]
mod feature_tests;
#[cfg(test)]
mod security_tests;

pub use address::{BrokerAddress, ServiceUrl, DEFAULT_PORT, DEFAULT_TLS_PORT};
pub use auth::{
    authentication_from_plugin, AuthData, AuthPlugin, Authentication, BasicAuthentication, ClientCertificateFiles,
    TlsAuthentication, TokenAuthentication,
};
pub use chunks::{DEFAULT_EXPIRE_TIME_OF_INCOMPLETE_CHUNKED_MESSAGE, DEFAULT_MAX_PENDING_CHUNKED_MESSAGES};
pub use client::{Client, ClientConfig, MAX_LOOKUP_REDIRECTS};
pub use client_conf::ClientConf;
pub use compression::{CompressionType, MAX_UNCOMPRESSED_SIZE};
pub use connection_args::ConnectionArgs;
pub use consumer::{
    BatchReceivePolicy, Consumer, ConsumerBuilder, ConsumerInterceptor, DeadLetterPolicy, InitialPosition,
    SubscriptionType, DEFAULT_ACKNOWLEDGEMENT_GROUP_TIME, DEFAULT_MAX_ACKNOWLEDGEMENT_GROUP_SIZE,
    DEFAULT_NEGATIVE_ACK_REDELIVERY_DELAY, DEFAULT_RECEIVER_QUEUE_SIZE, PROPERTY_DELAY_TIME,
    PROPERTY_ORIGIN_MESSAGE_ID, PROPERTY_REAL_TOPIC, PROPERTY_RECONSUME_TIMES,
};
pub use error::ClientError;
pub use message::{Message, MessageId, ParseMessageIdError};
pub use pattern::DEFAULT_PATTERN_AUTO_DISCOVERY_PERIOD;
pub use producer::{
    BatchingConfig, Producer, ProducerAccessMode, ProducerBuilder, ProducerInterceptor, ProducerMessage, SendReceipt,
    SentMessageId, DEFAULT_BATCHING_MAX_BYTES, DEFAULT_BATCHING_MAX_MESSAGES, DEFAULT_BATCHING_MAX_PUBLISH_DELAY,
    DEFAULT_MAX_PENDING_MESSAGES,
};
pub use reader::{Reader, ReaderBuilder, StartMessageId};
pub use redelivery_backoff::{MultiplierRedeliveryBackoff, RedeliveryBackoff};
pub use routing::{murmur3_32, partition_for_key, pulsar_key_hash, MessageRouter, RoutingMode};
pub use table_view::{TableView, TableViewBuilder, DEFAULT_AUTO_UPDATE_PARTITIONS_INTERVAL};
pub use topic::TopicName;

/// The client version sent to brokers in CONNECT: `magnetar-client/<version>`.
pub const CLIENT_VERSION: &str = connection::CLIENT_VERSION;
