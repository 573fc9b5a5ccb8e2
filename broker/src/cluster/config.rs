//! The load manager's settings (`load_balancer_*` in the broker's TOML file). A leaf: the
//! broker's settings (`crate::config`) embed these without depending on the load manager.

use std::time::Duration;

/// Settings of the load manager (`load_balancer_*` keys in the broker's TOML file).
#[derive(Debug, Clone, PartialEq)]
pub struct LoadManagerConfig {
    /// Whether the leader moves and splits bundles (reports and assignment always run).
    pub enabled: bool,
    pub report_interval: Duration,
    pub shedding_interval: Duration,
    /// A bundle moved by the leader is not moved again within this time.
    pub shedding_grace_period: Duration,
    pub auto_bundle_split: bool,
    pub bundle_max_topics: u64,
    pub bundle_max_msg_rate: f64,
}

impl Default for LoadManagerConfig {
    fn default() -> Self {
        LoadManagerConfig {
            enabled: true,
            report_interval: Duration::from_secs(5),
            shedding_interval: Duration::from_secs(60),
            shedding_grace_period: Duration::from_secs(300),
            auto_bundle_split: true,
            bundle_max_topics: 1000,
            bundle_max_msg_rate: 30_000.0,
        }
    }
}
