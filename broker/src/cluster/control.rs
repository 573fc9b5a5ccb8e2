//! What the load manager may ask of the broker it runs in: a narrow interface, so that the
//! load manager does not depend on `BrokerService` (which implements it in `service.rs`) and
//! can be driven by anything that serves bundles.
//!
//! Implementations must be cheap to call from the load manager's tasks: every method may run
//! concurrently with the broker serving clients, and an unload or split may take as long as
//! its topics take to close.

use std::future::Future;
use std::sync::Arc;

use crate::cluster::bundles::Bundle;
use crate::cluster::ownership::Ownership;
use crate::error::BrokerError;
use crate::topic::Topic;

/// The broker as the load manager sees it.
pub trait BundleControl: Send + Sync + 'static {
    /// The bundles this broker holds, its session and the metadata store.
    fn ownership(&self) -> &Arc<Ownership>;

    /// The topics open now, whose load the reports sum per bundle.
    fn loaded_topics(&self) -> Vec<Arc<Topic>>;

    /// Hands `bundle` to whoever looks it up next (a leader's unload command).
    fn unload_bundle(&self, bundle: &Bundle) -> impl Future<Output = Result<(), BrokerError>> + Send;

    /// Replaces `bundle` by its two halves (a leader's split command).
    fn split_bundle(&self, bundle: &Bundle) -> impl Future<Output = Result<(), BrokerError>> + Send;

    /// The broker's metadata session expired: it owns nothing any more and must stop.
    fn session_expired(&self);
}
