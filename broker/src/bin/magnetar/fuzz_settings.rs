//! Fuzzed broker settings files, TOML and Pulsar's `.conf`, through the same parse-and-check
//! path `--config` takes ([`BrokerSettings::parse`]): mutated real files and generated ones
//! with values of every kind for every key. Each is accepted or refused with an error that
//! names the key (a malformed `.conf` value also its line), never a panic.
//!
//! `MAGNETAR_FUZZ_CASES=N cargo test --workspace --bin magnetar fuzz` runs N cases each.

#[path = "../../../../proto/tests/fuzz_support/mod.rs"]
mod fuzz_support;

use fuzz_support::{config, interesting_u32, mutated, toml_text};
use proptest::prelude::*;

use crate::pulsar_conf::{Kind, KEYS};
use crate::settings::BrokerSettings;

const DEPLOY_BROKER_TOML: &str = include_str!("../../../../deploy/config/broker.toml");

/// The TOML text of a value of `kind`, right or (`wrong`) of another kind.
fn toml_value(kind: Kind, wrong: bool) -> BoxedStrategy<String> {
    let text = prop_oneof![
        Just("\"\"".to_owned()),
        "[a-zA-Z0-9:/._,-]{1,30}".prop_map(|s| toml::Value::String(s).to_string()),
        any::<String>().prop_map(|s| toml::Value::String(s).to_string()),
    ];
    let integer = prop_oneof![
        interesting_u32().prop_map(|v| v.to_string()),
        interesting_u32().prop_map(|v| format!("-{v}")),
        Just(i64::MAX.to_string()),
        Just(i64::MIN.to_string()),
        any::<i64>().prop_map(|v| v.to_string()),
    ];
    let float = prop_oneof![
        any::<f64>().prop_map(|v| toml::Value::Float(v).to_string()),
        Just("nan".to_owned()),
        Just("inf".to_owned()),
        Just("-0.0".to_owned()),
    ];
    let boolean = any::<bool>().prop_map(|b| b.to_string());
    match (kind, wrong) {
        (Kind::Text, false) => text.boxed(),
        (Kind::Integer, false) => integer.boxed(),
        (Kind::Float, false) => prop_oneof![float, integer].boxed(),
        (Kind::Bool, false) => boolean.boxed(),
        (Kind::Text, true) => prop_oneof![integer, boolean].boxed(),
        (Kind::Integer, true) => prop_oneof![text, float, boolean].boxed(),
        (Kind::Float, true) => prop_oneof![text, boolean].boxed(),
        (Kind::Bool, true) => prop_oneof![text, integer].boxed(),
    }
}

/// The text of a `.conf` value of `kind`: right, or anything at all.
fn conf_value(kind: Kind) -> BoxedStrategy<String> {
    let anything =
        prop_oneof![Just(String::new()), "[ -~]{0,20}", any::<String>().prop_map(|s| s.replace(['\n', '\r'], " ")),];
    let right = match kind {
        Kind::Text => "[a-zA-Z0-9:/._,-]{0,30}".boxed(),
        Kind::Integer => prop_oneof![
            interesting_u32().prop_map(|v| v.to_string()),
            any::<i64>().prop_map(|v| v.to_string()),
            Just("99999999999999999999".to_owned()),
        ]
        .boxed(),
        Kind::Float => prop_oneof![any::<f64>().prop_map(|v| v.to_string()), Just("NaN".to_owned())].boxed(),
        Kind::Bool => prop_oneof![Just("true".to_owned()), Just("false".to_owned())].boxed(),
    };
    prop_oneof![3 => right, 1 => anything].boxed()
}

/// Settings with values of the right kind for a random subset of the keys.
fn toml_entries() -> impl Strategy<Value = Vec<(&'static str, String)>> {
    prop::sample::subsequence(KEYS.to_vec(), 0..12).prop_flat_map(|keys| {
        keys.into_iter()
            .map(|(_, setting, kind)| toml_value(kind, false).prop_map(move |value| (setting, value)))
            .collect::<Vec<_>>()
    })
}

fn conf_entries() -> impl Strategy<Value = Vec<(&'static str, &'static str, String)>> {
    prop::sample::subsequence(KEYS.to_vec(), 0..12).prop_flat_map(|keys| {
        keys.into_iter()
            .map(|(pulsar, setting, kind)| conf_value(kind).prop_map(move |value| (pulsar, setting, value)))
            .collect::<Vec<_>>()
    })
}

fn conf_text(entries: &[(&str, &str, String)]) -> String {
    entries.iter().map(|(pulsar, _, value)| format!("{pulsar}={value}\n")).collect()
}

/// The Pulsar spelling of a setting.
fn pulsar_name(setting: &str) -> &'static str {
    KEYS.iter().find(|(_, name, _)| *name == setting).map_or("", |(pulsar, _, _)| pulsar)
}

/// The error with its causes, as `magnetar` prints it.
fn refusal(result: anyhow::Result<(BrokerSettings, Vec<String>)>) -> Option<String> {
    result.err().map(|error| format!("{error:#}"))
}

/// Whether `reason` names one of the settings (its snake-case name, the last part of it, or
/// its Pulsar spelling).
fn names_one_of<'a>(reason: &str, names: impl IntoIterator<Item = &'a str>) -> bool {
    names
        .into_iter()
        .filter(|name| !name.is_empty())
        .any(|name| reason.contains(name) || reason.contains(name.rsplit('.').next().unwrap_or(name)))
}

fn generated_conf_seed() -> Vec<u8> {
    let mut text = String::from("# standalone.conf\nclusterName=standalone\nbrokerServicePort=6650\n");
    text.push_str("webServicePort: 8080\nmanagedLedgerDefaultEnsembleSize 1\nadvertisedAddress=\n");
    text.push_str("backlogQuotaDefaultLimitGB=0.5\ndefaultRetentionTimeInMinutes=-1\nzookeeperServers=zk:2181\n");
    text.push_str("allowAutoTopicCreationType=partitioned\ndefaultNumPartitions=2\nsuperUserRoles=admin,ops\n");
    text.push_str("messageExpiryCheckIntervalInMinutes=5\nbrokerDeleteInactiveTopicsEnabled=true\\\n\n");
    text.into_bytes()
}

proptest! {
    #![proptest_config(config(1000, 1))]

    /// Mutated real TOML files.
    #[test]
    fn fuzz_broker_settings_toml_mutated(
        text in mutated(vec![DEPLOY_BROKER_TOML.as_bytes().to_vec(), b"[managed_ledger]\nmanaged_ledger_max_entries_per_ledger = 1000\n".to_vec()]),
    ) {
        let text = String::from_utf8_lossy(&text);
        if let Some(reason) = refusal(BrokerSettings::parse(&text, false)) {
            prop_assert!(!reason.trim().is_empty());
        }
    }

    /// Generated TOML files, values of the right kind: accepted, or refused naming a key set.
    #[test]
    fn fuzz_broker_settings_toml_generated(entries in toml_entries()) {
        if let Some(reason) = refusal(BrokerSettings::parse(&toml_text(&entries), false)) {
            // Checks across keys name them as Pulsar does (authenticationEnabled, ...).
            prop_assert!(names_one_of(&reason, entries.iter().flat_map(|(key, _)| [*key, pulsar_name(key)])), "names no key: {reason}");
        }
    }

    /// One value of the wrong kind among good ones: refused naming its key.
    #[test]
    fn fuzz_broker_settings_toml_wrong_kind_is_named(
        entries in toml_entries(),
        (setting, value) in prop::sample::select(KEYS.to_vec())
            .prop_flat_map(|(_, setting, kind)| toml_value(kind, true).prop_map(move |value| (setting, value))),
    ) {
        let mut entries: Vec<(&str, String)> = entries.into_iter().filter(|(key, _)| *key != setting).collect();
        entries.push((setting, value));
        let reason = refusal(BrokerSettings::parse(&toml_text(&entries), false));
        // A bool or number where a name list (text or array) goes is refused; text where a number goes too.
        let reason = reason.ok_or_else(|| TestCaseError::fail(format!("{setting} of the wrong kind was taken")))?;
        // The first key refused is named: this one, or another whose value is out of range.
        prop_assert!(names_one_of(&reason, entries.iter().map(|(key, _)| *key)), "names no key: {}", reason);
    }

    /// Mutated Pulsar properties files.
    #[test]
    fn fuzz_broker_settings_conf_mutated(text in mutated(vec![generated_conf_seed()])) {
        let text = String::from_utf8_lossy(&text);
        if let Some(reason) = refusal(BrokerSettings::parse(&text, true)) {
            prop_assert!(!reason.trim().is_empty());
        }
    }

    /// Generated Pulsar properties files, any value for each key: accepted, or refused naming
    /// a key set (Pulsar's spelling or Magnetar's).
    #[test]
    fn fuzz_broker_settings_conf_generated(entries in conf_entries()) {
        let text = conf_text(&entries);
        if let Some(reason) = refusal(BrokerSettings::parse(&text, true)) {
            let names = entries.iter().flat_map(|(pulsar, setting, _)| [*pulsar, *setting]);
            prop_assert!(names_one_of(&reason, names), "names no key: {reason}\n{text}");
        }
    }
}

/// The seeds are valid files: the properties start from what a user writes.
#[test]
fn fuzz_broker_settings_seeds_are_valid() {
    BrokerSettings::parse(DEPLOY_BROKER_TOML, false).expect("deploy/config/broker.toml");
    let seed = generated_conf_seed();
    let (_, ignored) = BrokerSettings::parse(&String::from_utf8_lossy(&seed), true).expect("the .conf seed");
    assert_eq!(ignored, ["zookeeperServers"]);
}

/// Found by `fuzz_broker_settings_toml_generated`: a huge
/// `message_expiry_check_interval_in_minutes` overflowed turning minutes into seconds (a
/// panic in debug builds, a wrong interval in release); now refused naming the key, in both
/// spellings of the file.
#[test]
fn fuzz_regression_huge_minutes_are_refused_not_overflowed() {
    let reason =
        refusal(BrokerSettings::parse("message_expiry_check_interval_in_minutes = 9223372036854775807\n", false))
            .expect("refused");
    assert!(reason.contains("message_expiry_check_interval_in_minutes") && reason.contains("too large"), "{reason}");
    let reason = refusal(BrokerSettings::parse("messageExpiryCheckIntervalInMinutes=9223372036854775807\n", true))
        .expect("refused");
    assert!(reason.contains("message_expiry_check_interval_in_minutes"), "{reason}");
    let (settings, _) = BrokerSettings::parse("message_expiry_check_interval_in_minutes = 307445734561825860\n", false)
        .expect("the largest that fits");
    assert_eq!(
        settings.policy_defaults().expect("valid").message_expiry_check_interval,
        std::time::Duration::from_secs(307445734561825860 * 60)
    );
}

/// Found by `fuzz_broker_settings_conf_generated`: a missing CA file for the bookie client
/// was reported as `bookkeeper_client: tls_trust_certs_file_path ...`, a name no broker file
/// has; the bookie client's settings are now named as the broker's file spells them.
#[test]
fn fuzz_regression_bookie_client_errors_name_the_broker_key() {
    let reason =
        refusal(BrokerSettings::parse("bookkeeper_tls_trust_certs_file_path = \"/nonexistent/ca.pem\"\n", false))
            .expect("refused");
    assert!(reason.contains("bookkeeper_tls_trust_certs_file_path /nonexistent/ca.pem"), "{reason}");
    let reason = refusal(BrokerSettings::parse("bookkeeper_client_authentication_plugin = \"token\"\n", false))
        .expect("refused");
    assert!(reason.starts_with("bookkeeper_client_authentication_plugin"), "{reason}");
}
