//! Unique id allocation (ledger ids and the like) from a counter key in any [`MetadataStore`].
//!
//! The counter is stored as decimal ASCII (readable with `etcdctl get`) and holds the last id
//! handed out; a missing key means none yet, so **the first id is 1** and 0 is never
//! returned. Each allocation is one compare-and-set, retried when another allocator won the
//! race, so ids are unique across processes and strictly increasing in allocation order.
//! Ids are not reused, even if the caller drops them.

use crate::{Expected, MetaError, MetadataStore, Result};

/// Allocates the next id from the counter at `key`.
pub async fn next(store: &dyn MetadataStore, key: &str) -> Result<u64> {
    loop {
        let (next, expected) = match store.get(key).await? {
            None => (1, Expected::Absent),
            Some(current) => {
                let last = decode(key, &current.value)?;
                let next = last.checked_add(1).ok_or_else(|| MetaError::Corrupt {
                    key: key.to_owned(),
                    reason: "id counter is exhausted".to_owned(),
                })?;
                (next, Expected::Version(current.version))
            }
        };
        match store.put(key, next.to_string().into_bytes(), expected).await {
            Ok(_) => return Ok(next),
            Err(MetaError::BadVersion { .. }) => continue,
            Err(error) => return Err(error),
        }
    }
}

fn decode(key: &str, value: &[u8]) -> Result<u64> {
    std::str::from_utf8(value).ok().and_then(|text| text.parse().ok()).ok_or_else(|| MetaError::Corrupt {
        key: key.to_owned(),
        reason: format!("id counter is not a decimal number: {:?}", String::from_utf8_lossy(value)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_is_decimal() {
        assert_eq!(decode("/c", b"41").expect("decimal"), 41);
        assert!(matches!(decode("/c", b"-1"), Err(MetaError::Corrupt { .. })));
        assert!(matches!(decode("/c", b"\x00\x01"), Err(MetaError::Corrupt { .. })));
        assert!(matches!(decode("/c", b""), Err(MetaError::Corrupt { .. })));
    }
}
