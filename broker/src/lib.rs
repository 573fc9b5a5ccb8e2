//! The broker: stateless front of Magnetar. It speaks the Pulsar binary protocol to clients
//! ([`protocol`]), keeps each topic's messages in a managed ledger on bookies
//! ([`managed_ledger`]), tracks subscriptions with durable cursors and dispatches to consumers
//! ([`subscription`], [`dispatcher`]), and serves admin and metrics over HTTP ([`http`]).
//! In a cluster, [`cluster`] decides which broker serves which namespace bundle; [`tenancy`]
//! holds clusters, tenants, namespaces and the policies every topic is held to;
//! [`security`] authenticates clients (TLS, tokens, basic) and authorizes what they do;
//! [`schema`] keeps each topic's schema history and checks new schemas against it.
//! The process wiring (`magnetar standalone|broker|bookie|autorecovery`, the settings file,
//! metadata URLs) lives with the binary, in `src/bin/magnetar/`.

pub mod cluster;
pub mod compaction;
pub mod config;
pub mod dedup;
pub mod dispatcher;
pub mod error;
pub mod http;
pub mod managed_ledger;
pub mod metrics;
pub mod non_persistent;
pub mod partitions;
pub mod protocol;
pub mod schema;
pub mod security;
pub mod service;
pub mod stats;
pub mod subscription;
pub mod tenancy;
pub mod throttle;
pub mod topic;
pub mod topic_name;

pub use error::BrokerError;
pub use service::BrokerService;
