//! Our own client library and the `magnetar-client` CLI against a real `magnetar standalone`.

use std::process::Command;

use magnetar_client::{Client, InitialPosition, ProducerMessage};
use magnetar_tests::{binary, Standalone};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn library_produces_consumes_and_resumes_after_restart() -> anyhow::Result<()> {
    let mut standalone = Standalone::start().await?;
    let topic = "persistent://public/default/lib-roundtrip";
    {
        let client = Client::connect(&standalone.service_url()).await?;
        let mut producer = client.producer(topic).name("lib-producer").create().await?;
        let mut consumer =
            client.consumer(topic, "lib-sub").initial_position(InitialPosition::Earliest).subscribe().await?;
        let mut ids = Vec::new();
        for i in 0..20 {
            ids.push(producer.send_with(ProducerMessage::new(format!("m-{i}")).key(format!("k{}", i % 3))).await?);
        }
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "message ids increase: {ids:?}");
        for i in 0..10 {
            let message = consumer.receive().await?;
            assert_eq!(message.payload, format!("m-{i}").as_bytes());
            assert_eq!(message.key.as_deref(), Some(format!("k{}", i % 3).as_str()));
            consumer.ack(&message).await?;
        }
        consumer.close().await?;
        producer.close().await?;
    }
    // A clean shutdown persists every ack: nothing acknowledged comes back.
    assert!(standalone.terminate()?, "standalone exits cleanly on SIGTERM");
    standalone.restart().await?;
    let client = Client::connect(&standalone.service_url()).await?;
    let mut consumer = client.consumer(topic, "lib-sub").subscribe().await?;
    for i in 10..20 {
        let message = consumer.receive().await?;
        assert_eq!(message.payload, format!("m-{i}").as_bytes(), "resumes after the last ack");
        consumer.ack_cumulative(&message).await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_produces_and_consumes_with_pulsar_style_verbs() -> anyhow::Result<()> {
    let standalone = Standalone::start().await?;
    let cli = binary("magnetar-client")?;
    let url = standalone.service_url();
    let produce =
        Command::new(&cli).args(["--url", &url, "produce", "my-topic", "-m", "hello", "-n", "10"]).output()?;
    assert!(produce.status.success(), "produce failed: {}", String::from_utf8_lossy(&produce.stderr));
    let stdout = String::from_utf8_lossy(&produce.stdout);
    assert!(stdout.contains("10 messages successfully produced"), "{stdout}");

    let consume = Command::new(&cli)
        .args(["--url", &url, "consume", "my-topic", "-s", "sub", "-n", "10", "-p", "Earliest"])
        .output()?;
    assert!(consume.status.success(), "consume failed: {}", String::from_utf8_lossy(&consume.stderr));
    let stdout = String::from_utf8_lossy(&consume.stdout);
    assert_eq!(stdout.matches("content:hello").count(), 10, "{stdout}");
    assert!(stdout.contains("10 messages successfully consumed"), "{stdout}");
    Ok(())
}
