//! Which broker gets an unowned bundle: the least loaded by the load reports. Pure (no I/O,
//! no state): [`super::ownership`] reads the reports, keeps the count of its recent
//! assignments and calls [`choose`]; tests drive it with hand-made reports.

use std::collections::HashMap;

use crate::cluster::broker_info::BrokerInfo;
use crate::cluster::load_report::LoadReport;
use crate::error::BrokerError;

/// The broker for an unowned bundle: the least loaded of `reports` (fewest bundles, counting
/// the `recent` assignments made since the reports were read, then lowest publish rate, then
/// name). `me` when there are no reports yet, unless `me` is `draining`: a draining broker
/// is never chosen, and with no other broker the bundle is not ready.
pub fn choose(
    reports: &[LoadReport],
    recent: &HashMap<String, u32>,
    me: &BrokerInfo,
    draining: bool,
) -> Result<BrokerInfo, BrokerError> {
    let candidates: Vec<&LoadReport> =
        reports.iter().filter(|report| !(draining && report.info.broker == me.broker)).collect();
    match pick(&candidates, recent) {
        Some(chosen) => Ok(chosen.info.clone()),
        None if draining => Err(BrokerError::ServiceUnitNotReady {
            what: "this broker is shutting down and no other broker is available".to_owned(),
        }),
        None => Ok(me.clone()),
    }
}

/// The report of the least loaded broker.
fn pick<'a>(reports: &[&'a LoadReport], recent: &HashMap<String, u32>) -> Option<&'a LoadReport> {
    reports.iter().copied().min_by(|a, b| {
        let load =
            |r: &LoadReport| r.bundles.len() as u64 + u64::from(recent.get(&r.info.broker).copied().unwrap_or(0));
        load(a)
            .cmp(&load(b))
            .then(a.msg_rate_in.total_cmp(&b.msg_rate_in))
            .then_with(|| a.info.broker.cmp(&b.info.broker))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::load_report::BundleLoad;

    fn info(broker: &str) -> BrokerInfo {
        BrokerInfo {
            broker: broker.to_owned(),
            native_url: format!("pulsar://{broker}"),
            http_url: format!("http://{broker}"),
            native_url_tls: None,
            http_url_tls: None,
            ..Default::default()
        }
    }

    fn report(broker: &str, bundles: &[(&str, f64)]) -> LoadReport {
        LoadReport {
            info: info(broker),
            bundles: bundles
                .iter()
                .map(|(bundle, rate)| BundleLoad {
                    bundle: (*bundle).to_owned(),
                    topics: 1,
                    msg_rate_in: *rate,
                    ..BundleLoad::default()
                })
                .collect(),
            topics: 0,
            msg_rate_in: bundles.iter().map(|b| b.1).sum(),
            cpu_percent: 0.0,
            timestamp_ms: 0,
        }
    }

    const B1: &str = "public/default/0x00000000_0x40000000";
    const B2: &str = "public/default/0x40000000_0x80000000";
    const B3: &str = "public/default/0x80000000_0xc0000000";

    fn chosen(reports: &[LoadReport], recent: &HashMap<String, u32>) -> String {
        choose(reports, recent, &info("me:8080"), false).expect("a broker").broker
    }

    #[test]
    fn lookups_pick_the_broker_with_fewest_bundles_then_lowest_rate() {
        let reports = vec![report("a:8080", &[(B1, 10.0), (B2, 0.0)]), report("b:8080", &[(B3, 500.0)])];
        assert_eq!(chosen(&reports, &HashMap::new()), "b:8080");
        let recent = HashMap::from([("b:8080".to_owned(), 2)]);
        assert_eq!(chosen(&reports, &recent), "a:8080", "recent assignments count");
        let even = vec![report("a:8080", &[(B1, 10.0)]), report("b:8080", &[(B3, 5.0)])];
        assert_eq!(chosen(&even, &HashMap::new()), "b:8080");
    }

    #[test]
    fn without_reports_this_broker_takes_the_bundle_unless_draining() {
        assert_eq!(chosen(&[], &HashMap::new()), "me:8080");
        let error = choose(&[], &HashMap::new(), &info("me:8080"), true).expect_err("nobody to take it");
        assert!(matches!(error, BrokerError::ServiceUnitNotReady { .. }), "{error:?}");
    }

    #[test]
    fn a_draining_broker_sends_bundles_elsewhere_even_when_least_loaded() {
        let reports = vec![report("me:8080", &[]), report("b:8080", &[(B1, 0.0), (B2, 0.0)])];
        assert_eq!(chosen(&reports, &HashMap::new()), "me:8080");
        let elsewhere = choose(&reports, &HashMap::new(), &info("me:8080"), true).expect("another broker");
        assert_eq!(elsewhere.broker, "b:8080");
        let alone = vec![report("me:8080", &[])];
        assert!(choose(&alone, &HashMap::new(), &info("me:8080"), true).is_err());
    }
}
