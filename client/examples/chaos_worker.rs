//! The Rust client's part of the chaos harness (tests/chaos/chaos.py): producers and
//! consumers driven by a JSON spec, each event written as one JSON line.
//!
//! ```text
//! cargo build -p magnetar-client --example chaos_worker
//! target/debug/examples/chaos_worker SPEC.json EVENTS.jsonl
//! ```
//!
//! The spec: `{"url": "pulsar://10.77.0.21:6650,10.77.0.22:6650", "roles": [ROLE, ...]}` with
//! each role one of
//!
//! - `{"kind": "produce", "topic": T, "producer": P, "name": N or null, "rate": R, "keys": K}`:
//!   sends `R` messages a second, keys `k0..k{K-1}` in turn, payload `P|key|seq|` (seq counts
//!   per key from 0); a producer name makes it a deduplicating one (with the namespace's
//!   deduplication on). Every receipt is written as
//!   `{"ev": "sent", "producer": P, "key", "seq", "id": "ledger:entry", "t"}`, every failed
//!   send as `{"ev": "send_failed", ..., "error"}`.
//! - `{"kind": "consume", "topic": T, "subscription": S, "type": "Exclusive"|"Failover"|
//!   "Shared"|"Key_Shared", "consumer": C}`: receives and acknowledges each message, writing
//!   `{"ev": "recv", "consumer": C, "subscription": S, "topic": T, "producer", "key", "seq",
//!   "id", "redelivery", "t"}` before the ack and `{"ev": "acked", ...}` once the ack call
//!   returned.
//!
//! `t` is seconds since the Unix epoch. SIGUSR1 stops the producers (each waits for its
//! receipts); SIGTERM closes everything and exits.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use magnetar_client::{Client, ClientConfig, InitialPosition, Message, MessageId, ProducerMessage, SubscriptionType};
use parking_lot::Mutex;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

#[derive(Deserialize)]
struct Spec {
    url: String,
    roles: Vec<Role>,
}

#[derive(Deserialize, Clone)]
#[serde(tag = "kind", rename_all = "lowercase")]
enum Role {
    Produce { topic: String, producer: String, name: Option<String>, rate: f64, keys: u32 },
    Consume { topic: String, subscription: String, r#type: String, consumer: String },
}

/// The events file, shared by every role; each line is flushed at once so that a killed
/// worker loses nothing it wrote.
#[derive(Clone)]
struct Events(Arc<Mutex<BufWriter<File>>>);

impl Events {
    fn write(&self, mut event: Value) {
        event["t"] = json!(now());
        let mut out = self.0.lock();
        let _ = writeln!(out, "{event}");
        let _ = out.flush();
    }
}

fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or_default()
}

fn id_text(id: &MessageId) -> String {
    format!("{}:{}", id.ledger_id, id.entry_id)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(spec_path), Some(events_path)) = (args.next(), args.next()) else {
        bail!("usage: chaos_worker SPEC.json EVENTS.jsonl");
    };
    let spec: Spec = serde_json::from_slice(&std::fs::read(&spec_path).with_context(|| format!("read {spec_path}"))?)
        .with_context(|| format!("parse {spec_path}"))?;
    if spec.roles.is_empty() {
        bail!("{spec_path}: no roles");
    }
    let events = Events(Arc::new(Mutex::new(BufWriter::new(
        File::create(&events_path).with_context(|| format!("create {events_path}"))?,
    ))));
    let config = ClientConfig {
        operation_timeout: Duration::from_secs(60),
        connection_timeout: Duration::from_secs(5),
        ..ClientConfig::default()
    };
    let client =
        Client::connect_with_config(&spec.url, config).await.with_context(|| format!("connect to {}", spec.url))?;

    let stop_producing = CancellationToken::new();
    let stop_all = CancellationToken::new();
    let mut tasks = Vec::new();
    for role in spec.roles {
        let (client, events, stop_producing, stop_all) =
            (client.clone(), events.clone(), stop_producing.clone(), stop_all.clone());
        tasks.push(tokio::spawn(async move {
            let what = match &role {
                Role::Produce { producer, .. } => format!("producer {producer}"),
                Role::Consume { consumer, .. } => format!("consumer {consumer}"),
            };
            // A role that cannot start (the cluster is in a fault) tries again.
            loop {
                let outcome = match role.clone() {
                    Role::Produce { topic, producer, name, rate, keys } => {
                        produce(&client, &events, &topic, &producer, name, rate, keys, &stop_producing).await
                    }
                    Role::Consume { topic, subscription, r#type, consumer } => {
                        consume(&client, &events, &topic, &subscription, &r#type, &consumer, &stop_all).await
                    }
                };
                match outcome {
                    Ok(()) => return,
                    Err(error) => {
                        events.write(json!({"ev": "role_error", "role": what, "error": format!("{error:#}")}));
                        if stop_all.is_cancelled()
                            || (matches!(role, Role::Produce { .. }) && stop_producing.is_cancelled())
                        {
                            return;
                        }
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        }));
    }

    let mut usr1 = signal(SignalKind::user_defined1())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    loop {
        tokio::select! {
            _ = usr1.recv() => stop_producing.cancel(),
            _ = term.recv() => break,
            _ = interrupt.recv() => break,
        }
    }
    stop_producing.cancel();
    stop_all.cancel();
    for task in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(20), task).await;
    }
    events.write(json!({"ev": "exit"}));
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn produce(
    client: &Client,
    events: &Events,
    topic: &str,
    producer_id: &str,
    name: Option<String>,
    rate: f64,
    keys: u32,
    stop: &CancellationToken,
) -> anyhow::Result<()> {
    if rate <= 0.0 || keys == 0 {
        bail!("producer {producer_id}: rate and keys must be positive");
    }
    let mut builder = client.producer(topic).batching(false).max_pending_messages(1000);
    if let Some(name) = &name {
        builder = builder.name(name.clone());
    }
    let mut producer = builder.create().await.with_context(|| format!("create producer {producer_id} on {topic}"))?;
    // A restarted role goes on where the sequence left off (the events file has the rest).
    let mut seqs = vec![0u64; keys as usize];
    let resumed = events_seq_of(producer_id);
    for (key, seq) in resumed {
        if let Some(slot) = seqs.get_mut(key as usize) {
            *slot = seq;
        }
    }
    let mut interval = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    let mut receipts = Vec::new();
    let mut n: u64 = 0;
    while !stop.is_cancelled() {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = interval.tick() => {}
        }
        let key = (n % u64::from(keys)) as u32;
        n += 1;
        let seq = seqs[key as usize];
        seqs[key as usize] += 1;
        remember_seq(producer_id, key, seq + 1);
        let key_text = format!("k{key}");
        let payload = format!("{producer_id}|{key_text}|{seq}|");
        let message = ProducerMessage::new(payload.into_bytes()).key(key_text.clone());
        let receipt = match producer.send_async(message).await {
            Ok(receipt) => receipt,
            Err(error) => {
                events.write(json!({"ev": "send_failed", "producer": producer_id, "key": key_text, "seq": seq, "error": error.to_string()}));
                continue;
            }
        };
        let (events, producer_id) = (events.clone(), producer_id.to_owned());
        receipts.push(tokio::spawn(async move {
            match receipt.await {
                Ok(id) => events.write(json!({"ev": "sent", "producer": producer_id, "key": key_text, "seq": seq, "id": id_text(&id)})),
                Err(error) => events.write(json!({"ev": "send_failed", "producer": producer_id, "key": key_text, "seq": seq, "error": error.to_string()})),
            }
        }));
        receipts.retain(|task| !task.is_finished());
    }
    for receipt in receipts {
        let _ = receipt.await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(10), producer.close()).await;
    Ok(())
}

/// The next sequence number of each key of each producer of this process, so that a
/// producer role restarted after an error does not send a (producer, key, seq) twice.
static SEQS: Mutex<Vec<(String, u32, u64)>> = Mutex::new(Vec::new());

fn remember_seq(producer: &str, key: u32, next: u64) {
    let mut seqs = SEQS.lock();
    match seqs.iter_mut().find(|(p, k, _)| p == producer && *k == key) {
        Some(entry) => entry.2 = next,
        None => seqs.push((producer.to_owned(), key, next)),
    }
}

fn events_seq_of(producer: &str) -> Vec<(u32, u64)> {
    SEQS.lock().iter().filter(|(p, _, _)| p == producer).map(|(_, k, next)| (*k, *next)).collect()
}

fn subscription_type(name: &str) -> anyhow::Result<SubscriptionType> {
    Ok(match name {
        "Exclusive" => SubscriptionType::Exclusive,
        "Failover" => SubscriptionType::Failover,
        "Shared" => SubscriptionType::Shared,
        "Key_Shared" => SubscriptionType::KeyShared,
        other => bail!("unknown subscription type {other:?} (Exclusive, Failover, Shared, Key_Shared)"),
    })
}

fn parse_payload(message: &Message) -> Option<(String, String, u64)> {
    let text = std::str::from_utf8(&message.payload).ok()?;
    let mut parts = text.split('|');
    let producer = parts.next()?.to_owned();
    let key = parts.next()?.to_owned();
    let seq = parts.next()?.parse().ok()?;
    Some((producer, key, seq))
}

async fn consume(
    client: &Client,
    events: &Events,
    topic: &str,
    subscription: &str,
    kind: &str,
    consumer_id: &str,
    stop: &CancellationToken,
) -> anyhow::Result<()> {
    let mut consumer = client
        .consumer(topic, subscription)
        .subscription_type(subscription_type(kind)?)
        .initial_position(InitialPosition::Earliest)
        .consumer_name(consumer_id)
        .receiver_queue_size(100)
        .subscribe()
        .await
        .with_context(|| format!("subscribe {consumer_id} to {subscription} on {topic}"))?;
    loop {
        let message = tokio::select! {
            _ = stop.cancelled() => break,
            received = consumer.receive() => received.context("receive")?,
        };
        let base = match parse_payload(&message) {
            Some((producer, key, seq)) => json!({
                "consumer": consumer_id, "subscription": subscription, "topic": topic,
                "producer": producer, "key": key, "seq": seq, "id": id_text(&message.id),
                "redelivery": message.redelivery_count,
            }),
            None => json!({"consumer": consumer_id, "subscription": subscription, "topic": topic,
                "id": id_text(&message.id), "garbled": String::from_utf8_lossy(&message.payload)}),
        };
        let mut received = base.clone();
        received["ev"] = json!("recv");
        events.write(received);
        consumer.ack(&message).await.context("ack")?;
        let mut acked = base;
        acked["ev"] = json!("acked");
        events.write(acked);
    }
    let _ = tokio::time::timeout(Duration::from_secs(10), consumer.close()).await;
    Ok(())
}
