//! Load reports: what each broker publishes about itself, and reading them back.
//!
//! `/magnetar/loadbalance/brokers/<host:http port>` (ephemeral, the broker's session) holds
//! the broker's URLs, its bundles with their topic, producer and consumer counts and publish
//! rates, and its CPU use. The key is also the broker's registration: no report, no new
//! bundles. The report loop that writes it is in [`super::load_manager`]; this module only
//! names the keys and reads or removes them, so that ownership (which chooses brokers by the
//! reports) does not depend on the load manager. No state of its own.

use magnetar_meta::{Expected, MetadataStore};
use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

use crate::cluster::broker_info::BrokerInfo;
use crate::error::BrokerError;

pub const REPORTS_PATH: &str = "/magnetar/loadbalance/brokers";

/// One bundle's load in a report.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BundleLoad {
    pub bundle: String,
    pub topics: u64,
    pub producers: u64,
    pub consumers: u64,
    /// Entries published per second over the last report interval.
    pub msg_rate_in: f64,
}

/// A broker's load report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LoadReport {
    #[serde(flatten)]
    pub info: BrokerInfo,
    pub bundles: Vec<BundleLoad>,
    pub topics: u64,
    pub msg_rate_in: f64,
    /// CPU used by the broker process over the last interval, in percent of one core.
    pub cpu_percent: f64,
    pub timestamp_ms: u64,
}

pub fn report_path(broker: &str) -> String {
    format!("{REPORTS_PATH}/{broker}")
}

/// Every live broker's report (unreadable ones are skipped with a warning).
pub async fn reports(meta: &dyn MetadataStore) -> Result<Vec<LoadReport>, BrokerError> {
    let mut out = Vec::new();
    for broker in meta.list_children(REPORTS_PATH).await? {
        let path = report_path(&broker);
        let Some(found) = meta.get(&path).await? else { continue };
        match serde_json::from_slice::<LoadReport>(&found.value) {
            Ok(report) => out.push(report),
            Err(error) => warn!(%path, %error, "unreadable load report; ignoring that broker"),
        }
    }
    Ok(out)
}

/// Removes `broker`'s report: no new bundles go there (shutdown).
pub async fn withdraw(meta: &dyn MetadataStore, broker: &str) {
    if let Err(error) = meta.delete(&report_path(broker), Expected::Any).await {
        debug!(%error, "removing the load report");
    }
}
