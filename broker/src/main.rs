//! The `magnetar` server binary.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use magnetar_broker::standalone::{self, StandaloneConfig};
use tokio_util::sync::CancellationToken;
use tracing::info;

#[derive(Parser)]
#[command(name = "magnetar", version, about = "Magnetar: a Pulsar-compatible messaging platform")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// One process with embedded metadata (RocksDB), one bookie and one broker.
    Standalone {
        /// Where metadata, journal and entries are kept.
        #[arg(long, default_value = "./data", env = "MAGNETAR_DATA_DIR")]
        data_dir: PathBuf,
        /// Address the Pulsar and HTTP listeners bind to.
        #[arg(long, default_value = "0.0.0.0")]
        bind_address: String,
        /// Pulsar binary protocol port.
        #[arg(long, default_value_t = 6650)]
        pulsar_port: u16,
        /// HTTP port for admin and metrics.
        #[arg(long, default_value_t = 8080)]
        http_port: u16,
        /// Bookie gRPC port on loopback (0: any free port).
        #[arg(long, default_value_t = 0)]
        bookie_port: u16,
        /// Host name clients are told to connect to.
        #[arg(long, default_value = "127.0.0.1")]
        advertised_address: String,
    },
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let cancel = CancellationToken::new();
    let signal_cancel = cancel.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        info!("signal received");
        signal_cancel.cancel();
    });
    match cli.command {
        Command::Standalone { data_dir, bind_address, pulsar_port, http_port, bookie_port, advertised_address } => {
            let config =
                StandaloneConfig { data_dir, bind_address, pulsar_port, http_port, bookie_port, advertised_address };
            standalone::run(config, cancel).await
        }
    }
}
