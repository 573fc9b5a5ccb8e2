//! A broker's identity as the cluster sees it: what lookups answer and how load reports and
//! ownership keys name it. A leaf shared by [`super::ownership`] and [`super::load_report`],
//! so that neither has to import the other for it. Plain data, no state.

use serde::{Deserialize, Serialize};

/// Who a broker is: what lookups answer, and how other brokers and tools name it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
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
    /// Its advertised listeners (Pulsar's `advertisedListeners`): lookups that name a
    /// listener answer with that listener's URLs.
    #[serde(default, skip_serializing_if = "AdvertisedListeners::is_empty")]
    pub advertised_listeners: AdvertisedListeners,
}

impl BrokerInfo {
    /// The Pulsar URLs a lookup naming `listener` answers with (None: no listener name, the
    /// broker's own URLs); an unknown listener is an error, as Pulsar refuses it.
    pub fn urls_for_listener(&self, listener: Option<&str>) -> Result<(String, Option<String>), String> {
        let Some(name) = listener.filter(|name| !name.is_empty()) else {
            return Ok((self.native_url.clone(), self.native_url_tls.clone()));
        };
        let urls = self
            .advertised_listeners
            .get(name)
            .ok_or_else(|| format!("the broker {} does not have the listener `{name}`", self.broker))?;
        let plain = urls.broker_service_url.clone().or_else(|| urls.broker_service_url_tls.clone());
        Ok((plain.unwrap_or_default(), urls.broker_service_url_tls.clone()))
    }
}

/// The Pulsar URLs of one advertised listener (Pulsar's `advertisedListeners`): a client
/// that looks up a topic naming this listener is sent to these.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListenerUrls {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broker_service_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broker_service_url_tls: Option<String>,
}

/// Advertised listeners by name.
pub type AdvertisedListeners = std::collections::BTreeMap<String, ListenerUrls>;

/// Parses Pulsar's `advertisedListeners` (`internal:pulsar://10.0.0.1:6650,
/// internal:pulsar+ssl://10.0.0.1:6651,external:pulsar://broker.example.com:6650`): each
/// listener has at most one `pulsar://` and one `pulsar+ssl://` URL, and at least one.
pub fn parse_advertised_listeners(text: &str) -> Result<AdvertisedListeners, String> {
    let mut listeners = AdvertisedListeners::new();
    for item in text.split(',').map(str::trim).filter(|item| !item.is_empty()) {
        let Some((name, url)) = item.split_once(':') else {
            return Err(format!("`{item}`: expected <listener name>:<pulsar URL>"));
        };
        let (name, url) = (name.trim(), url.trim());
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.') {
            return Err(format!("`{item}`: a listener name is letters, digits, `-`, `_` or `.`"));
        }
        let urls = listeners.entry(name.to_owned()).or_default();
        let slot = if url.starts_with("pulsar://") {
            &mut urls.broker_service_url
        } else if url.starts_with("pulsar+ssl://") {
            &mut urls.broker_service_url_tls
        } else {
            return Err(format!("`{item}`: the URL must start with pulsar:// or pulsar+ssl://"));
        };
        let host_port = url.split_once("://").map_or("", |(_, rest)| rest);
        let valid = host_port
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|port| port > 0));
        if !valid {
            return Err(format!("`{item}`: expected a URL with a host and a port"));
        }
        if slot.replace(url.to_owned()).is_some() {
            return Err(format!("listener `{name}` has more than one {} URL", &url[..url.find("://").unwrap_or(0)]));
        }
    }
    Ok(listeners)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advertised_listeners_are_read_as_pulsar_writes_them() {
        let listeners = parse_advertised_listeners(
            "internal:pulsar://10.0.0.1:6650, internal:pulsar+ssl://10.0.0.1:6651,external:pulsar://broker.example.com:16650",
        )
        .unwrap();
        assert_eq!(listeners.len(), 2);
        assert_eq!(listeners["internal"].broker_service_url.as_deref(), Some("pulsar://10.0.0.1:6650"));
        assert_eq!(listeners["internal"].broker_service_url_tls.as_deref(), Some("pulsar+ssl://10.0.0.1:6651"));
        assert_eq!(listeners["external"].broker_service_url.as_deref(), Some("pulsar://broker.example.com:16650"));
        assert!(parse_advertised_listeners("").unwrap().is_empty());
    }

    #[test]
    fn bad_advertised_listeners_say_what_is_wrong() {
        for (text, expected) in [
            ("internal", "expected <listener name>:<pulsar URL>"),
            ("internal:http://a:1", "must start with pulsar://"),
            ("internal:pulsar://a:1,internal:pulsar://b:2", "more than one pulsar URL"),
            ("internal:pulsar://a", "a host and a port"),
            ("in ternal:pulsar://a:1", "a listener name is"),
        ] {
            let error = parse_advertised_listeners(text).unwrap_err();
            assert!(error.contains(expected), "{text}: {error}");
        }
    }
}
