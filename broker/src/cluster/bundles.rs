//! Namespace bundles: a namespace's topics are grouped by the hash of their name into ranges
//! of the 32-bit hash space, as in Pulsar. A bundle is the unit of ownership: one broker
//! serves every topic of a bundle, and bundles move between brokers (unload, failover) and
//! split when hot.
//!
//! A namespace's layout is stored at `/magnetar/bundles/<tenant>/<namespace>` as Pulsar's
//! `BundlesData`: `{"boundaries": ["0x00000000", ..., "0xffffffff"], "numBundles": N}`. It is
//! created on first use with `default_number_of_namespace_bundles` equal ranges and only
//! changes by compare-and-set (a split replaces one range by its two halves).
//!
//! A bundle's name is `<tenant>/<namespace>/0x<lower>_0x<upper>` with 8 hex digits each, as
//! Pulsar writes it; every range is `[lower, upper)` except the last, which includes
//! `0xffffffff`.

use std::fmt;

use magnetar_meta::{Expected, MetaError, MetadataStore, Version};
use serde::{Deserialize, Serialize};

use crate::error::BrokerError;
use crate::topic_name::TopicName;

pub const BUNDLES_PATH: &str = "/magnetar/bundles";
/// Pulsar's `defaultNumberOfNamespaceBundles`.
pub const DEFAULT_BUNDLES: u32 = 4;
/// Most bundles a namespace may have (Pulsar's `loadBalancerNamespaceMaximumBundles`).
pub const MAX_BUNDLES: usize = 128;
/// One past the largest hash.
const HASH_END: u64 = 1 << 32;

/// The hash that places a topic in a bundle: Murmur3 (32-bit, seed 0) of its full name.
pub fn topic_hash(topic: &TopicName) -> u32 {
    magnetar_proto::hash::murmur3_32(topic.to_string().as_bytes(), 0)
}

/// A range of the hash space: `[lower, upper)`, `upper` at most 2^32.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HashRange {
    pub lower: u64,
    pub upper: u64,
}

impl HashRange {
    pub fn contains(&self, hash: u32) -> bool {
        (self.lower..self.upper).contains(&u64::from(hash))
    }

    /// Parses `0x00000000_0x40000000` (an upper end of `0xffffffff` means the end of the space).
    pub fn parse(text: &str) -> Option<HashRange> {
        let (lower, upper) = text.split_once('_')?;
        let lower = parse_boundary(lower)?;
        let upper = parse_boundary(upper)?;
        (lower < upper).then_some(HashRange { lower, upper })
    }
}

impl fmt::Display for HashRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}_{}", format_boundary(self.lower), format_boundary(self.upper))
    }
}

fn format_boundary(value: u64) -> String {
    format!("0x{:08x}", value.min(HASH_END - 1))
}

/// `0x...` to a boundary; `0xffffffff` is the end of the space (2^32).
fn parse_boundary(text: &str) -> Option<u64> {
    let digits = text.strip_prefix("0x").or_else(|| text.strip_prefix("0X"))?;
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let value = u64::from_str_radix(digits, 16).ok()?;
    Some(if value == HASH_END - 1 { HASH_END } else { value })
}

/// One bundle: a namespace and a range of it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Bundle {
    pub namespace: String,
    pub range: HashRange,
}

impl Bundle {
    /// Parses `<tenant>/<namespace>/0x..._0x...`.
    pub fn parse(text: &str) -> Option<Bundle> {
        let (namespace, range) = text.rsplit_once('/')?;
        if namespace.split('/').count() != 2 || namespace.split('/').any(str::is_empty) {
            return None;
        }
        Some(Bundle { namespace: namespace.to_owned(), range: HashRange::parse(range)? })
    }

    pub fn contains(&self, topic: &TopicName) -> bool {
        topic.namespace_name() == self.namespace && self.range.contains(topic_hash(topic))
    }
}

impl fmt::Display for Bundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.range)
    }
}

/// Pulsar's `BundlesData`, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct BundlesData {
    boundaries: Vec<String>,
    num_bundles: usize,
}

/// A namespace's bundle layout at one version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub namespace: String,
    /// Sorted, from 0 to 2^32; bundle i is `[boundaries[i], boundaries[i + 1])`.
    boundaries: Vec<u64>,
    pub version: Version,
}

impl Layout {
    /// `count` equal ranges (the last takes the remainder).
    fn even(namespace: &str, count: u32) -> Layout {
        let count = u64::from(count.clamp(1, MAX_BUNDLES as u32));
        let step = HASH_END / count;
        let mut boundaries: Vec<u64> = (0..count).map(|i| i * step).collect();
        boundaries.push(HASH_END);
        Layout { namespace: namespace.to_owned(), boundaries, version: 0 }
    }

    pub fn bundles(&self) -> Vec<Bundle> {
        self.boundaries
            .windows(2)
            .map(|pair| Bundle {
                namespace: self.namespace.clone(),
                range: HashRange { lower: pair[0], upper: pair[1] },
            })
            .collect()
    }

    /// The bundle holding `topic`.
    pub fn bundle_of(&self, topic: &TopicName) -> Bundle {
        let hash = u64::from(topic_hash(topic));
        // The last boundary <= hash starts the bundle (boundaries[0] is 0, so there is one).
        let index = self.boundaries.partition_point(|&b| b <= hash).saturating_sub(1);
        let index = index.min(self.boundaries.len() - 2);
        Bundle {
            namespace: self.namespace.clone(),
            range: HashRange { lower: self.boundaries[index], upper: self.boundaries[index + 1] },
        }
    }

    pub fn contains(&self, bundle: &Bundle) -> bool {
        bundle.namespace == self.namespace
            && self.boundaries.windows(2).any(|pair| pair[0] == bundle.range.lower && pair[1] == bundle.range.upper)
    }

    /// The layout with `bundle` split at its middle; an error if it is not one of this
    /// layout's bundles, too narrow, or the namespace has the most bundles allowed.
    pub fn split(&self, bundle: &Bundle) -> Result<Layout, BrokerError> {
        if !self.contains(bundle) {
            return Err(BrokerError::InvalidArgument {
                what: format!("bundle {bundle} is not a bundle of {} (split or never existed)", self.namespace),
            });
        }
        if self.boundaries.len() > MAX_BUNDLES {
            return Err(BrokerError::NotAllowed {
                what: format!("namespace {} already has the most bundles allowed ({MAX_BUNDLES})", self.namespace),
            });
        }
        let HashRange { lower, upper } = bundle.range;
        if upper - lower < 2 {
            return Err(BrokerError::NotAllowed { what: format!("bundle {bundle} is too narrow to split") });
        }
        let middle = lower + (upper - lower) / 2;
        let mut boundaries = self.boundaries.clone();
        let at = boundaries.partition_point(|&b| b <= lower);
        boundaries.insert(at, middle);
        Ok(Layout { namespace: self.namespace.clone(), boundaries, version: self.version })
    }

    /// The layout as Pulsar's `BundlesData` JSON (how it is stored and what the admin API
    /// answers).
    pub fn encode(&self) -> Vec<u8> {
        let data = BundlesData {
            boundaries: self.boundaries.iter().map(|&b| format_boundary(b)).collect(),
            num_bundles: self.boundaries.len() - 1,
        };
        serde_json::to_vec(&data).unwrap_or_default()
    }

    fn decode(namespace: &str, value: &[u8], version: Version) -> Result<Layout, BrokerError> {
        let corrupt = |reason: String| BrokerError::Corrupt { what: layout_path(namespace), reason };
        let data: BundlesData = serde_json::from_slice(value).map_err(|error| corrupt(error.to_string()))?;
        if data.boundaries.len() < 2 || data.boundaries.len() > MAX_BUNDLES + 1 {
            return Err(corrupt(format!("{} boundaries", data.boundaries.len())));
        }
        let boundaries = data
            .boundaries
            .iter()
            .map(|b| parse_boundary(b).ok_or_else(|| corrupt(format!("boundary {b:?} is not 0x<8 hex digits>"))))
            .collect::<Result<Vec<u64>, _>>()?;
        if boundaries[0] != 0 || boundaries[boundaries.len() - 1] != HASH_END {
            return Err(corrupt("boundaries must run from 0x00000000 to 0xffffffff".to_owned()));
        }
        if boundaries.windows(2).any(|pair| pair[0] >= pair[1]) {
            return Err(corrupt("boundaries must increase".to_owned()));
        }
        Ok(Layout { namespace: namespace.to_owned(), boundaries, version })
    }
}

pub fn layout_path(namespace: &str) -> String {
    format!("{BUNDLES_PATH}/{namespace}")
}

/// The namespace's layout, created with `default_count` even bundles if it has none yet.
pub async fn layout(store: &dyn MetadataStore, namespace: &str, default_count: u32) -> Result<Layout, BrokerError> {
    let path = layout_path(namespace);
    loop {
        if let Some(found) = store.get(&path).await? {
            return Layout::decode(namespace, &found.value, found.version);
        }
        let fresh = Layout::even(namespace, default_count);
        match store.put(&path, fresh.encode(), Expected::Absent).await {
            Ok(version) => return Ok(Layout { version, ..fresh }),
            Err(MetaError::BadVersion { .. }) => continue,
            Err(error) => return Err(error.into()),
        }
    }
}

/// Stores `layout` if the stored one is still at `layout.version`; `BadVersion` otherwise.
pub async fn store_layout(store: &dyn MetadataStore, layout: &Layout) -> Result<Version, BrokerError> {
    Ok(store.put(&layout_path(&layout.namespace), layout.encode(), Expected::Version(layout.version)).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topic(name: &str) -> TopicName {
        TopicName::parse(name).expect("topic name")
    }

    #[test]
    fn ranges_print_and_parse_as_pulsar_writes_them() {
        let layout = Layout::even("public/default", 4);
        let names: Vec<String> = layout.bundles().iter().map(ToString::to_string).collect();
        assert_eq!(
            names,
            [
                "public/default/0x00000000_0x40000000",
                "public/default/0x40000000_0x80000000",
                "public/default/0x80000000_0xc0000000",
                "public/default/0xc0000000_0xffffffff",
            ]
        );
        for name in &names {
            assert_eq!(Bundle::parse(name).expect("parses").to_string(), *name);
        }
        assert!(Bundle::parse("public/0x00000000_0x40000000").is_none(), "needs tenant and namespace");
        assert!(Bundle::parse("public/default/0x40000000_0x00000000").is_none(), "lower must be below upper");
        assert!(Bundle::parse("public/default/0x1_0x123456789").is_none(), "at most 8 digits");
    }

    #[test]
    fn every_topic_lands_in_exactly_one_bundle() {
        let layout = Layout::even("public/default", 4)
            .split(&Bundle::parse("public/default/0xc0000000_0xffffffff").expect("a bundle name"));
        let layout = layout.expect("split");
        assert_eq!(layout.bundles().len(), 5);
        for i in 0..2000 {
            let name = topic(&format!("persistent://public/default/t-{i}"));
            let bundle = layout.bundle_of(&name);
            assert!(bundle.contains(&name));
            assert_eq!(layout.bundles().iter().filter(|b| b.contains(&name)).count(), 1, "{name}");
        }
        let other = topic("persistent://public/other/t");
        assert!(!layout.bundles()[0].contains(&other), "another namespace's topic is in none");
    }

    #[test]
    fn split_halves_a_bundle_and_refuses_unknown_ones() {
        let layout = Layout::even("t/ns", 2);
        let first = layout.bundles()[0].clone();
        let split = layout.split(&first).expect("split");
        let names: Vec<String> = split.bundles().iter().map(|b| b.range.to_string()).collect();
        assert_eq!(names, ["0x00000000_0x40000000", "0x40000000_0x80000000", "0x80000000_0xffffffff"]);
        assert!(split.split(&first).is_err(), "the parent is gone after the split");
        let encoded = split.encode();
        assert_eq!(Layout::decode("t/ns", &encoded, 7).expect("decodes").bundles(), split.bundles());
    }

    #[test]
    fn corrupt_layouts_are_named_errors() {
        for bad in [
            r#"{"boundaries":["0x00000000"],"numBundles":0}"#,
            r#"{"boundaries":["0x00000010","0xffffffff"],"numBundles":1}"#,
            r#"{"boundaries":["0x00000000","0x80000000","0x40000000","0xffffffff"],"numBundles":3}"#,
            r#"{"boundaries":["zero","0xffffffff"],"numBundles":1}"#,
            "not json",
        ] {
            let error = Layout::decode("t/ns", bad.as_bytes(), 1).expect_err(bad);
            assert!(error.to_string().contains("/magnetar/bundles/t/ns"), "{error}");
        }
    }
}
