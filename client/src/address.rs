//! Where brokers are: the service URL a client starts from (`pulsar://host:port`, possibly
//! several comma-separated hosts; `pulsar+ssl://` for TLS) and the broker URLs that lookups
//! answer with.
//!
//! Whether a connection uses TLS is decided by the service URL, as in Pulsar's clients: a
//! client on `pulsar+ssl://` connects to every broker with TLS, at the TLS URL lookups give.
//!
//! Connections are pooled by [`BrokerAddress`], so a lookup that names a broker the client is
//! already connected to reuses that connection.

use std::fmt;

use crate::error::ClientError;

/// Pulsar's default port for the binary protocol without TLS.
pub const DEFAULT_PORT: u16 = 6650;

/// Pulsar's default port for the binary protocol over TLS.
pub const DEFAULT_TLS_PORT: u16 = 6651;

const SCHEME: &str = "pulsar://";
const TLS_SCHEME: &str = "pulsar+ssl://";

/// One broker's host and port, and whether the connection to it uses TLS.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BrokerAddress {
    host: String,
    port: u16,
    tls: bool,
}

impl BrokerAddress {
    /// A broker reached without TLS.
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        BrokerAddress { host: host.into(), port, tls: false }
    }

    /// The same broker, reached with TLS or without.
    pub fn with_tls(mut self, tls: bool) -> Self {
        self.tls = tls;
        self
    }

    /// Parses a broker URL as a lookup names it: `pulsar://host:port` or
    /// `pulsar+ssl://host:port`.
    pub fn parse_url(url: &str) -> Result<Self, ClientError> {
        let hosts = ServiceUrl::parse(url)?.hosts;
        match <[BrokerAddress; 1]>::try_from(hosts) {
            Ok([address]) => Ok(address),
            Err(_) => {
                Err(ClientError::InvalidUrl { url: url.to_owned(), reason: "a broker URL names exactly one host" })
            }
        }
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// True when the connection to this broker uses TLS.
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// The address in the form `TcpStream::connect` resolves.
    pub(crate) fn socket_target(&self) -> (&str, u16) {
        let host = self.host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(&self.host);
        (host, self.port)
    }
}

impl fmt::Display for BrokerAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { TLS_SCHEME } else { SCHEME };
        write!(f, "{scheme}{}:{}", self.host, self.port)
    }
}

/// The URL a client is given: one or more brokers (or a proxy) to send lookups to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceUrl {
    hosts: Vec<BrokerAddress>,
    tls: bool,
}

impl ServiceUrl {
    /// Parses `pulsar://host[:port][,host[:port]...][/]`, the port defaulting to 6650, or the
    /// same with `pulsar+ssl://` for TLS, the port defaulting to 6651.
    pub fn parse(url: &str) -> Result<Self, ClientError> {
        let invalid = |reason| ClientError::InvalidUrl { url: url.to_owned(), reason };
        let (rest, tls) = match (url.strip_prefix(SCHEME), url.strip_prefix(TLS_SCHEME)) {
            (Some(rest), _) => (rest, false),
            (None, Some(rest)) => (rest, true),
            (None, None) => return Err(invalid("expected a pulsar:// or pulsar+ssl:// URL")),
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        let mut hosts = Vec::new();
        for authority in rest.split(',') {
            let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
                // An IPv6 literal: [::1]:6650
                let (inside, after) = bracketed.split_once(']').ok_or_else(|| invalid("unclosed [ in an IPv6 host"))?;
                let port = match after {
                    "" => None,
                    _ => Some(after.strip_prefix(':').ok_or_else(|| invalid("expected :port after an IPv6 host"))?),
                };
                (format!("[{inside}]"), port)
            } else {
                match authority.rsplit_once(':') {
                    Some((host, port)) => (host.to_owned(), Some(port)),
                    None => (authority.to_owned(), None),
                }
            };
            if host.is_empty() || host == "[]" || host.contains(['/', '@', '?', '#']) {
                return Err(invalid("expected host[:port]"));
            }
            let port = match port {
                None if tls => DEFAULT_TLS_PORT,
                None => DEFAULT_PORT,
                Some(port) => port
                    .parse()
                    .ok()
                    .filter(|&p| p != 0)
                    .ok_or_else(|| invalid("the port must be a number from 1 to 65535"))?,
            };
            hosts.push(BrokerAddress { host, port, tls });
        }
        Ok(ServiceUrl { hosts, tls })
    }

    /// The hosts, in the order given.
    pub fn hosts(&self) -> &[BrokerAddress] {
        &self.hosts
    }

    /// True for a `pulsar+ssl://` URL: every connection of the client uses TLS.
    pub fn uses_tls(&self) -> bool {
        self.tls
    }
}

impl fmt::Display for ServiceUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.tls { TLS_SCHEME } else { SCHEME })?;
        for (index, host) in self.hosts.iter().enumerate() {
            if index > 0 {
                f.write_str(",")?;
            }
            write!(f, "{}:{}", host.host, host.port)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_defaults_to_6650() {
        let url = ServiceUrl::parse("pulsar://localhost").expect("valid");
        assert_eq!(url.hosts(), [BrokerAddress::new("localhost", 6650)]);
    }

    #[test]
    fn several_hosts_and_ipv6_parse() {
        let url = ServiceUrl::parse("pulsar://a:1,b,[::1]:7/").expect("valid");
        assert_eq!(
            url.hosts(),
            [BrokerAddress::new("a", 1), BrokerAddress::new("b", 6650), BrokerAddress::new("[::1]", 7)]
        );
        assert_eq!(url.hosts()[2].socket_target(), ("::1", 7));
        assert_eq!(url.to_string(), "pulsar://a:1,b:6650,[::1]:7");
    }

    #[test]
    fn broker_url_round_trips() {
        let address = BrokerAddress::parse_url("pulsar://broker-2:6651").expect("valid");
        assert_eq!(address.to_string(), "pulsar://broker-2:6651");
    }

    #[test]
    fn malformed_urls_are_refused() {
        for url in [
            "localhost:6650",
            "http://a:1",
            "pulsar://",
            "pulsar://a:0",
            "pulsar://a:x",
            "pulsar://a:70000",
            "pulsar://a/b",
            "pulsar://a,,b",
        ] {
            assert!(matches!(ServiceUrl::parse(url), Err(ClientError::InvalidUrl { .. })), "{url:?} should be refused");
        }
        assert!(BrokerAddress::parse_url("pulsar://a,b").is_err());
        assert!(BrokerAddress::parse_url("pulsar+ssl://").is_err());
        assert!(ServiceUrl::parse("pulsar+tls://a").is_err());
    }

    #[test]
    fn tls_urls_default_to_port_6651_and_keep_their_scheme() {
        let url = ServiceUrl::parse("pulsar+ssl://a,b:7000").expect("valid");
        assert!(url.uses_tls());
        assert_eq!(
            url.hosts(),
            [BrokerAddress::new("a", 6651).with_tls(true), BrokerAddress::new("b", 7000).with_tls(true)]
        );
        assert_eq!(url.to_string(), "pulsar+ssl://a:6651,b:7000");
        let broker = BrokerAddress::parse_url("pulsar+ssl://broker-2:6651").expect("valid");
        assert!(broker.is_tls());
        assert_eq!(broker.to_string(), "pulsar+ssl://broker-2:6651");
        assert!(!ServiceUrl::parse("pulsar://a").expect("valid").uses_tls());
    }
}
