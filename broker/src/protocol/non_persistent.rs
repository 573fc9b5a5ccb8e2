//! The commands of a connection's producers and consumers on non-persistent topics
//! ([`crate::non_persistent`]): PRODUCER and SUBSCRIBE on a `non-persistent://` name, and
//! SEND, FLOW, ACK, CLOSE_*, UNSUBSCRIBE and the rest for the ids they registered. A SEND is
//! receipted as soon as the subscriptions' consumers were given it (at most once), with
//! Pulsar's 0:0 message id; acknowledgements are answered and forgotten.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use magnetar_proto::command;
use magnetar_proto::frame::Payload;
use magnetar_proto::pulsar::{self as pb, base_command::Type, BaseCommand, ServerError};
use tracing::info;

use super::connection::{Connection, NpConsumerEntry, NpProducerEntry};
use super::consumer::ConnectionConsumer;
use super::{convert, Outbound};
use crate::error::BrokerError;
use crate::metrics::Metrics;
use crate::non_persistent::NpConsumer;
use crate::security::TopicAction;
use crate::stats::{ConsumerStats, Meter, ProducerStats};
use crate::topic_name::TopicName;

/// Keys of non-persistent producers and consumers, unique in the broker.
static NEXT_KEY: AtomicU64 = AtomicU64::new(1);

/// Pulsar receipts a non-persistent publish with ledger and entry 0 (-1:-1 would tell the
/// Java client that the broker could not say whether it was a duplicate).
const RECEIPT_ID: u64 = 0;

fn is_non_persistent(topic: &str) -> bool {
    topic.starts_with("non-persistent://")
}

impl Connection {
    /// Handles `command` if it belongs to a non-persistent topic (None); else gives it back.
    pub(super) async fn route_non_persistent(
        &mut self,
        command_type: Type,
        command: BaseCommand,
        payload: Option<Payload>,
    ) -> Option<BaseCommand> {
        match (command_type, &command) {
            (Type::Producer, BaseCommand { producer: Some(request), .. }) if is_non_persistent(&request.topic) => {
                let request = request.clone();
                self.on_np_producer(request).await;
            }
            (Type::Subscribe, BaseCommand { subscribe: Some(request), .. }) if is_non_persistent(&request.topic) => {
                let request = request.clone();
                let request_id = request.request_id;
                match self.np_subscribe(request).await {
                    Ok(()) => self.send(command::success(request_id)).await,
                    Err(error) => {
                        info!(peer = %self.peer, %error, "subscribe refused");
                        self.send_error(request_id, &error).await
                    }
                }
            }
            (Type::Send, BaseCommand { send: Some(send), .. }) if self.np_producers.contains_key(&send.producer_id) => {
                let send = send.clone();
                self.on_np_send(send, payload).await;
            }
            (Type::CloseProducer, BaseCommand { close_producer: Some(close), .. })
                if self.np_producers.contains_key(&close.producer_id) =>
            {
                self.remove_np_producer(close.producer_id);
                self.send(command::success(close.request_id)).await;
            }
            (Type::Flow, BaseCommand { flow: Some(flow), .. }) if self.np_consumers.contains_key(&flow.consumer_id) => {
                if let Some(consumer) = self.np_consumers.get(&flow.consumer_id) {
                    consumer.topic.add_permits(&consumer.subscription, consumer.key, flow.message_permits);
                }
            }
            (Type::Ack, BaseCommand { ack: Some(ack), .. }) if self.np_consumers.contains_key(&ack.consumer_id) => {
                // Nothing is kept to acknowledge; a client that asked for a receipt gets one.
                if let Some(request_id) = ack.request_id {
                    let response = BaseCommand {
                        command_type: Type::AckResponse as i32,
                        ack_response: Some(pb::CommandAckResponse {
                            consumer_id: ack.consumer_id,
                            request_id: Some(request_id),
                            ..Default::default()
                        }),
                        ..Default::default()
                    };
                    self.send(response).await;
                }
            }
            (Type::RedeliverUnacknowledgedMessages, BaseCommand { redeliver_unacknowledged_messages: Some(r), .. })
                if self.np_consumers.contains_key(&r.consumer_id) => {}
            (Type::CloseConsumer, BaseCommand { close_consumer: Some(close), .. })
                if self.np_consumers.contains_key(&close.consumer_id) =>
            {
                self.remove_np_consumer(close.consumer_id);
                self.send(command::success(close.request_id)).await;
            }
            (Type::Unsubscribe, BaseCommand { unsubscribe: Some(request), .. })
                if self.np_consumers.contains_key(&request.consumer_id) =>
            {
                self.remove_np_consumer(request.consumer_id);
                self.send(command::success(request.request_id)).await;
            }
            (Type::Seek, BaseCommand { seek: Some(request), .. })
                if self.np_consumers.contains_key(&request.consumer_id) =>
            {
                let error = BrokerError::NotAllowed { what: "seek is not supported on a non-persistent topic".into() };
                self.send_error(request.request_id, &error).await;
            }
            (Type::GetLastMessageId, BaseCommand { get_last_message_id: Some(request), .. })
                if self.np_consumers.contains_key(&request.consumer_id) =>
            {
                let error = BrokerError::NotAllowed {
                    what: "GetLastMessageId is not supported on a non-persistent topic".into(),
                };
                self.send_error(request.request_id, &error).await;
            }
            (Type::ConsumerStats, BaseCommand { consumer_stats: Some(request), .. })
                if self.np_consumers.contains_key(&request.consumer_id) =>
            {
                let request = request.clone();
                self.on_np_consumer_stats(request).await;
            }
            _ => return Some(command),
        }
        None
    }

    async fn on_np_producer(&mut self, request: pb::CommandProducer) {
        if self.np_producers.get(&request.producer_id).is_some_and(|p| p.closed.load(Ordering::Acquire)) {
            self.remove_np_producer(request.producer_id);
        }
        if self.np_producers.contains_key(&request.producer_id) || self.has_producer_id(request.producer_id) {
            let error =
                BrokerError::NotAllowed { what: format!("producer id {} is already in use", request.producer_id) };
            return self.send_error(request.request_id, &error).await;
        }
        let key = NEXT_KEY.fetch_add(1, Ordering::Relaxed);
        let registered = async {
            let mode = convert::access_mode(request.producer_access_mode)?;
            let name = TopicName::parse(&request.topic)?;
            self.authorize(&name, TopicAction::Produce, None).await?;
            let topic = self.service.non_persistent_topic(&name).await?;
            let schema_version = self.producer_schema(&name, request.schema.as_ref()).await?;
            let producer_name = match request.producer_name.as_deref() {
                Some(name) if !name.is_empty() => name.to_owned(),
                _ => format!("{}-{}-np{key}", self.service.config.cluster_name, self.service.broker_id().await?),
            };
            let stats = Arc::new(ProducerStats {
                producer_id: request.producer_id,
                name: producer_name.clone(),
                access_mode: mode.name(),
                client: self.client_info(),
                published: Meter::default(),
            });
            let closed = Arc::new(AtomicBool::new(false));
            let (flag, outbound, producer_id) = (closed.clone(), self.outbound(), request.producer_id);
            let closer = Box::new(move || {
                flag.store(true, Ordering::Release);
                let _ = outbound.try_send(Outbound::command(command::close_producer(producer_id, 0)));
            });
            topic.add_producer(key, stats.clone(), mode, closer)?;
            Ok::<_, BrokerError>((topic, stats, closed, producer_name, schema_version))
        }
        .await;
        match registered {
            Ok((topic, stats, closed, producer_name, schema_version)) => {
                self.np_producers.insert(request.producer_id, NpProducerEntry { topic, key, stats, closed });
                let mut answer = command::producer_success(request.request_id, &producer_name, -1);
                if let (Some(version), Some(success)) = (schema_version, answer.producer_success.as_mut()) {
                    success.schema_version = Some(version);
                }
                self.send(answer).await;
            }
            Err(error) => {
                info!(peer = %self.peer, topic = %request.topic, %error, "producer refused");
                self.send_error(request.request_id, &error).await;
            }
        }
    }

    async fn on_np_send(&mut self, send: pb::CommandSend, payload: Option<Payload>) {
        let refuse =
            |error: ServerError, message: &str| command::send_error(send.producer_id, send.sequence_id, error, message);
        let Some(producer) = self.np_producers.get(&send.producer_id) else { return };
        if producer.closed.load(Ordering::Acquire) {
            return;
        }
        let Some(payload) = payload else {
            Metrics::add(&self.service.metrics.send_errors, 1);
            return self.send(refuse(ServerError::NotAllowedError, "SEND without a payload")).await;
        };
        let max_size = self.service.config.max_message_size;
        if payload.body().len() > max_size {
            Metrics::add(&self.service.metrics.send_errors, 1);
            let message =
                format!("message of {} bytes exceeds the maximum message size {max_size}", payload.body().len());
            return self.send(refuse(ServerError::NotAllowedError, &message)).await;
        }
        let messages = u64::from(payload.num_messages());
        let data = payload.into_bytes();
        let bytes = data.len() as u64;
        producer.stats.published.record(messages, bytes);
        Metrics::add(&self.service.metrics.in_messages, messages);
        Metrics::add(&self.service.metrics.in_bytes, bytes);
        let sends = producer.topic.publish(data);
        let highest_sequence_id = send.highest_sequence_id.unwrap_or(0).max(send.sequence_id);
        let receipt =
            command::send_receipt(send.producer_id, send.sequence_id, highest_sequence_id, RECEIPT_ID, RECEIPT_ID);
        self.send(receipt).await;
        for (sink, message) in sends {
            sink.send_messages(vec![message]).await;
        }
    }

    async fn np_subscribe(&mut self, request: pb::CommandSubscribe) -> Result<(), BrokerError> {
        if let Some(existing) = self.np_consumers.get(&request.consumer_id) {
            if existing.topic.is_closed() {
                self.np_consumers.remove(&request.consumer_id);
            } else {
                return Ok(());
            }
        }
        if self.has_consumer_id(request.consumer_id) {
            return Err(BrokerError::NotAllowed {
                what: format!("consumer id {} is already in use", request.consumer_id),
            });
        }
        let sub_type = convert::sub_type(request.sub_type)?;
        if request.subscription.is_empty() || request.subscription.contains('/') {
            return Err(BrokerError::NotAllowed { what: "subscription name must be non-empty and hold no '/'".into() });
        }
        let key_shared = convert::key_shared_options(request.key_shared_meta.as_ref(), sub_type)?;
        let name = TopicName::parse(&request.topic)?;
        let durable = request.durable.unwrap_or(true);
        self.authorize(&name, TopicAction::Consume, durable.then_some(request.subscription.as_str())).await?;
        let topic = self.service.non_persistent_topic(&name).await?;
        self.consumer_schema(&name, request.schema.as_ref()).await?;
        let key = NEXT_KEY.fetch_add(1, Ordering::Relaxed);
        let consumer_name = request.consumer_name.clone().unwrap_or_default();
        let stats = Arc::new(ConsumerStats {
            consumer_id: request.consumer_id,
            name: consumer_name.clone(),
            client: self.client_info(),
            ..ConsumerStats::default()
        });
        let sink = Arc::new(ConnectionConsumer {
            consumer_id: request.consumer_id,
            outbound: self.outbound(),
            metrics: self.service.metrics.clone(),
            stats: stats.clone(),
            end_of_topic: false,
            partition: name.partition_of().and_then(|(_, index)| i32::try_from(index).ok()),
        });
        let options = crate::dispatcher::SubscribeOptions { sub_type, key_shared };
        let consumer = NpConsumer {
            key,
            name: consumer_name,
            priority_level: request.priority_level.unwrap_or(0),
            sink,
            stats: stats.clone(),
        };
        topic.subscribe(&request.subscription, &options, consumer)?;
        self.np_consumers.insert(
            request.consumer_id,
            NpConsumerEntry {
                topic,
                subscription: request.subscription.clone(),
                key,
                stats,
                sub_type: sub_type.name(),
            },
        );
        Ok(())
    }

    async fn on_np_consumer_stats(&self, request: pb::CommandConsumerStats) {
        let Some(consumer) = self.np_consumers.get(&request.consumer_id) else { return };
        let own = pb::CommandConsumerStatsResponse { msg_backlog: Some(0), ..Default::default() };
        self.send(super::consumer::stats_response(request.request_id, &consumer.stats, consumer.sub_type, own)).await;
    }

    pub(super) fn remove_np_producer(&mut self, producer_id: u64) {
        if let Some(producer) = self.np_producers.remove(&producer_id) {
            producer.topic.remove_producer(producer.key);
            self.service.release_non_persistent(producer.topic.name());
        }
    }

    pub(super) fn remove_np_consumer(&mut self, consumer_id: u64) {
        if let Some(consumer) = self.np_consumers.remove(&consumer_id) {
            consumer.topic.remove_consumer(&consumer.subscription, consumer.key);
            self.service.release_non_persistent(consumer.topic.name());
        }
    }

    /// Detaches every non-persistent producer and consumer (the connection ends).
    pub(super) fn cleanup_non_persistent(&mut self) {
        let producers: Vec<u64> = self.np_producers.keys().copied().collect();
        for id in producers {
            self.remove_np_producer(id);
        }
        let consumers: Vec<u64> = self.np_consumers.keys().copied().collect();
        for id in consumers {
            self.remove_np_consumer(id);
        }
    }
}
