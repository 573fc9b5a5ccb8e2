//! Cluster mode: which broker serves which part of a namespace, and how that changes.
//!
//! - [`bundles`]: a namespace's hash ranges (bundles), the unit of ownership, and its layout.
//! - [`ownership`]: the bundles this broker holds through ephemeral keys; LOOKUP answers.
//! - [`load_report`], [`placement`]: every broker's published load, and the pure choice of the
//!   least loaded broker for an unowned bundle.
//! - [`load_manager`]: the report loop, the elected leader's shedding and splits, and the
//!   commands an owner carries out, driving the broker through [`control::BundleControl`].
//! - [`config`], [`broker_info`]: the load manager's settings and a broker's identity.
//!
//! Dependencies point one way, leaves first: `config`, `broker_info` and `bundles` import no
//! other cluster module; `load_report` and `placement` know only reports; `ownership` asks
//! `placement` and never the load manager; the load manager knows the broker only through
//! the `BundleControl` trait, which `BrokerService` implements. Concurrency: ownership state
//! is behind short `std::sync::Mutex`es never held across an await; the load manager runs as
//! tasks of its own (see [`load_manager::spawn`]).

pub mod broker_info;
pub mod bundles;
pub mod config;
pub mod control;
pub mod load_manager;
pub mod load_report;
pub mod ownership;
pub mod placement;
