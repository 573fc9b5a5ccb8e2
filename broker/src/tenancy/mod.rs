//! Multi-tenancy: clusters, tenants, namespaces and the policies that keep one team's topics
//! from hurting another's.
//!
//! - [`model`]: Pulsar's admin JSON shapes (`ClusterData`, `TenantInfo`, `Policies`,
//!   `TopicPolicies`), with range checks naming the field.
//! - [`store`]: those records in the metadata store, created put-if-absent and changed by
//!   compare-and-set.
//! - [`cache`]: every broker's copy of them, kept by a metadata watch (changes apply within
//!   the watch delay, on every broker, with no restart).
//! - [`effective`]: a topic's limits, its own policies over its namespace's over the broker's
//!   defaults; what the topic, its producers and its subscriptions enforce.

pub mod cache;
pub mod effective;
pub mod model;
pub mod store;

pub use cache::PolicyCache;
pub use effective::{PolicyDefaults, TopicLimits};
