//! The bookie's HTTP server (`http_listen`, BookKeeper's port 8000): `/metrics` in
//! Prometheus text, `/api/v1/bookie/state` and `/api/v1/bookie/info` in BookKeeper's JSON
//! shapes (read-only state; free and total disk space), and `/heartbeat`. Brokers read the
//! state and info of each registered bookie from here for `bookies/all`.

use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::bookie::Bookie;
use crate::metrics::BookieState;

/// What the routes read: the bookie and the directories whose disks it reports.
#[derive(Clone)]
pub struct BookieHttp {
    bookie: Arc<Bookie>,
    dirs: Vec<PathBuf>,
}

impl BookieHttp {
    pub fn new(bookie: Arc<Bookie>) -> Self {
        let config = bookie.config();
        let mut dirs = vec![config.data_dir.clone(), config.journal_dir()];
        dirs.dedup();
        BookieHttp { bookie, dirs }
    }

    /// Each readable directory's disk: (path, device id, total bytes, free bytes). Runs
    /// statvfs on a blocking thread (a dying disk can hang it).
    async fn disks(&self) -> Vec<(String, u64, u64, u64)> {
        use std::os::unix::fs::MetadataExt;
        let dirs = self.dirs.clone();
        tokio::task::spawn_blocking(move || {
            dirs.iter()
                .filter_map(|dir| {
                    let device = std::fs::metadata(dir).ok()?.dev();
                    let (total, free) = crate::disk::space(dir).ok()?;
                    Some((dir.display().to_string(), device, total, free))
                })
                .collect()
        })
        .await
        .unwrap_or_default()
    }

    /// The bookie's state now: read-only, each directory's disk, cache sizes.
    pub async fn state(&self) -> BookieState {
        let disks = self.disks().await.into_iter().map(|(dir, _, total, free)| (dir, total, free)).collect();
        let (write_cache_bytes, read_cache_bytes) = self.bookie.storage().cache_bytes();
        BookieState { read_only: self.bookie.is_read_only(), disks, read_cache_bytes, write_cache_bytes }
    }

    /// The registry of the bookie's metrics, for parts that add theirs.
    pub fn registry(&self) -> &prometheus::Registry {
        self.bookie.metrics().registry()
    }

    /// Prometheus text of the bookie's metrics as of now.
    pub async fn metrics_text(&self) -> String {
        crate::metrics::encode(vec![self.families().await])
    }

    /// The bookie's metric families as of now (to merge with other bookies').
    pub async fn families(&self) -> Vec<prometheus::proto::MetricFamily> {
        let state = self.state().await;
        self.bookie.metrics().gather(&state)
    }

    pub fn router(self) -> Router {
        Router::new()
            .route("/metrics", get(metrics))
            .route("/api/v1/bookie/state", get(state))
            .route("/api/v1/bookie/info", get(info))
            .route("/heartbeat", get(|| async { "OK\n" }))
            .fallback(|| async { (StatusCode::NOT_FOUND, Json(json!({ "reason": "no such resource" }))) })
            .with_state(self)
    }

    /// Serves the routes on `listener` until `cancel`.
    pub async fn serve(self, listener: TcpListener, cancel: CancellationToken) -> std::io::Result<()> {
        axum::serve(listener, self.router()).with_graceful_shutdown(cancel.cancelled_owned()).await
    }
}

async fn metrics(State(http): State<BookieHttp>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], http.metrics_text().await)
}

/// BookKeeper's `/api/v1/bookie/state`.
async fn state(State(http): State<BookieHttp>) -> impl IntoResponse {
    let read_only = http.bookie.is_read_only();
    Json(json!({
        "running": true,
        "readOnly": read_only,
        "shuttingDown": false,
        "availableForHighPriorityWrites": !read_only,
    }))
}

/// BookKeeper's `/api/v1/bookie/info`: free and total bytes of the disks holding the
/// bookie's directories (a disk holding two of them counts once).
async fn info(State(http): State<BookieHttp>) -> impl IntoResponse {
    let mut devices = std::collections::HashSet::new();
    let (mut free, mut total) = (0u64, 0u64);
    for (_, device, disk_total, disk_free) in http.disks().await {
        if devices.insert(device) {
            total += disk_total;
            free += disk_free;
        }
    }
    Json(json!({ "freeSpace": free, "totalSpace": total }))
}
