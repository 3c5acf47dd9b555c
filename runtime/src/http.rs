//! The HTTP listener: `/metrics`, `/healthz`, `/readyz`, `/api/v1/pipelines`.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use tokio::sync::watch;

use crate::engine::Status;
use crate::metrics::Metrics;

/// What the handlers see.
pub struct AppState {
    /// Process metrics.
    pub metrics: Arc<Metrics>,
    /// One per pipeline.
    pub pipelines: Vec<Arc<Status>>,
}

/// Binds `addr` and serves until `shutdown` turns true. Returns the bound
/// address (useful with port 0) once listening.
pub async fn serve(
    addr: SocketAddr,
    state: Arc<AppState>,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/api/v1/pipelines", get(pipelines))
        .route("/api/v1/pipelines/{name}", get(pipeline))
        .with_state(state);
    let task = tokio::spawn(async move {
        let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
            let _ = shutdown.wait_for(|s| *s).await;
        });
        if let Err(e) = serve.await {
            tracing::error!(error = %e, "HTTP server failed");
        }
    });
    Ok((local, task))
}

async fn metrics(State(s): State<Arc<AppState>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.metrics.render(),
    )
}

async fn readyz(State(s): State<Arc<AppState>>) -> impl IntoResponse {
    let not_ready: Vec<&str> = s
        .pipelines
        .iter()
        .filter(|p| !p.ready())
        .map(|p| p.name.as_str())
        .collect();
    if not_ready.is_empty() {
        (StatusCode::OK, "ready\n".to_string())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", not_ready.join(", ")),
        )
    }
}

async fn pipelines(State(s): State<Arc<AppState>>) -> impl IntoResponse {
    Json(serde_json::json!({
        "pipelines": s.pipelines.iter().map(|p| p.json()).collect::<Vec<_>>()
    }))
}

async fn pipeline(State(s): State<Arc<AppState>>, Path(name): Path<String>) -> impl IntoResponse {
    match s.pipelines.iter().find(|p| p.name == name) {
        Some(p) => (StatusCode::OK, Json(p.json())),
        None => (
            StatusCode::NOT_FOUND,
            Json(serde_json::json!({ "error": format!("no pipeline named `{name}`") })),
        ),
    }
}
