//! The client's examples (client/examples/) run to completion against a real standalone: a
//! task queue on Shared with a dead-lettered job, and an ordered pipeline on Key_Shared.

use std::process::Command;

use anyhow::{ensure, Context};
use magnetar_tests::Standalone;

/// `target/<profile>/examples/<name>`, built by `cargo build --examples`.
fn example(name: &str) -> anyhow::Result<std::path::PathBuf> {
    let exe = std::env::current_exe().context("locate the test executable")?;
    let dir = exe.parent().and_then(std::path::Path::parent).context("test executable has no target dir")?;
    let path = dir.join("examples").join(name);
    ensure!(path.exists(), "{} not found: build it first (cargo build --examples)", path.display());
    Ok(path)
}

fn run(name: &str, service_url: &str) -> anyhow::Result<String> {
    let output = Command::new(example(name)?).arg(service_url).output().with_context(|| format!("run {name}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    ensure!(
        output.status.success(),
        "{name} failed ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(stdout)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_task_queue_and_the_ordered_pipeline_run_to_completion() -> anyhow::Result<()> {
    let standalone = Standalone::start().await?;
    let url = standalone.service_url();
    let queue = tokio::task::spawn_blocking({
        let url = url.clone();
        move || run("task_queue", &url)
    })
    .await??;
    ensure!(queue.contains("all 20 jobs settled") && queue.contains("-DLQ"), "task queue output:\n{queue}");
    let pipeline = tokio::task::spawn_blocking(move || run("ordered_pipeline", &url)).await??;
    ensure!(pipeline.contains("processed in order per key"), "pipeline output:\n{pipeline}");
    Ok(())
}
