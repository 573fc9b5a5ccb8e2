//! An ordered pipeline on a Key_Shared subscription: events of many orders are spread over
//! several stages, yet all events of one order (one key) go to the same consumer, in the
//! order they were published. Each stage checks that order and writes an enriched event to
//! an output topic, keyed the same way.
//!
//! ```text
//! magnetar standalone &
//! cargo run -p magnetar-client --example ordered_pipeline -- pulsar://127.0.0.1:6650
//! ```

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use magnetar_client::{Client, InitialPosition, ProducerMessage, SubscriptionType};
use serde::{Deserialize, Serialize};

const ORDERS: u64 = 10;
const EVENTS_PER_ORDER: u64 = 5;
const STAGES: usize = 3;

#[derive(Debug, Serialize, Deserialize)]
struct OrderEvent {
    order: u64,
    step: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = std::env::args().nth(1).unwrap_or_else(|| "pulsar://127.0.0.1:6650".into());
    let client = Client::connect(&url).await.with_context(|| format!("connect to {url}"))?;
    let input = format!("orders-{}", std::process::id());
    let output = format!("{input}-enriched");
    let total = ORDERS * EVENTS_PER_ORDER;

    let processed = Arc::new(AtomicU64::new(0));
    let mut stages = Vec::new();
    for stage in 0..STAGES {
        let mut consumer = client
            .consumer(&input, "pipeline")
            .subscription_type(SubscriptionType::KeyShared)
            .initial_position(InitialPosition::Earliest)
            .consumer_name(format!("stage-{stage}"))
            .subscribe()
            .await
            .context("subscribe a stage")?;
        let mut sink = client.producer(&output).create().await.context("create the output producer")?;
        let processed = processed.clone();
        stages.push(tokio::spawn(async move {
            let mut next_step: HashMap<u64, u64> = HashMap::new();
            while processed.load(Ordering::SeqCst) < total {
                let Ok(received) = tokio::time::timeout(Duration::from_millis(500), consumer.receive_json()).await
                else {
                    continue;
                };
                let (message, event): (_, OrderEvent) = received?;
                let expected = next_step.entry(event.order).or_insert(0);
                if event.step != *expected {
                    bail!("stage {stage}: order {} step {} arrived, expected {expected}", event.order, event.step);
                }
                *expected += 1;
                let enriched =
                    ProducerMessage::json(&event)?.key(event.order.to_string()).property("stage", stage.to_string());
                sink.send_with(enriched).await?;
                consumer.ack(&message).await?;
                processed.fetch_add(1, Ordering::SeqCst);
            }
            println!("stage {stage} handled orders {:?}", {
                let mut orders: Vec<_> = next_step.keys().copied().collect();
                orders.sort_unstable();
                orders
            });
            consumer.close().await?;
            sink.close().await?;
            anyhow::Ok(())
        }));
    }

    let mut producer = client.producer(&input).batching_max_messages(10).create().await?;
    let mut receipts = Vec::new();
    for step in 0..EVENTS_PER_ORDER {
        for order in 0..ORDERS {
            let event = ProducerMessage::json(&OrderEvent { order, step })?.key(order.to_string());
            receipts.push(producer.send_async(event).await?);
        }
    }
    for receipt in receipts {
        receipt.await?;
    }
    producer.close().await?;

    for stage in stages {
        stage.await.context("stage task")??;
    }
    println!("{total} events processed in order per key; enriched copies in {output}");
    Ok(())
}
