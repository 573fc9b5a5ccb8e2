//! What `produce` and `e2e` measure of the machine beside the load: the CPU time the server
//! processes and this tool spent (from /proc), and the disk's own fdatasync latency.
//!
//! CPU: `--server-pid PID` (repeatable) names the server processes; without it, every process
//! whose /proc/PID/comm is `magnetar` counts (a standalone, or brokers and bookies on this
//! machine). Their utime + stime (all threads) is read when the measured window opens and
//! again when it closes. A server on another machine is not seen: the figures are then null.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use tokio::time::Instant;
use tracing::warn;

/// Clock ticks per second of /proc/PID/stat's times. That is USER_HZ, which Linux fixes at 100
/// on every architecture we build for; `sysconf(_SC_CLK_TCK)` would say so too, but libc is no
/// dependency of this crate and this is no reason to add one.
const CLOCK_TICKS_PER_SECOND: f64 = 100.0;

/// The name (/proc/PID/comm) of a server process when no --server-pid is given.
const SERVER_COMM: &str = "magnetar";

/// Flags of the server-CPU and disk-baseline figures.
#[derive(Debug, Clone, clap::Args)]
pub struct HostArgs {
    /// A server process whose CPU time counts (repeatable) [default: every process whose
    /// /proc/PID/comm is `magnetar`].
    #[arg(long = "server-pid", value_name = "PID", value_parser = clap::value_parser!(u32).range(1..))]
    server_pids: Vec<u32>,
    /// Directory on the file system whose fdatasync latency the disk baseline measures
    /// [default: the system temp dir]; giving it turns the baseline on.
    #[arg(long, value_name = "DIR")]
    disk_dir: Option<PathBuf>,
    /// Run the disk baseline (`e2e` runs it unless --no-disk-baseline, `produce` only with
    /// this flag or --disk-dir).
    #[arg(long, conflicts_with = "no_disk_baseline")]
    disk_baseline: bool,
    /// Skip the disk baseline.
    #[arg(long)]
    no_disk_baseline: bool,
}

impl HostArgs {
    /// Where the disk baseline runs, if it runs: `on_by_default` is the command's default.
    pub fn disk_dir(&self, on_by_default: bool) -> Option<PathBuf> {
        let wanted = !self.no_disk_baseline && (on_by_default || self.disk_baseline || self.disk_dir.is_some());
        wanted.then(|| self.disk_dir.clone().unwrap_or_else(std::env::temp_dir))
    }

    /// Starts counting CPU time: finds the server processes and reads their times and ours.
    pub fn cpu_meter(&self) -> anyhow::Result<CpuMeter> {
        let pids = if self.server_pids.is_empty() {
            let found = processes_named(SERVER_COMM)?;
            if found.is_empty() {
                warn!("no process named {SERVER_COMM} on this machine: no server CPU figures (see --server-pid)");
            }
            found
        } else {
            for pid in &self.server_pids {
                if !Path::new(&format!("/proc/{pid}")).exists() {
                    bail!("--server-pid {pid}: no such process");
                }
            }
            self.server_pids.clone()
        };
        let server = pids.iter().map(|&pid| process_ticks(&pid.to_string()).ok()).collect();
        Ok(CpuMeter { pids, server, own: process_ticks("self")?, at: Instant::now() })
    }
}

/// CPU times at the start of a lap.
pub struct CpuMeter {
    pids: Vec<u32>,
    /// Each server process's ticks (None: it could not be read).
    server: Vec<Option<u64>>,
    own: u64,
    at: Instant,
}

/// CPU time spent over one lap.
#[derive(Debug, Clone, Default)]
pub struct CpuUse {
    /// The server processes (null without any).
    pub server_seconds: Option<f64>,
    pub pids: Vec<u32>,
    /// This process (producers and consumers both).
    pub own_seconds: f64,
    /// How long the lap was.
    pub seconds: f64,
}

impl CpuMeter {
    /// The CPU spent since the meter started or the last lap; the next lap starts now.
    pub fn lap(&mut self) -> anyhow::Result<CpuUse> {
        let server: Vec<Option<u64>> = self.pids.iter().map(|&pid| process_ticks(&pid.to_string()).ok()).collect();
        let own = process_ticks("self")?;
        let mut spent = 0u64;
        for ((pid, before), after) in self.pids.iter().zip(&self.server).zip(&server) {
            match (before, after) {
                (Some(before), Some(after)) => spent += after.saturating_sub(*before),
                _ => warn!(pid, "server process gone during the run: its CPU time is not counted"),
            }
        }
        let now = Instant::now();
        let used = CpuUse {
            server_seconds: (!self.pids.is_empty()).then(|| spent as f64 / CLOCK_TICKS_PER_SECOND),
            pids: self.pids.clone(),
            own_seconds: own.saturating_sub(self.own) as f64 / CLOCK_TICKS_PER_SECOND,
            seconds: (now - self.at).as_secs_f64(),
        };
        self.server = server;
        self.own = own;
        self.at = now;
        Ok(used)
    }
}

impl CpuUse {
    /// Server CPU microseconds per message (null without a server or messages).
    pub fn server_us_per(&self, messages: u64) -> Option<f64> {
        self.server_seconds.filter(|_| messages > 0).map(|seconds| seconds * 1e6 / messages as f64)
    }

    /// The JSON fields of these figures, `published` and `delivered` messages in the lap.
    pub fn json_fields(&self, published: u64, delivered: Option<u64>) -> serde_json::Map<String, serde_json::Value> {
        let seconds = self.seconds.max(f64::MIN_POSITIVE);
        let mut fields = serde_json::Map::new();
        let mut put = |key: &str, value: serde_json::Value| fields.insert(key.to_owned(), value);
        put("server_cpu_seconds", self.server_seconds.into());
        put("server_cpu_cores", self.server_seconds.map(|cpu| cpu / seconds).into());
        put("cpu_us_per_message", self.server_us_per(published).into());
        if let Some(delivered) = delivered {
            put("cpu_us_per_delivered_message", self.server_us_per(delivered).into());
        }
        put("server_pids", self.pids.clone().into());
        put("client_cpu_seconds", self.own_seconds.into());
        put("client_cpu_cores", (self.own_seconds / seconds).into());
        fields
    }

    /// The text lines of these figures, each after `indent`.
    pub fn write_text(
        &self,
        out: &mut impl Write,
        indent: &str,
        published: u64,
        delivered: Option<u64>,
    ) -> anyhow::Result<()> {
        let seconds = self.seconds.max(f64::MIN_POSITIVE);
        match self.server_seconds {
            Some(cpu) => {
                let per_delivered = delivered
                    .and_then(|delivered| self.server_us_per(delivered))
                    .map(|us| format!(", {us:.1} per delivered message"))
                    .unwrap_or_default();
                writeln!(
                    out,
                    "{indent}server CPU  {cpu:>12.2} s  ({:.2} cores, {} us per published message{per_delivered}; \
                     pids {:?})",
                    cpu / seconds,
                    self.server_us_per(published).map_or("n/a".to_owned(), |us| format!("{us:.1}")),
                    self.pids
                )?;
            }
            None => writeln!(
                out,
                "{indent}server CPU           n/a   (no server process on this machine; see --server-pid)"
            )?,
        }
        writeln!(
            out,
            "{indent}client CPU  {:>12.2} s  ({:.2} cores, this process)",
            self.own_seconds,
            self.own_seconds / seconds
        )?;
        Ok(())
    }
}

/// utime + stime (fields 14 and 15) of /proc/`pid`/stat, in clock ticks.
fn process_ticks(pid: &str) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
    // Field 2, the command name in parentheses, may hold spaces: count from after its ')'.
    let after_name = stat.rsplit_once(')').map(|(_, rest)| rest).with_context(|| format!("parse {path}"))?;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // fields[0] is field 3 (state), so field n is fields[n - 3].
    let field = |n: usize| -> anyhow::Result<u64> {
        fields.get(n - 3).and_then(|value| value.parse().ok()).with_context(|| format!("field {n} of {path}"))
    };
    Ok(field(14)? + field(15)?)
}

/// Every process whose /proc/PID/comm is `name`.
fn processes_named(name: &str) -> anyhow::Result<Vec<u32>> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").context("list /proc")? {
        let Ok(entry) = entry else { continue };
        let Some(pid) = entry.file_name().to_str().and_then(|name| name.parse::<u32>().ok()) else { continue };
        // A process may end between the listing and this read.
        if std::fs::read_to_string(entry.path().join("comm")).is_ok_and(|comm| comm.trim_end() == name) {
            pids.push(pid);
        }
    }
    pids.sort_unstable();
    Ok(pids)
}

/// The disk baseline's figures: `writes` 4 KiB write + fdatasync steps (see
/// `crate::journal_fdatasync_latencies`).
pub struct DiskBaseline {
    pub dir: PathBuf,
    /// Step latencies in microseconds, sorted.
    pub latencies_us: Vec<u32>,
}

/// 4 KiB writes timed by the disk baseline.
pub const DISK_BASELINE_WRITES: u64 = 2000;

impl DiskBaseline {
    /// Runs the baseline in `dir` (on a blocking thread).
    pub async fn measure(dir: PathBuf) -> anyhow::Result<DiskBaseline> {
        std::fs::create_dir_all(&dir).with_context(|| format!("create --disk-dir {}", dir.display()))?;
        let in_dir = dir.clone();
        let latencies_us =
            tokio::task::spawn_blocking(move || crate::journal_fdatasync_latencies(&in_dir, DISK_BASELINE_WRITES))
                .await
                .context("disk baseline thread")??;
        Ok(DiskBaseline { dir, latencies_us })
    }

    pub fn p50_ms(&self) -> f64 {
        crate::quantile_ms(&self.latencies_us, 0.50)
    }

    /// The JSON fields, with `publish_p50_ms` and `publish_p99_ms` in fdatasyncs.
    pub fn json_fields(&self, publish_p50_ms: f64, publish_p99_ms: f64) -> serde_json::Map<String, serde_json::Value> {
        let p50 = self.p50_ms();
        let in_syncs = |ms: f64| if p50 > 0.0 { ms / p50 } else { 0.0 };
        let mut fields = serde_json::Map::new();
        let mut put = |key: &str, value: serde_json::Value| fields.insert(key.to_owned(), value);
        put("disk_fdatasync_p50_ms", p50.into());
        put("disk_fdatasync_p99_ms", crate::quantile_ms(&self.latencies_us, 0.99).into());
        put("disk_fdatasync_max_ms", crate::quantile_ms(&self.latencies_us, 1.0).into());
        put("disk_fdatasync_writes", self.latencies_us.len().into());
        put("disk_dir", self.dir.display().to_string().into());
        put("publish_p50_in_fdatasyncs", in_syncs(publish_p50_ms).into());
        put("publish_p99_in_fdatasyncs", in_syncs(publish_p99_ms).into());
        fields
    }

    pub fn write_text(&self, out: &mut impl Write, publish_p50_ms: f64) -> anyhow::Result<()> {
        let p50 = self.p50_ms();
        writeln!(
            out,
            "fdatasync   p50 {p50:.3}  p99 {:.3}  max {:.3} ms   ({} x 4 KiB write + fdatasync, reused file in {})",
            crate::quantile_ms(&self.latencies_us, 0.99),
            crate::quantile_ms(&self.latencies_us, 1.0),
            self.latencies_us.len(),
            self.dir.display()
        )?;
        if p50 > 0.0 {
            writeln!(out, "p50/sync    {:>12.2}   (publish p50 / disk fdatasync p50)", publish_p50_ms / p50)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_cpu_is_read_and_the_disk_baseline_runs() {
        assert!(process_ticks("self").is_ok());
        assert!(processes_named("no-such-process-name").expect("lists /proc").is_empty());
        let dir = tempfile::tempdir().expect("temp dir");
        let latencies = crate::journal_fdatasync_latencies(dir.path(), 20).expect("baseline");
        assert_eq!(latencies.len(), 20);
        assert!(latencies.windows(2).all(|pair| pair[0] <= pair[1]));
        assert_eq!(std::fs::read_dir(dir.path()).expect("list").count(), 0, "the file is removed");
    }
}
