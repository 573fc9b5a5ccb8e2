//! `magnetar-perf produce` end to end: against a real `magnetar standalone`, it publishes
//! through the Rust client and reports its figures as one JSON object. Only that it works is
//! checked, never how fast.

use std::process::Command;

use anyhow::Context;
use magnetar_client::{Client, InitialPosition};
use magnetar_tests::{binary, Standalone};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn perf_produce_reports_json_figures_of_messages_really_stored() -> anyhow::Result<()> {
    let standalone = Standalone::start().await?;
    let topic = "persistent://public/default/perf-produce";
    let output = Command::new(binary("magnetar-perf")?)
        .args(["produce", "--topic", topic, "--seconds", "1", "--size", "100", "--producers", "2"])
        .args(["--batch-max-messages", "10", "--rate", "2000", "--json", "--service-url", &standalone.service_url()])
        .output()
        .context("run magnetar-perf produce")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "magnetar-perf produce failed\nstdout: {stdout}\nstderr: {stderr}");
    let figures: serde_json::Value = serde_json::from_str(stdout.trim()).context("stdout is one JSON object")?;
    for key in ["msgs_per_sec", "mb_per_sec", "p50_ms", "p99_ms", "p999_ms"] {
        assert!(figures[key].is_number(), "{key} is a number: {figures}");
    }
    assert!(figures["msgs_per_sec"].as_f64().unwrap_or(0.0) > 0.0, "{figures}");
    assert_eq!(figures["errors"].as_u64(), Some(0), "{figures}");
    assert_eq!(figures["producers"].as_u64(), Some(2), "{figures}");
    assert_eq!(figures["batch_max_messages"].as_u64(), Some(10), "{figures}");
    assert_eq!(figures["rate"].as_f64(), Some(2000.0), "{figures}");
    let messages = figures["messages"].as_u64().context("messages is a count")?;

    // What it counted is on the topic: a consumer from the start reads exactly that many
    // 100-byte messages (batches split back into single messages).
    let client = Client::connect(&standalone.service_url()).await?;
    let mut consumer = client.consumer(topic, "check").initial_position(InitialPosition::Earliest).subscribe().await?;
    for received in 0..messages {
        let message = tokio::time::timeout(std::time::Duration::from_secs(30), consumer.receive())
            .await
            .with_context(|| format!("message {received} of {messages}"))??;
        assert_eq!(message.payload.len(), 100);
    }
    let extra = tokio::time::timeout(std::time::Duration::from_millis(500), consumer.receive()).await;
    assert!(extra.is_err(), "no more messages than magnetar-perf counted: {extra:?}");
    Ok(())
}
