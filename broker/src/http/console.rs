//! The web console under `/console`: a page and its scripts, shipped inside the binary
//! (`broker/console/`), that browse and operate the cluster through the admin API. The
//! files are open to anyone; what they show comes from the admin API with the token the
//! person logs in with, so the console can do exactly what that role can.

use axum::extract::Path;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;
use rust_embed::RustEmbed;

use super::{ApiError, AppState};

#[derive(RustEmbed)]
#[folder = "console/"]
struct Assets;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/console", get(|| async { Redirect::permanent("/console/") }))
        .route("/console/", get(|| async { asset("index.html") }))
        .route("/console/{*path}", get(|Path(path): Path<String>| async move { asset(&path) }))
}

fn asset(path: &str) -> Response {
    match Assets::get(path) {
        Some(file) => (
            [
                (header::CONTENT_TYPE, file.metadata.mimetype().to_owned()),
                (header::CACHE_CONTROL, "no-cache".to_owned()),
            ],
            file.data,
        )
            .into_response(),
        None => ApiError(StatusCode::NOT_FOUND, format!("no console file {path}")).into_response(),
    }
}
