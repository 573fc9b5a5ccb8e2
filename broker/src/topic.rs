//! A persistent topic: its managed ledger, its producers and its subscriptions.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tracing::warn;

use crate::dispatcher::SubscriptionType;
use crate::error::BrokerError;
use crate::managed_ledger::{AddFuture, ManagedLedger};
use crate::subscription::{StartAt, Subscription};
use crate::topic_name::TopicName;

pub struct Topic {
    name: TopicName,
    ledger: Arc<ManagedLedger>,
    /// Connected producers by name.
    producers: Mutex<HashMap<String, u64>>,
    subscriptions: tokio::sync::Mutex<HashMap<String, Arc<Subscription>>>,
}

impl Topic {
    pub fn new(name: TopicName, ledger: Arc<ManagedLedger>) -> Arc<Self> {
        Arc::new(Topic { name, ledger, producers: Mutex::new(HashMap::new()), subscriptions: Default::default() })
    }

    pub fn name(&self) -> &TopicName {
        &self.name
    }

    pub fn ledger(&self) -> &Arc<ManagedLedger> {
        &self.ledger
    }

    /// Registers a producer name; a name already connected is refused.
    pub fn add_producer(&self, producer_name: &str, producer_key: u64) -> Result<(), BrokerError> {
        let mut producers = self.producers.lock().unwrap_or_else(|p| p.into_inner());
        if producers.contains_key(producer_name) {
            return Err(BrokerError::ProducerBusy { topic: self.name.to_string(), producer: producer_name.to_owned() });
        }
        producers.insert(producer_name.to_owned(), producer_key);
        Ok(())
    }

    pub fn remove_producer(&self, producer_name: &str, producer_key: u64) {
        let mut producers = self.producers.lock().unwrap_or_else(|p| p.into_inner());
        if producers.get(producer_name) == Some(&producer_key) {
            producers.remove(producer_name);
        }
    }

    pub fn producer_count(&self) -> usize {
        self.producers.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Appends a message entry; the future answers once it is durable.
    pub async fn publish(&self, data: Bytes) -> Result<AddFuture, BrokerError> {
        self.ledger.add_entry(data).await
    }

    /// The subscription, opened (a durable one created at `start` if new; a non-durable one
    /// lives in memory until its last consumer leaves).
    pub async fn subscription(
        &self,
        name: &str,
        start: StartAt,
        durable: bool,
        sub_type: SubscriptionType,
    ) -> Result<Arc<Subscription>, BrokerError> {
        let mut subscriptions = self.subscriptions.lock().await;
        if let Some(found) = subscriptions.get(name) {
            return Ok(found.clone());
        }
        let opened =
            Subscription::open(&self.name.to_string(), name, self.ledger.clone(), start, durable, sub_type).await?;
        subscriptions.insert(name.to_owned(), opened.clone());
        Ok(opened)
    }

    /// Drops a non-durable subscription (reader) once no consumer is attached.
    pub async fn remove_if_unused(&self, name: &str) {
        let mut subscriptions = self.subscriptions.lock().await;
        let Some(subscription) = subscriptions.get(name).cloned() else { return };
        if subscription.is_durable() || subscription.has_consumer() {
            return;
        }
        subscriptions.remove(name);
        drop(subscriptions);
        subscription.close().await;
    }

    /// Removes a subscription whose only consumer is `consumer_id`; refused while other
    /// consumers are connected, as Pulsar refuses it.
    pub async fn unsubscribe(&self, name: &str, consumer_id: u64) -> Result<(), BrokerError> {
        let mut subscriptions = self.subscriptions.lock().await;
        let Some(subscription) = subscriptions.get(name).cloned() else {
            return Err(BrokerError::NotAllowed { what: format!("subscription {name} does not exist") });
        };
        if !subscription.has_consumer_id(consumer_id) || subscription.consumer_count() > 1 {
            return Err(BrokerError::UnsubscribeRefused {
                what: "Unconnected or shared consumer attempting to unsubscribe".to_owned(),
            });
        }
        subscription.detach(consumer_id);
        subscriptions.remove(name);
        subscription.close().await;
        subscription.delete().await
    }

    pub async fn subscriptions(&self) -> Vec<Arc<Subscription>> {
        self.subscriptions.lock().await.values().cloned().collect()
    }

    /// Flushes cursors and closes the ledger, so the next owner starts without recovery.
    pub async fn close(&self) {
        for subscription in self.subscriptions().await {
            subscription.close().await;
        }
        if let Err(error) = self.ledger.close().await {
            warn!(topic = %self.name, %error, "closing the managed ledger failed; the next owner recovers it");
        }
    }
}
