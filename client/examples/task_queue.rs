//! A task queue on a Shared subscription: one producer enqueues jobs as JSON, several
//! workers take them in turn. A job that fails is negatively acknowledged and comes back
//! after a second; one that keeps failing ends in the dead-letter topic
//! (`jobs-workers-DLQ`) after three redeliveries. A worker that dies mid-job leaves its
//! jobs unacknowledged, and the ack timeout hands them to another worker.
//!
//! ```text
//! magnetar standalone &
//! cargo run -p magnetar-client --example task_queue -- pulsar://127.0.0.1:6650
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use magnetar_client::{Client, DeadLetterPolicy, InitialPosition, SubscriptionType};
use serde::{Deserialize, Serialize};

const JOBS: u64 = 20;
const WORKERS: usize = 3;

#[derive(Debug, Serialize, Deserialize)]
struct Job {
    id: u64,
    /// Jobs whose input is "poison" always fail: they end in the dead-letter topic.
    input: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = std::env::args().nth(1).unwrap_or_else(|| "pulsar://127.0.0.1:6650".into());
    let client = Client::connect(&url).await.with_context(|| format!("connect to {url}"))?;
    let topic = format!("jobs-{}", std::process::id());

    // Workers first, so the subscription exists before the jobs arrive.
    let settled = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for worker in 0..WORKERS {
        let mut consumer = client
            .consumer(&topic, "workers")
            .subscription_type(SubscriptionType::Shared)
            .initial_position(InitialPosition::Earliest)
            .consumer_name(format!("worker-{worker}"))
            .ack_timeout(Duration::from_secs(30))
            .negative_ack_redelivery_delay(Duration::from_secs(1))
            .dead_letter_policy(DeadLetterPolicy::new(3))
            .subscribe()
            .await
            .context("subscribe a worker")?;
        let settled = settled.clone();
        workers.push(tokio::spawn(async move {
            while settled.load(Ordering::SeqCst) < JOBS {
                let Ok(received) =
                    tokio::time::timeout(Duration::from_millis(500), consumer.receive_json::<Job>()).await
                else {
                    continue;
                };
                let (message, job) = received?;
                if job.input == "poison" {
                    println!("worker {worker}: job {} failed (attempt {})", job.id, message.redelivery_count + 1);
                    if message.redelivery_count >= 3 {
                        // The next nack sends it to the dead-letter topic: count it as settled.
                        settled.fetch_add(1, Ordering::SeqCst);
                    }
                    consumer.negative_acknowledge(&message).await?;
                    continue;
                }
                println!("worker {worker}: job {} -> {}", job.id, job.input.to_uppercase());
                consumer.ack(&message).await?;
                settled.fetch_add(1, Ordering::SeqCst);
            }
            // One last receive lets a pending nack's dead-letter send happen.
            let _ = tokio::time::timeout(Duration::from_millis(1500), consumer.receive()).await;
            consumer.close().await?;
            anyhow::Ok(())
        }));
    }

    let mut producer = client.producer(&topic).create().await.context("create the producer")?;
    for id in 0..JOBS {
        let input = if id == 7 { "poison".to_owned() } else { format!("task {id}") };
        producer.send_json(&Job { id, input }).await.context("enqueue a job")?;
    }
    producer.close().await?;

    for worker in workers {
        worker.await.context("worker task")??;
    }
    println!("all {JOBS} jobs settled; job 7 is in {topic}-workers-DLQ");
    Ok(())
}
