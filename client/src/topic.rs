//! Topic names as Pulsar writes them: `persistent://tenant/namespace/topic`.
//!
//! A short name `my-topic` means `persistent://public/default/my-topic`, and
//! `tenant/namespace/topic` means the persistent topic in that namespace. Names are checked
//! once, when a producer or consumer is created.

use std::fmt;
use std::str::FromStr;

use crate::error::ClientError;

const DEFAULT_TENANT: &str = "public";
const DEFAULT_NAMESPACE: &str = "default";

/// A complete, validated topic name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicName {
    persistent: bool,
    tenant: String,
    namespace: String,
    local_name: String,
}

impl TopicName {
    pub fn parse(topic: &str) -> Result<Self, ClientError> {
        let invalid = |reason| ClientError::InvalidTopic { topic: topic.to_owned(), reason };
        let (persistent, rest) = match topic.split_once("://") {
            Some(("persistent", rest)) => (true, rest),
            Some(("non-persistent", rest)) => (false, rest),
            Some(_) => return Err(invalid("the domain must be persistent or non-persistent")),
            None => (true, topic),
        };
        let parts: Vec<&str> = rest.split('/').collect();
        let (tenant, namespace, local_name) = match parts[..] {
            [local_name] if !topic.contains("://") => (DEFAULT_TENANT, DEFAULT_NAMESPACE, local_name),
            [tenant, namespace, local_name] => (tenant, namespace, local_name),
            [_, _, _, _] => {
                return Err(invalid("names with a cluster part (tenant/cluster/namespace/topic) are not supported"))
            }
            _ => return Err(invalid("expected topic, tenant/namespace/topic or domain://tenant/namespace/topic")),
        };
        if [tenant, namespace, local_name].iter().any(|part| part.is_empty()) {
            return Err(invalid("tenant, namespace and topic must not be empty"));
        }
        if topic.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(invalid("whitespace and control characters are not allowed"));
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

    pub fn tenant(&self) -> &str {
        &self.tenant
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn local_name(&self) -> &str {
        &self.local_name
    }
}

impl fmt::Display for TopicName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let domain = if self.persistent { "persistent" } else { "non-persistent" };
        write!(f, "{domain}://{}/{}/{}", self.tenant, self.namespace, self.local_name)
    }
}

impl FromStr for TopicName {
    type Err = ClientError;

    fn from_str(topic: &str) -> Result<Self, ClientError> {
        TopicName::parse(topic)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full(topic: &str) -> String {
        TopicName::parse(topic).expect("valid").to_string()
    }

    #[test]
    fn short_name_is_in_public_default() {
        assert_eq!(full("my-topic"), "persistent://public/default/my-topic");
    }

    #[test]
    fn namespace_relative_name_is_persistent() {
        assert_eq!(full("acme/orders/created"), "persistent://acme/orders/created");
    }

    #[test]
    fn complete_names_are_kept() {
        assert_eq!(full("persistent://a/b/c"), "persistent://a/b/c");
        assert_eq!(full("non-persistent://a/b/c"), "non-persistent://a/b/c");
        assert!(!TopicName::parse("non-persistent://a/b/c").expect("valid").is_persistent());
    }

    #[test]
    fn malformed_names_are_refused() {
        for topic in
            ["", "a/b", "http://a/b/c", "persistent://a/b", "persistent://topic", "a//c", "a/b/c/d", "my topic"]
        {
            assert!(
                matches!(TopicName::parse(topic), Err(ClientError::InvalidTopic { .. })),
                "{topic:?} should be refused"
            );
        }
    }
}
