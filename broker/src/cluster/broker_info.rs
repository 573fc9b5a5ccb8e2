//! A broker's identity as the cluster sees it: what lookups answer and how load reports and
//! ownership keys name it. A leaf shared by [`super::ownership`] and [`super::load_report`],
//! so that neither has to import the other for it. Plain data, no state.

use serde::{Deserialize, Serialize};

/// Who a broker is: what lookups answer, and how other brokers and tools name it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BrokerInfo {
    /// `host:http port`, as Pulsar names brokers.
    pub broker: String,
    pub native_url: String,
    pub http_url: String,
    /// `pulsar+ssl://`, when the broker serves TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub native_url_tls: Option<String>,
    /// `https://`, when the broker serves HTTPS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_url_tls: Option<String>,
}
