//! Topic names as Pulsar spells them: `persistent://tenant/namespace/topic`. A short name
//! `my-topic` means `persistent://public/default/my-topic`, and `tenant/ns/topic` means
//! `persistent://tenant/ns/topic`. Partitions are `<topic>-partition-<i>`.
//!
//! Shared by broker and client: both check names the same way.

use std::fmt;
use std::str::FromStr;

/// Longest topic name accepted, in bytes.
pub const MAX_TOPIC_NAME_LEN: usize = 1024;
/// What separates a partitioned topic's name from a partition's index.
const PARTITION_SUFFIX: &str = "-partition-";

/// The name of partition `index` of `topic`: `<topic>-partition-<index>`, as Pulsar names it.
pub fn partition_topic_name(topic: &TopicName, index: u32) -> String {
    format!("{topic}{PARTITION_SUFFIX}{index}")
}

/// The partition index if `name` (a full or local topic name) names a partition
/// (`<topic>-partition-<i>`); none for any other topic.
pub fn partition_index(name: &str) -> Option<u32> {
    let (_, index) = name.rsplit_once(PARTITION_SUFFIX)?;
    index.parse().ok()
}

/// Why a topic name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid topic name {name:?}: {reason}")]
pub struct TopicNameError {
    pub name: String,
    pub reason: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicName {
    pub persistent: bool,
    pub tenant: String,
    pub namespace: String,
    pub local_name: String,
}

fn valid_segment(segment: &str) -> bool {
    !segment.is_empty()
        && segment.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '=' | ':' | '.' | '%'))
}

impl TopicName {
    pub fn parse(name: &str) -> Result<Self, TopicNameError> {
        let invalid = |reason| TopicNameError { name: name.to_owned(), reason };
        if name.is_empty() {
            return Err(invalid("empty"));
        }
        if name.len() > MAX_TOPIC_NAME_LEN {
            return Err(invalid("longer than 1024 bytes"));
        }
        let (persistent, rest) = if let Some(rest) = name.strip_prefix("persistent://") {
            (true, rest)
        } else if let Some(rest) = name.strip_prefix("non-persistent://") {
            (false, rest)
        } else if name.contains("://") {
            return Err(invalid("domain must be persistent:// or non-persistent://"));
        } else if !name.contains('/') {
            return TopicName::parse(&format!("persistent://public/default/{name}"));
        } else {
            (true, name)
        };
        let mut parts = rest.splitn(3, '/');
        let (Some(tenant), Some(namespace), Some(local_name)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(invalid("expected tenant/namespace/topic"));
        };
        if !valid_segment(tenant) {
            return Err(invalid("tenant must be non-empty and use only letters, digits and -_=:.%"));
        }
        if !valid_segment(namespace) {
            return Err(invalid("namespace must be non-empty and use only letters, digits and -_=:.%"));
        }
        if local_name.is_empty() || local_name.contains('/') {
            return Err(invalid("topic must be non-empty and hold no '/'"));
        }
        if local_name.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(invalid("topic must not contain whitespace or control characters"));
        }
        Ok(TopicName {
            persistent,
            tenant: tenant.to_owned(),
            namespace: namespace.to_owned(),
            local_name: local_name.to_owned(),
        })
    }

    pub fn is_persistent(&self) -> bool {
        self.persistent
    }

    /// The partitioned topic this one is partition `i` of (`<topic>-partition-<i>`), and `i`.
    pub fn partition_of(&self) -> Option<(TopicName, u32)> {
        let index = partition_index(&self.local_name)?;
        let (base, _) = self.local_name.rsplit_once(PARTITION_SUFFIX)?;
        let topic = TopicName { local_name: base.to_owned(), ..self.clone() };
        Some((topic, index))
    }

    pub fn tenant(&self) -> &str {
        &self.tenant
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn local_name(&self) -> &str {
        &self.local_name
    }

    /// `tenant/namespace`.
    pub fn namespace_name(&self) -> String {
        format!("{}/{}", self.tenant, self.namespace)
    }

    /// Name of the managed ledger (and the path segment in metadata) for this topic.
    pub fn persistence_name(&self) -> String {
        format!("{}/{}/persistent/{}", self.tenant, self.namespace, self.local_name)
    }
}

impl fmt::Display for TopicName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let domain = if self.persistent { "persistent" } else { "non-persistent" };
        write!(f, "{domain}://{}/{}/{}", self.tenant, self.namespace, self.local_name)
    }
}

impl FromStr for TopicName {
    type Err = TopicNameError;

    fn from_str(name: &str) -> Result<Self, TopicNameError> {
        TopicName::parse(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_expand_to_public_default() {
        let name = TopicName::parse("my-topic").expect("valid");
        assert_eq!(name.to_string(), "persistent://public/default/my-topic");
        assert_eq!(TopicName::parse("t/ns/x").expect("valid").to_string(), "persistent://t/ns/x");
        let non_persistent = TopicName::parse("non-persistent://a/b/c").expect("valid");
        assert!(!non_persistent.is_persistent());
        assert_eq!(non_persistent.to_string(), "non-persistent://a/b/c");
    }

    #[test]
    fn partition_names_follow_pulsar() {
        let topic = TopicName::parse("persistent://t/n/orders").expect("valid name");
        let partition = partition_topic_name(&topic, 3);
        assert_eq!(partition, "persistent://t/n/orders-partition-3");
        let parsed = TopicName::parse(&partition).expect("valid partition name");
        assert_eq!(parsed.partition_of(), Some((topic.clone(), 3)));
        assert_eq!(topic.partition_of(), None);
        assert_eq!(partition_index(&partition), Some(3));
        assert_eq!(partition_index("orders-partition-3"), Some(3), "a local name works too");
        assert_eq!(partition_index(&topic.to_string()), None);
        assert_eq!(partition_index("persistent://t/n/orders-partition-x"), None);
        assert_eq!(partition_index("persistent://t/n-partition-1/orders"), None, "only the topic's own name counts");
    }

    #[test]
    fn invalid_names_are_refused() {
        for bad in [
            "",
            "persistent://only-two/parts",
            "persistent://public/default/has space",
            "persistent://public//topic",
            "persistent://public/default/",
            "persistent://public/default/a/b",
            "http://public/default/x",
            "persistent://pub lic/default/x",
            "persistent://topic",
            "a/b",
            "a//c",
            "a/b/c/d",
        ] {
            assert!(TopicName::parse(bad).is_err(), "{bad:?} should be invalid");
        }
        assert!(TopicName::parse(&"x".repeat(2000)).is_err());
    }
}
