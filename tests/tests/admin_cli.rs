//! `magnetar-admin` against a real standalone: every verb it has, in tables and in JSON, with
//! the admin URL from the flag, from `MAGNETAR_ADMIN_URL` and from a client.conf; a refused
//! call prints the server's reason and exits non-zero.
//!
//! The tests live in a module named after the file so that
//! `cargo test --workspace --all-targets -- admin_cli` picks them out of the workspace.

use std::process::Output;

use anyhow::{ensure, Context, Result};
use magnetar_client::{Client, ProducerMessage};
use magnetar_tests::{binary, Standalone};
use serde_json::Value;

/// Runs `magnetar-admin ARGS` with `env` set.
async fn admin_with(env: &[(&str, &str)], args: &[&str]) -> Result<Output> {
    let mut command = tokio::process::Command::new(binary("magnetar-admin")?);
    command.args(args).env_remove("MAGNETAR_ADMIN_URL").env_remove("PULSAR_CLIENT_CONF");
    for (key, value) in env {
        command.env(key, value);
    }
    Ok(command.output().await?)
}

struct Admin {
    url: String,
}

impl Admin {
    /// A verb that must succeed: its standard output.
    async fn ok(&self, args: &[&str]) -> Result<String> {
        let mut all = vec!["--admin-url", self.url.as_str()];
        all.extend_from_slice(args);
        let output = admin_with(&[], &all).await?;
        let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        ensure!(output.status.success(), "magnetar-admin {args:?} failed: {stderr}{stdout}");
        Ok(stdout.into_owned())
    }

    /// A verb with `--output json`: its answer.
    async fn json(&self, args: &[&str]) -> Result<Value> {
        let mut all = args.to_vec();
        all.extend_from_slice(&["--output", "json"]);
        let text = self.ok(&all).await?;
        serde_json::from_str(&text).with_context(|| format!("{args:?} printed no JSON: {text}"))
    }

    /// A verb that must fail: its standard error.
    async fn fails(&self, args: &[&str]) -> Result<String> {
        let mut all = vec!["--admin-url", self.url.as_str()];
        all.extend_from_slice(args);
        let output = admin_with(&[], &all).await?;
        ensure!(!output.status.success(), "magnetar-admin {args:?} succeeded");
        Ok(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

mod admin_cli {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_verb_against_a_standalone() -> Result<()> {
        let standalone = Standalone::start().await?;
        let admin = Admin { url: standalone.http_url() };

        // Clusters, tenants, namespaces.
        assert_eq!(admin.json(&["clusters", "list"]).await?, serde_json::json!(["standalone"]));
        admin.ok(&["clusters", "get", "standalone"]).await?;
        admin.ok(&["tenants", "create", "ops", "--admin-roles", "alice,bob"]).await?;
        let tenant = admin.json(&["tenants", "get", "ops"]).await?;
        assert_eq!(tenant["adminRoles"], serde_json::json!(["alice", "bob"]), "{tenant}");
        assert_eq!(tenant["allowedClusters"], serde_json::json!(["standalone"]), "{tenant}");
        assert!(admin.ok(&["tenants", "list"]).await?.lines().any(|line| line == "ops"));
        admin.ok(&["namespaces", "create", "ops/app"]).await?;
        assert_eq!(admin.json(&["namespaces", "list", "ops"]).await?, serde_json::json!(["ops/app"]));
        admin.json(&["namespaces", "policies", "ops/app"]).await?;

        // Topics and their messages, produced by our client.
        let topic = "persistent://ops/app/orders";
        admin.ok(&["topics", "create", topic]).await?;
        admin.ok(&["topics", "create-subscription", topic, "-s", "audit", "-m", "earliest"]).await?;
        let client = Client::connect(&standalone.service_url()).await?;
        let mut producer = client.producer(topic).name("cli-producer").create().await?;
        let mut ids = Vec::new();
        for i in 0..5 {
            ids.push(producer.send_with(ProducerMessage::new(format!("order-{i}")).key(format!("k{i}"))).await?);
        }
        assert!(admin.ok(&["topics", "list", "ops/app"]).await?.contains(topic));
        let stats = admin.json(&["topics", "stats", topic]).await?;
        assert_eq!(stats["msgInCounter"], 5, "{stats}");
        assert_eq!(stats["publishers"][0]["producerName"], "cli-producer", "{stats}");
        assert_eq!(stats["subscriptions"]["audit"]["msgBacklog"], 5, "{stats}");
        let table = admin.ok(&["topics", "stats", topic]).await?;
        assert!(table.contains("msgInCounter") && table.contains("cli-producer"), "{table}");
        let internal = admin.json(&["topics", "stats-internal", topic]).await?;
        assert_eq!(internal["numberOfEntries"], 5, "{internal}");
        assert_eq!(admin.json(&["topics", "subscriptions", topic]).await?, serde_json::json!(["audit"]));

        let peeked = admin.json(&["topics", "peek-messages", topic, "-s", "audit", "-n", "2"]).await?;
        assert_eq!(peeked[0]["payload"], "order-0", "{peeked}");
        assert_eq!(peeked[1]["payload"], "order-1", "{peeked}");
        assert_eq!(peeked[0]["metadata"]["partition-key"], "k0", "{peeked}");
        let shown = admin.ok(&["topics", "peek-messages", topic, "-s", "audit"]).await?;
        assert!(shown.contains("Message ID:") && shown.contains("order-0"), "{shown}");
        // More than there is: what there is.
        let all = admin.json(&["topics", "peek-messages", topic, "-s", "audit", "-n", "9"]).await?;
        assert_eq!(all.as_array().map(Vec::len), Some(5), "{all}");

        admin.ok(&["topics", "skip", topic, "-s", "audit", "-n", "2"]).await?;
        let backlog = |stats: Value| stats["subscriptions"]["audit"]["msgBacklog"].clone();
        assert_eq!(backlog(admin.json(&["topics", "stats", topic]).await?), 3);
        let third = format!("{}:{}", ids[3].ledger_id, ids[3].entry_id);
        admin.ok(&["topics", "reset-cursor", topic, "-s", "audit", "-m", &third]).await?;
        assert_eq!(backlog(admin.json(&["topics", "stats", topic]).await?), 2);
        admin.ok(&["topics", "reset-cursor", topic, "-s", "audit", "-t", "1h"]).await?;
        assert_eq!(backlog(admin.json(&["topics", "stats", topic]).await?), 5);
        admin.ok(&["topics", "clear-backlog", topic, "-s", "audit"]).await?;
        assert_eq!(backlog(admin.json(&["topics", "stats", topic]).await?), 0);
        admin.ok(&["topics", "reset-cursor", topic, "-s", "audit", "-t", "1h"]).await?;
        admin.ok(&["topics", "expire-messages", topic, "-s", "audit", "-t", "3600"]).await?;
        assert_eq!(backlog(admin.json(&["topics", "stats", topic]).await?), 5);
        tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
        admin.ok(&["topics", "expire-messages", topic, "--all", "-t", "1"]).await?;
        assert_eq!(backlog(admin.json(&["topics", "stats", topic]).await?), 0);

        let last = admin.json(&["topics", "last-message-id", topic]).await?;
        assert_eq!(
            (last["ledgerId"].as_u64(), last["entryId"].as_u64()),
            (Some(ids[4].ledger_id), Some(ids[4].entry_id))
        );
        let (ledger, entry) = (ids[1].ledger_id.to_string(), ids[1].entry_id.to_string());
        let by_id = admin.json(&["topics", "get-message-by-id", topic, "-l", &ledger, "-e", &entry]).await?;
        assert_eq!(by_id[0]["payload"], "order-1", "{by_id}");
        let examined = admin.json(&["topics", "examine-message", topic, "-i", "earliest", "-m", "3"]).await?;
        assert_eq!(examined[0]["payload"], "order-2", "{examined}");

        // The messages carry keys k0..k4 (one each): compaction keeps all five.
        assert_eq!(admin.json(&["topics", "compaction-status", topic]).await?["status"], "NOT_RUN");
        let requested = admin.ok(&["topics", "compact", topic]).await?;
        assert!(requested.contains("compaction requested"), "{requested}");
        magnetar_tests::eventually(std::time::Duration::from_secs(20), "compaction finishes", || async {
            admin.json(&["topics", "compaction-status", topic]).await.is_ok_and(|status| status["status"] == "SUCCESS")
        })
        .await?;

        let terminated = admin.json(&["topics", "terminate", topic]).await?;
        assert_eq!(terminated, last, "terminate answers the last message id");
        ensure!(producer.send("after the end").await.is_err(), "a terminated topic refuses publishes");

        let refused = admin.fails(&["topics", "unsubscribe", topic, "-s", "missing"]).await?;
        assert!(refused.contains("404") && refused.contains("Subscription missing not found"), "{refused}");
        admin.ok(&["topics", "unsubscribe", topic, "-s", "audit"]).await?;
        producer.close().await?;
        admin.ok(&["topics", "unload", topic]).await?;
        admin.ok(&["topics", "delete", topic]).await?;

        // Partitioned topics.
        let parted = "persistent://ops/app/parted";
        admin.ok(&["topics", "create-partitioned-topic", parted, "-p", "2"]).await?;
        assert_eq!(admin.json(&["topics", "list-partitioned-topics", "ops/app"]).await?, serde_json::json!([parted]));
        let summed = admin.json(&["topics", "partitioned-stats", parted, "--per-partition"]).await?;
        assert_eq!(summed["metadata"]["partitions"], 2, "{summed}");
        assert_eq!(summed["partitions"].as_object().map(|p| p.len()), Some(2), "{summed}");
        admin.ok(&["topics", "delete-partitioned-topic", parted]).await?;

        // Schemas: none registered is a clear refusal.
        let missing = admin.fails(&["schemas", "get", parted]).await?;
        assert!(missing.contains("404"), "{missing}");

        // Brokers and bookies.
        assert_eq!(admin.ok(&["brokers", "healthcheck"]).await?.trim(), "ok");
        let brokers = admin.json(&["brokers", "list", "standalone"]).await?;
        let leader = admin.json(&["brokers", "leader-broker"]).await?;
        assert_eq!(brokers, serde_json::json!([leader["brokerId"].clone()]), "{brokers} {leader}");
        let bookies = admin.json(&["bookies", "list-bookies"]).await?;
        assert_eq!(bookies["bookies"].as_array().map(Vec::len), Some(1), "{bookies}");

        admin.ok(&["namespaces", "delete", "ops/app"]).await?;
        admin.ok(&["tenants", "delete", "ops"]).await?;
        assert!(admin.fails(&["tenants", "get", "ops"]).await?.contains("404"));
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_admin_url_comes_from_a_flag_the_environment_or_client_conf() -> Result<()> {
        let standalone = Standalone::start().await?;
        let url = standalone.http_url();
        let from_env = admin_with(&[("MAGNETAR_ADMIN_URL", &url)], &["clusters", "list"]).await?;
        assert!(from_env.status.success(), "{}", String::from_utf8_lossy(&from_env.stderr));
        assert_eq!(String::from_utf8_lossy(&from_env.stdout).trim(), "standalone");

        let dir = tempfile::tempdir()?;
        let conf = dir.path().join("client.conf");
        std::fs::write(&conf, format!("webServiceUrl={url}\nbrokerServiceUrl={}\n", standalone.service_url()))?;
        let conf = conf.to_string_lossy().into_owned();
        for (env, args) in [
            (vec![("PULSAR_CLIENT_CONF", conf.as_str())], vec!["tenants", "list"]),
            (vec![], vec!["--client-conf", conf.as_str(), "tenants", "list"]),
        ] {
            let output = admin_with(&env, &args).await?;
            assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
            assert!(String::from_utf8_lossy(&output.stdout).lines().any(|line| line == "public"));
        }

        // Nothing listens there: a clear error and exit 1.
        let port = magnetar_tests::free_port()?;
        let output = admin_with(&[], &["--admin-url", &format!("http://127.0.0.1:{port}"), "tenants", "list"]).await?;
        assert_eq!(output.status.code(), Some(1));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("admin API unreachable"), "{stderr}");
        // A bad topic name is refused before any call.
        let output = admin_with(&[], &["--admin-url", &url, "topics", "stats", "just-a-name"]).await?;
        assert_eq!(output.status.code(), Some(1));
        assert!(String::from_utf8_lossy(&output.stderr).contains("tenant/namespace/name"));
        Ok(())
    }
}
