//! Locks and leader election over any [`MetadataStore`].
//!
//! A lock is an ephemeral key created with `Expected::Absent`: whoever creates it holds it,
//! and it is released by deleting it or, if the holder dies, by its session ending. The key's
//! value names the holder (for example a broker's address), so others can read who leads.
//!
//! **Invariants.** At most one session holds a lock key at a time (the store's
//! compare-and-set). A waiter registers its watch *before* trying, so a delete between its
//! failed try and its wait cannot be missed. No fairness: when the lock frees up, any waiter
//! may win. A [`LockGuard`] is only a claim: it can be lost if its session expires, so
//! leaders should watch the key (or their session) and step down when it changes.

use crate::{Expected, MetaError, MetadataStore, Result, SessionId, Version, WatchEvent};

/// A held lock: the key and the version this holder wrote it at.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use = "a lock is held until released or its session ends"]
pub struct LockGuard {
    key: String,
    version: Version,
    session: SessionId,
}

impl LockGuard {
    /// The lock's key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The version of the key this holder created; a fencing token that grows with every
    /// new holder.
    pub fn version(&self) -> Version {
        self.version
    }

    /// The session that owns the lock key.
    pub fn session(&self) -> SessionId {
        self.session
    }

    /// Releases the lock by deleting its key at the version this holder wrote. If the key has
    /// already changed (the session ended and maybe someone else holds it now), nothing is
    /// deleted and this is still Ok: this holder does not hold it either way.
    pub async fn release(self, store: &dyn MetadataStore) -> Result<()> {
        match store.delete(&self.key, Expected::Version(self.version)).await {
            Ok(()) | Err(MetaError::BadVersion { .. }) => Ok(()),
            Err(error) => Err(error),
        }
    }
}

/// Takes the lock at `key` for `session` if it is free now, writing `holder` as its value.
/// `None` if someone holds it.
pub async fn try_acquire(
    store: &dyn MetadataStore,
    session: SessionId,
    key: &str,
    holder: Vec<u8>,
) -> Result<Option<LockGuard>> {
    match store.put_ephemeral(session, key, holder, Expected::Absent).await {
        Ok(version) => Ok(Some(LockGuard { key: key.to_owned(), version, session })),
        Err(MetaError::BadVersion { .. }) => Ok(None),
        Err(error) => Err(error),
    }
}

/// Takes the lock at `key` for `session`, waiting as long as someone else holds it.
///
/// Cancel-safe in the sense that matters: dropping the future while it waits leaves nothing
/// behind. (If it is dropped while its write is in flight, the lock may be taken by
/// `session` anyway and is freed when the session ends.)
pub async fn acquire(store: &dyn MetadataStore, session: SessionId, key: &str, holder: Vec<u8>) -> Result<LockGuard> {
    loop {
        // Watch first: a delete after the failed try below must wake us.
        let mut watch = store.watch(key).await?;
        if let Some(guard) = try_acquire(store, session, key, holder.clone()).await? {
            return Ok(guard);
        }
        // Wait for the key to be deleted. A closed watch (we fell behind, or the watch failed)
        // also means "try again", with a fresh watch.
        while let Some(event) = watch.recv().await {
            if matches!(&event, WatchEvent::Delete { key: deleted } if deleted == key) {
                break;
            }
        }
    }
}
