//! The load manager, after Pulsar's: every broker reports its load; lookups hand unowned
//! bundles to the least loaded broker; one elected leader moves bundles off brokers that
//! have more than their share and splits hot bundles.
//!
//! - Reports: `/magnetar/loadbalance/brokers/<host:http port>` (ephemeral, the broker's
//!   session), rewritten every `report_interval`: the broker's URLs, its bundles with their
//!   topic, producer and consumer counts and publish rates, and its CPU use. A broker's report
//!   key is also its registration: no report, no new bundles.
//!   The report types and key names are in [`super::load_report`].
//! - Assignment ([`super::placement::choose`], asked by ownership's lookups): fewest bundles,
//!   then lowest publish rate, counting the assignments this broker made since it last read
//!   the reports.
//! - Leader: `/magnetar/loadbalance/leader` (a lock, [`magnetar_meta::lock`]). Every
//!   `shedding_interval` it reads the reports and
//!   - splits each bundle over `bundle_max_topics` topics or `bundle_max_msg_rate` messages/s
//!     (at most one per namespace per round, while the namespace has fewer than
//!     [`bundles::MAX_BUNDLES`]);
//!   - if the broker with the most bundles has at least two more than the one with the
//!     fewest (a new broker has none), unloads its busiest bundle not moved within the
//!     grace period; the next lookup hands it to the least loaded broker.
//! - Commands: the leader asks an owner to unload or split by writing
//!   `/magnetar/loadbalance/commands/<broker>/<id>` (`{"action": "unload"|"split",
//!   "bundle": ...}`); the owner carries it out and deletes the key.
//!
//! Concurrency: [`spawn`] starts three tasks per broker (reports, commands, leader), each
//! looping until the cancel token fires; commands run in tasks of their own because an
//! unload waits for topics to close. The broker is reached only through [`BundleControl`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use magnetar_meta::{Expected, MetaError, WatchEvent};
use magnetar_proto::clock::now_ms;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::cluster::bundles::{self, Bundle};
use crate::cluster::config::LoadManagerConfig;
use crate::cluster::control::BundleControl;
use crate::cluster::load_report::{self, BundleLoad, LoadReport};
use crate::cluster::ownership::Ownership;
use crate::error::BrokerError;

pub const LEADER_PATH: &str = "/magnetar/loadbalance/leader";
pub const COMMANDS_PATH: &str = "/magnetar/loadbalance/commands";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Unload,
    Split,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoadCommand {
    pub action: Action,
    pub bundle: String,
}

/// What the leader decides in one round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub broker: String,
    pub command: LoadCommand,
}

/// The leader's decisions for one round: splits of hot bundles, then at most one unload from
/// the broker with the most bundles if it has two or more than the one with the fewest.
pub fn decide(
    reports: &[LoadReport],
    config: &LoadManagerConfig,
    bundles_per_namespace: &HashMap<String, usize>,
    recently_moved: &dyn Fn(&str) -> bool,
) -> Vec<Decision> {
    let mut decisions = Vec::new();
    if config.auto_bundle_split {
        let mut splitting = std::collections::HashSet::new();
        for report in reports {
            for load in &report.bundles {
                let hot = load.topics > config.bundle_max_topics || load.msg_rate_in > config.bundle_max_msg_rate;
                let Some(bundle) = Bundle::parse(&load.bundle) else { continue };
                let count = bundles_per_namespace.get(&bundle.namespace).copied().unwrap_or(0);
                if hot && count < bundles::MAX_BUNDLES && splitting.insert(bundle.namespace.clone()) {
                    decisions.push(Decision {
                        broker: report.info.broker.clone(),
                        command: LoadCommand { action: Action::Split, bundle: load.bundle.clone() },
                    });
                }
            }
        }
    }
    if reports.len() >= 2 {
        let most = reports.iter().max_by_key(|r| (r.bundles.len(), r.info.broker.clone()));
        let fewest = reports.iter().min_by_key(|r| (r.bundles.len(), r.info.broker.clone()));
        if let (Some(most), Some(fewest)) = (most, fewest) {
            if most.bundles.len() >= fewest.bundles.len() + 2 {
                let candidate = most
                    .bundles
                    .iter()
                    .filter(|load| !recently_moved(&load.bundle))
                    .filter(|load| !decisions.iter().any(|d| d.command.bundle == load.bundle))
                    .max_by(|a, b| a.msg_rate_in.total_cmp(&b.msg_rate_in).then(a.topics.cmp(&b.topics)));
                if let Some(load) = candidate {
                    decisions.push(Decision {
                        broker: most.info.broker.clone(),
                        command: LoadCommand { action: Action::Unload, bundle: load.bundle.clone() },
                    });
                }
            }
        }
    }
    decisions
}

/// Runs the load manager of one broker until `cancel`: reports, the leader election and,
/// while leader, shedding; and the commands addressed to this broker.
pub fn spawn<B: BundleControl>(service: Arc<B>, config: LoadManagerConfig, cancel: CancellationToken) {
    tokio::spawn(session_watch(service.clone(), cancel.clone()));
    tokio::spawn(report_loop(service.clone(), config.clone(), cancel.clone()));
    tokio::spawn(command_loop(service.clone(), cancel.clone()));
    if config.enabled {
        tokio::spawn(leader_loop(service, config, cancel));
    }
}

/// Stops the broker when its metadata session counts as lost, which the store tells before
/// etcd may expire the lease, even when etcd cannot be reached (the ownership gives its
/// bundles up at the same moment). A session closed by a graceful shutdown is not news.
async fn session_watch<B: BundleControl>(service: Arc<B>, cancel: CancellationToken) {
    let ownership = service.ownership().clone();
    tokio::select! {
        _ = cancel.cancelled() => {}
        _ = ownership.meta().session_lost(ownership.session()) => {
            if !ownership.is_draining() {
                warn!("the broker's metadata session is lost: it owns nothing any more; shutting down");
                service.session_expired();
            }
        }
    }
}

/// This process's CPU time so far (user + system), from /proc.
fn process_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // Linux reports in clock ticks; USER_HZ is 100 on every platform Rust targets with /proc.
    Some(Duration::from_millis(ticks * 10))
}

async fn report_loop<B: BundleControl>(service: Arc<B>, config: LoadManagerConfig, cancel: CancellationToken) {
    let ownership = service.ownership().clone();
    let path = load_report::report_path(&ownership.me().broker);
    let mut last: Option<(Instant, Duration, HashMap<String, u64>)> = None;
    loop {
        if ownership.is_draining() {
            return;
        }
        let now = Instant::now();
        let cpu = process_cpu().unwrap_or_default();
        let mut published = HashMap::new();
        let (elapsed, cpu_percent, previous) = match &last {
            Some((at, cpu_before, previous)) => {
                let elapsed = now.duration_since(*at).as_secs_f64().max(0.001);
                (elapsed, cpu.saturating_sub(*cpu_before).as_secs_f64() * 100.0 / elapsed, Some(previous))
            }
            None => (1.0, 0.0, None),
        };
        let mut loads: HashMap<Bundle, BundleLoad> = ownership
            .owned_bundles()
            .into_iter()
            .map(|bundle| (bundle.clone(), BundleLoad { bundle: bundle.to_string(), ..BundleLoad::default() }))
            .collect();
        for topic in service.loaded_topics() {
            let name = topic.name().to_string();
            let total = topic.published();
            published.insert(name.clone(), total);
            let Some(load) = loads.iter_mut().find(|(bundle, _)| bundle.contains(topic.name())).map(|(_, load)| load)
            else {
                continue;
            };
            let before = previous.and_then(|p| p.get(&name).copied()).unwrap_or(total);
            load.topics += 1;
            load.producers += topic.producer_count() as u64;
            load.consumers += topic.consumer_count().await as u64;
            load.msg_rate_in += total.saturating_sub(before) as f64 / elapsed;
        }
        let bundles: Vec<BundleLoad> = loads.into_values().collect();
        let report = LoadReport {
            info: ownership.me().clone(),
            topics: bundles.iter().map(|b| b.topics).sum(),
            msg_rate_in: bundles.iter().map(|b| b.msg_rate_in).sum::<f64>() + 0.0, // an empty float sum is -0.0
            bundles,
            cpu_percent,
            timestamp_ms: now_ms(),
        };
        let value = serde_json::to_vec(&report).unwrap_or_default();
        match ownership.meta().put_ephemeral(ownership.session(), &path, value, Expected::Any).await {
            Ok(_) => {}
            Err(error @ MetaError::SessionExpired { .. }) => {
                warn!(%error, "the broker's metadata session expired: it owns nothing any more; shutting down");
                service.session_expired();
                return;
            }
            Err(error) => warn!(%error, "writing the load report failed"),
        }
        ownership.forget_recent_assignments();
        last = Some((now, cpu, published));
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(config.report_interval) => {}
        }
    }
}

async fn leader_loop<B: BundleControl>(service: Arc<B>, config: LoadManagerConfig, cancel: CancellationToken) {
    let ownership = service.ownership().clone();
    let meta = ownership.meta().clone();
    let acquired = tokio::select! {
        _ = cancel.cancelled() => return,
        acquired = magnetar_meta::lock::acquire(meta.as_ref(), ownership.session(), LEADER_PATH, ownership.me().broker.clone().into_bytes()) => acquired,
    };
    let guard = match acquired {
        Ok(guard) => guard,
        Err(error) => {
            warn!(%error, "load manager leader election failed; this broker will not lead");
            return;
        }
    };
    info!(broker = %ownership.me().broker, "this broker leads the load manager");
    let mut moved: HashMap<String, Instant> = HashMap::new();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(config.shedding_interval) => {}
        }
        if ownership.is_draining() {
            break;
        }
        if let Err(error) = shed_once(&ownership, &config, &mut moved).await {
            warn!(%error, "load shedding round failed");
        }
    }
    let _ = guard.release(meta.as_ref()).await;
}

/// Asks `broker` to carry out `command` (it deletes the key once it has).
pub async fn send_command(ownership: &Ownership, broker: &str, command: &LoadCommand) -> Result<(), BrokerError> {
    let id = magnetar_meta::sequence::next(ownership.meta().as_ref(), "/magnetar/sequences/load-command").await?;
    let value = serde_json::to_vec(command).unwrap_or_default();
    ownership.meta().put(&format!("{COMMANDS_PATH}/{broker}/{id}"), value, Expected::Absent).await?;
    Ok(())
}

async fn shed_once(
    ownership: &Ownership,
    config: &LoadManagerConfig,
    moved: &mut HashMap<String, Instant>,
) -> Result<(), BrokerError> {
    let reports = load_report::reports(ownership.meta().as_ref()).await?;
    let mut per_namespace = HashMap::new();
    for report in &reports {
        for load in &report.bundles {
            if let Some(bundle) = Bundle::parse(&load.bundle) {
                if !per_namespace.contains_key(&bundle.namespace) {
                    let count = ownership.layout(&bundle.namespace).await?.bundles().len();
                    per_namespace.insert(bundle.namespace.clone(), count);
                }
            }
        }
    }
    moved.retain(|_, at| at.elapsed() < config.shedding_grace_period);
    let decisions = decide(&reports, config, &per_namespace, &|bundle| moved.contains_key(bundle));
    for decision in decisions {
        info!(broker = %decision.broker, action = ?decision.command.action, bundle = %decision.command.bundle, "load manager: asking the owner");
        moved.insert(decision.command.bundle.clone(), Instant::now());
        let id = magnetar_meta::sequence::next(ownership.meta().as_ref(), "/magnetar/sequences/load-command").await?;
        let value = serde_json::to_vec(&decision.command).unwrap_or_default();
        ownership.meta().put(&format!("{COMMANDS_PATH}/{}/{id}", decision.broker), value, Expected::Absent).await?;
    }
    Ok(())
}

/// Carries out the commands addressed to this broker.
async fn command_loop<B: BundleControl>(service: Arc<B>, cancel: CancellationToken) {
    let ownership = service.ownership().clone();
    let prefix = format!("{COMMANDS_PATH}/{}", ownership.me().broker);
    loop {
        let mut watch = match ownership.meta().watch(&format!("{prefix}/")).await {
            Ok(watch) => watch,
            Err(error) => {
                warn!(%error, "cannot watch load manager commands; retrying");
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        // Commands written before the watch (or while it was down).
        if let Ok(ids) = ownership.meta().list_children(&prefix).await {
            for id in ids {
                run_command(&service, &format!("{prefix}/{id}")).await;
            }
        }
        loop {
            let event = tokio::select! {
                _ = cancel.cancelled() => return,
                event = watch.recv() => event,
            };
            match event {
                Some(WatchEvent::Put { key, .. }) => run_command(&service, &key).await,
                Some(WatchEvent::Delete { .. }) => {}
                None => break,
            }
        }
    }
}

async fn run_command<B: BundleControl>(service: &Arc<B>, key: &str) {
    let meta = service.ownership().meta().clone();
    let Ok(Some(found)) = meta.get(key).await else { return };
    let _ = meta.delete(key, Expected::Version(found.version)).await;
    let command: LoadCommand = match serde_json::from_slice(&found.value) {
        Ok(command) => command,
        Err(error) => {
            warn!(%key, %error, "unreadable load manager command; dropped");
            return;
        }
    };
    let Some(bundle) = Bundle::parse(&command.bundle) else {
        warn!(%key, bundle = %command.bundle, "load manager command names no bundle; dropped");
        return;
    };
    let service = service.clone();
    // In its own task: an unload waits for topics to close, and commands keep coming.
    tokio::spawn(async move {
        let result = match command.action {
            Action::Unload => service.unload_bundle(&bundle).await,
            Action::Split => service.split_bundle(&bundle).await,
        };
        match result {
            Ok(()) => info!(%bundle, action = ?command.action, "load manager command done"),
            Err(error) => info!(%bundle, action = ?command.action, %error, "load manager command not done"),
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::broker_info::BrokerInfo;

    fn report(broker: &str, bundles: &[(&str, u64, f64)]) -> LoadReport {
        LoadReport {
            info: BrokerInfo {
                broker: broker.to_owned(),
                native_url: format!("pulsar://{broker}"),
                http_url: format!("http://{broker}"),
                native_url_tls: None,
                http_url_tls: None,
                ..Default::default()
            },
            bundles: bundles
                .iter()
                .map(|(bundle, topics, rate)| BundleLoad {
                    bundle: (*bundle).to_owned(),
                    topics: *topics,
                    msg_rate_in: *rate,
                    ..BundleLoad::default()
                })
                .collect(),
            topics: 0,
            msg_rate_in: bundles.iter().map(|b| b.2).sum(),
            cpu_percent: 0.0,
            timestamp_ms: 0,
        }
    }

    const B1: &str = "public/default/0x00000000_0x40000000";
    const B2: &str = "public/default/0x40000000_0x80000000";
    const B3: &str = "public/default/0x80000000_0xc0000000";
    const B4: &str = "public/default/0xc0000000_0xffffffff";

    #[test]
    fn a_new_broker_gets_the_busiest_bundle_of_the_fullest() {
        let config = LoadManagerConfig::default();
        let counts = HashMap::from([("public/default".to_owned(), 4)]);
        let reports = vec![
            report("a:8080", &[(B1, 1, 10.0), (B2, 1, 90.0), (B3, 1, 20.0), (B4, 1, 0.0)]),
            report("new:8080", &[]),
        ];
        let decisions = decide(&reports, &config, &counts, &|_| false);
        assert_eq!(
            decisions,
            [Decision {
                broker: "a:8080".to_owned(),
                command: LoadCommand { action: Action::Unload, bundle: B2.to_owned() }
            }]
        );
        let decisions = decide(&reports, &config, &counts, &|bundle| bundle == B2);
        assert_eq!(decisions[0].command.bundle, B3, "a bundle moved recently stays");
        let balanced = vec![report("a:8080", &[(B1, 1, 10.0), (B2, 1, 90.0)]), report("b:8080", &[(B3, 1, 0.0)])];
        assert!(decide(&balanced, &config, &counts, &|_| false).is_empty(), "one apart is balanced");
    }

    #[test]
    fn hot_bundles_split_once_per_namespace_per_round() {
        let config = LoadManagerConfig { bundle_max_topics: 10, bundle_max_msg_rate: 1000.0, ..Default::default() };
        let counts = HashMap::from([("public/default".to_owned(), 4)]);
        let reports = vec![report("a:8080", &[(B1, 11, 0.0), (B2, 1, 5000.0)]), report("b:8080", &[(B3, 2, 0.0)])];
        let decisions = decide(&reports, &config, &counts, &|_| false);
        assert_eq!(decisions.len(), 1, "{decisions:?}");
        assert_eq!(decisions[0].command, LoadCommand { action: Action::Split, bundle: B1.to_owned() });
        let full = HashMap::from([("public/default".to_owned(), bundles::MAX_BUNDLES)]);
        assert!(decide(&reports, &config, &full, &|_| false).is_empty(), "no split past the maximum");
        let off = LoadManagerConfig { auto_bundle_split: false, ..config };
        assert!(decide(&reports, &off, &counts, &|_| false).is_empty());
    }
}
