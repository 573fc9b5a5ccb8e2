//! The broker: stateless front of Magnetar. It speaks the Pulsar binary protocol to clients
//! ([`protocol`]), keeps each topic's messages in a managed ledger on bookies
//! ([`managed_ledger`]), tracks subscriptions with durable cursors and dispatches to consumers
//! ([`subscription`], [`dispatcher`]), and serves admin and metrics over HTTP ([`http`]).
//! In a cluster, [`cluster`] decides which broker serves which namespace bundle.
//! [`standalone`] wires bookies and a broker into one process on the local store; [`node`] runs
//! a broker of a cluster against a shared metadata store and separate bookies.

pub mod cluster;
pub mod config;
pub mod dedup;
pub mod dispatcher;
pub mod error;
pub mod http;
pub mod managed_ledger;
pub mod metadata_url;
pub mod metrics;
pub mod namespace;
pub mod node;
pub mod partitions;
pub mod protocol;
pub mod service;
pub mod standalone;
pub mod subscription;
pub mod topic;
pub mod topic_name;

pub use error::BrokerError;
pub use service::BrokerService;
