//! `deploy/local-cluster.sh` end to end: `up` starts etcd, three bookies and two brokers as
//! separate processes, `status` prints one `NAME PID ADDRESS` line for each, a message goes
//! through a broker (replicated 2/2/2 over the bookies), and `down` stops them all.
//!
//! The cluster runs on nine consecutive free ports below the kernel's ephemeral range
//! (`MAGNETAR_CLUSTER_PORT_BASE`), so it does not clash with tests running in parallel or with
//! a cluster on the default ports.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{bail, ensure, Context};
use magnetar_client::{Client, InitialPosition};
use magnetar_tests::binary;

const PROCESSES: [&str; 6] = ["etcd", "bookie-1", "bookie-2", "bookie-3", "broker-1", "broker-2"];

/// The script under test, run with a state dir, a binary and a port base of its own.
struct LocalCluster {
    dir: tempfile::TempDir,
    port_base: u16,
    magnetar: PathBuf,
}

impl LocalCluster {
    fn new() -> anyhow::Result<Self> {
        Ok(LocalCluster {
            dir: tempfile::tempdir().context("create the state dir")?,
            port_base: free_port_base()?,
            magnetar: binary("magnetar")?,
        })
    }

    fn script() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/local-cluster.sh")
    }

    /// Runs `local-cluster.sh <args>` and returns its output, whatever its exit status.
    fn run(&self, args: &[&str]) -> anyhow::Result<Output> {
        Command::new("bash")
            .arg(Self::script())
            .args(args)
            .env("MAGNETAR_CLUSTER_DIR", self.dir.path().join("cluster"))
            .env("MAGNETAR_BIN", &self.magnetar)
            .env("MAGNETAR_CLUSTER_PORT_BASE", self.port_base.to_string())
            .env_remove("MAGNETAR_METADATA_URL")
            .output()
            .with_context(|| format!("run local-cluster.sh {}", args.join(" ")))
    }

    /// Runs `local-cluster.sh <args>` and fails with its output unless it succeeds.
    fn run_ok(&self, args: &[&str]) -> anyhow::Result<String> {
        let output = self.run(args)?;
        if !output.status.success() {
            bail!("local-cluster.sh {} failed ({}):\n{}", args.join(" "), output.status, text(&output));
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }
}

impl Drop for LocalCluster {
    /// Stops whatever is still running, also when an assertion failed.
    fn drop(&mut self) {
        let _ = self.run(&["down"]);
    }
}

fn text(output: &Output) -> String {
    format!(
        "--- stdout ---\n{}--- stderr ---\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// A port p with p..p+8 free on loopback, below the ephemeral range (32768 and up on Linux)
/// that free ports of other tests come from.
fn free_port_base() -> anyhow::Result<u16> {
    // 1,200 candidate bases 20000, 20010 .. 31990; each test process starts at its own.
    let first = std::process::id() % 1_200;
    for candidate in 0..1_200u32 {
        let base = u16::try_from(20_000 + (first + candidate) % 1_200 * 10)?;
        let bound: Result<Vec<_>, _> = (base..base + 9).map(|port| TcpListener::bind(("127.0.0.1", port))).collect();
        if bound.is_ok() {
            return Ok(base);
        }
    }
    bail!("no nine consecutive free ports between 20000 and 32000")
}

/// Parses `status` output: (name, pid, address) per line; every line must have three columns.
fn parse_status(stdout: &str) -> anyhow::Result<Vec<(String, String, String)>> {
    stdout
        .lines()
        .map(|line| match line.split_whitespace().collect::<Vec<_>>()[..] {
            [name, pid, address] => Ok((name.to_owned(), pid.to_owned(), address.to_owned())),
            _ => bail!("status line {line:?} is not NAME PID ADDRESS"),
        })
        .collect()
}

#[tokio::test]
async fn local_cluster_up_status_down() -> anyhow::Result<()> {
    let cluster = LocalCluster::new()?;
    let base = cluster.port_base;

    let up = cluster.run_ok(&["up"])?;
    ensure!(up.contains("the local cluster is up"), "up output:\n{up}");

    let status = cluster.run_ok(&["status"])?;
    let lines = parse_status(&status)?;
    ensure!(lines.len() == 6, "six processes:\n{status}");
    let ports = [base, base + 2, base + 3, base + 4, base + 5, base + 7];
    for ((name, pid, address), (expected_name, port)) in lines.iter().zip(PROCESSES.iter().zip(ports)) {
        ensure!(name == expected_name, "{name} in place of {expected_name}:\n{status}");
        ensure!(pid.parse::<u32>().is_ok(), "{name} has a pid:\n{status}");
        ensure!(*address == format!("127.0.0.1:{port}"), "{name} at 127.0.0.1:{port}:\n{status}");
    }

    let again = cluster.run_ok(&["up"])?;
    ensure!(again.contains("already up"), "a second up says so:\n{again}");

    // A message through broker-1; its ledger is written to two of the three bookies.
    let client = Client::connect(&format!("pulsar://127.0.0.1:{}", base + 5)).await?;
    let mut producer = client.producer("local-cluster-topic").create().await?;
    let mut consumer =
        client.consumer("local-cluster-topic", "sub").initial_position(InitialPosition::Earliest).subscribe().await?;
    producer.send("through the local cluster").await?;
    let message =
        tokio::time::timeout(Duration::from_secs(30), consumer.receive()).await.context("a message within 30 s")??;
    ensure!(message.payload.as_ref() == b"through the local cluster", "{message:?}");
    consumer.ack(&message).await?;
    drop((producer, consumer, client));

    let down = cluster.run_ok(&["down"])?;
    ensure!(down.contains("the local cluster is down"), "down output:\n{down}");
    let after = cluster.run(&["status"])?;
    ensure!(!after.status.success(), "status fails once the cluster is down:\n{}", text(&after));
    let stdout = String::from_utf8_lossy(&after.stdout).into_owned();
    let lines = parse_status(&stdout)?;
    ensure!(lines.len() == 6 && lines.iter().all(|(_, pid, _)| pid == "-"), "every pid is '-':\n{stdout}");
    ensure!(cluster.dir.path().join("cluster/bookie-1/bookie.toml").exists(), "down keeps the config files and data");
    Ok(())
}
