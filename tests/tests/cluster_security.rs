//! A secured cluster of real processes: etcd, two `magnetar bookie` processes that serve TLS
//! only and refuse callers without a token of the `broker` role, and `magnetar broker`
//! processes. A broker with the right token and the bookies' CA stores and serves messages; a
//! broker whose token has a role the bookies do not allow, or without a token, gets nothing
//! acknowledged, and the bookies log why. No token appears in any log.

use std::time::Duration;

use anyhow::{ensure, Context};
use magnetar_client::{Client, InitialPosition, SubscriptionType};
use magnetar_meta::testing::write_test_pki;
use magnetar_tests::cluster::{Cluster, Replication, TEST_BROKER_CONFIG};

fn magnetar_tokens(args: &[&str]) -> anyhow::Result<String> {
    let output = std::process::Command::new(magnetar_tests::binary("magnetar")?).arg("tokens").args(args).output()?;
    ensure!(output.status.success(), "magnetar tokens {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    Ok(String::from_utf8(output.stdout)?.trim().to_owned())
}

/// Sends `count` messages and returns whether all were acknowledged within `limit`.
async fn send_all(service_url: &str, topic: &str, count: usize, limit: Duration) -> anyhow::Result<bool> {
    let attempt = async {
        let client = Client::connect(service_url).await?;
        let mut producer = client.producer(topic).create().await?;
        for index in 0..count {
            producer.send(format!("secured-{index}")).await?;
        }
        anyhow::Ok(())
    };
    Ok(matches!(tokio::time::timeout(limit, attempt).await, Ok(Ok(()))))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn brokers_reach_tls_bookies_only_with_a_token_the_bookies_allow() -> anyhow::Result<()> {
    let keys = tempfile::tempdir()?;
    let k = keys.path().display().to_string();
    write_test_pki(keys.path(), "broker")?;
    let secret = format!("file://{k}/secret.key");
    magnetar_tokens(&["create-secret-key", "--output", &format!("{k}/secret.key")])?;
    let broker_token = magnetar_tokens(&["create", "--subject", "broker", "--secret-key", &secret])?;
    let app_token = magnetar_tokens(&["create", "--subject", "app", "--secret-key", &secret])?;
    std::fs::write(keys.path().join("broker.token"), &broker_token)?;
    let bookie_config = keys.path().join("bookie.toml");
    std::fs::write(
        &bookie_config,
        format!(
            "tls_certificate_path = \"{k}/server.pem\"\ntls_key_path = \"{k}/server.key\"\n\
             [auth]\nenabled = true\ntoken_secret_key = \"{secret}\"\nallowed_roles = [\"broker\"]\n\
             [client]\nauthentication_parameters = \"file://{k}/broker.token\"\n\
             tls_trust_certs_file_path = \"{k}/ca.pem\"\n"
        ),
    )?;
    let bookkeeper = |params: &str| {
        format!(
            "{TEST_BROKER_CONFIG}bookkeeper_client_authentication_plugin = \
             \"org.apache.pulsar.client.impl.auth.AuthenticationToken\"\n\
             bookkeeper_client_authentication_parameters = \"{params}\"\n\
             bookkeeper_tls_trust_certs_file_path = \"{k}/ca.pem\"\n"
        )
    };
    let replication = Replication { ensemble_size: 2, write_quorum: 2, ack_quorum: 2 };
    let config_arg = bookie_config.display().to_string();
    let mut cluster = Cluster::start_full(2, 1, replication, &bookkeeper(&format!("file://{k}/broker.token")), |_| {
        vec!["--config".to_owned(), config_arg.clone()]
    })
    .await?;

    // The broker with the bookies' CA and a `broker` token stores and serves.
    let topic = "persistent://public/default/secured-bookies";
    ensure!(
        send_all(&cluster.broker.service_url(), topic, 20, Duration::from_secs(60)).await?,
        "the broker with a token did not get its messages stored\n{}",
        cluster.broker.log()
    );
    let client = Client::connect(&cluster.broker.service_url()).await?;
    let mut consumer = client
        .consumer(topic, "check")
        .subscription_type(SubscriptionType::Exclusive)
        .initial_position(InitialPosition::Earliest)
        .subscribe()
        .await?;
    for index in 0..20 {
        let message =
            tokio::time::timeout(Duration::from_secs(30), consumer.receive()).await.context("receive timed out")??;
        ensure!(message.payload == format!("secured-{index}").as_bytes(), "message {index} differs");
        consumer.ack(&message).await?;
    }
    drop(consumer);
    drop(client);
    for ledger in cluster.ledgers(topic.trim_start_matches("persistent://")).await? {
        ensure!(ledger.ensemble_size() == 2, "the topic's ledgers are on both bookies");
    }

    // Brokers whose token the bookies refuse: a role not allowed, then no token at all. Each
    // is the only broker, so it owns the topic; nothing it is sent is acknowledged.
    cluster.broker.terminate()?;
    for (case, settings) in [
        ("role app", bookkeeper(&format!("token:{app_token}"))),
        ("no token", { format!("{TEST_BROKER_CONFIG}bookkeeper_tls_trust_certs_file_path = \"{k}/ca.pem\"\n") }),
    ] {
        let index = cluster.add_broker(&settings).await?;
        let broker = &cluster.brokers()[index];
        let stored = send_all(&broker.service_url(), &format!("{topic}-{index}"), 1, Duration::from_secs(20)).await?;
        ensure!(!stored, "{case}: a broker the bookies refuse got a message acknowledged\n{}", broker.log());
        cluster.broker_mut(index).terminate()?;
    }
    let refusals = cluster.bookies.iter().map(|bookie| bookie.log()).collect::<Vec<_>>().join("\n");
    ensure!(
        refusals.contains("bookie refused a role not in allowed_roles"),
        "no refusal of role app logged:\n{refusals}"
    );
    ensure!(refusals.contains("no token"), "no refusal of a missing token logged:\n{refusals}");

    let mut logs = refusals;
    for broker in cluster.brokers() {
        logs.push_str(&broker.log());
    }
    ensure!(!logs.contains(&broker_token) && !logs.contains(&app_token), "a token appears in a log");
    Ok(())
}
