//! The HTTP listener: `/metrics`, `/healthz`, `/readyz`, `/api/v1/pipelines`,
//! and the admin actions `POST /api/v1/pipelines/{name}/{pause|resume|restart|reload}`.
//!
//! Admin actions need `Authorization: Bearer TOKEN` when a token is
//! configured; without a token they are served on loopback addresses only.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use tokio::sync::watch;

use crate::engine::{Reloaded, Status};
use crate::metrics::Metrics;
use crate::runner::{self, ReloadError};
use crate::wasm::WasmHost;

/// What the handlers see.
pub struct AppState {
    /// Process metrics.
    pub metrics: Arc<Metrics>,
    /// One per pipeline.
    pub pipelines: Vec<Arc<Status>>,
    /// For reloads.
    pub host: Arc<WasmHost>,
    /// Who may use the admin actions.
    pub admin: AdminAccess,
}

/// Access to the mutating endpoints.
#[derive(Clone, Default)]
pub enum AdminAccess {
    /// Anyone who can reach the listener (refused on non-loopback addresses).
    #[default]
    Open,
    /// Requests must carry `Authorization: Bearer TOKEN`.
    Token(crate::config::Secret),
    /// Not served at all.
    Disabled,
}

/// Why the listener was not started.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Admin actions without a token on an address others can reach.
    #[error("refusing to serve the admin API on {0} without a token: set SLUICE_API_TOKEN (or --api-token-file), listen on a loopback address, or pass --no-admin-api")]
    UnprotectedAdmin(SocketAddr),
    /// Bind or accept failed.
    #[error("cannot listen on {addr}: {source}")]
    Io {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
}

/// Binds `addr` and serves until `shutdown` turns true. Returns the bound
/// address (useful with port 0) once listening.
pub async fn serve(
    addr: SocketAddr,
    state: Arc<AppState>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), ServeError> {
    if matches!(state.admin, AdminAccess::Open) && !addr.ip().is_loopback() {
        return Err(ServeError::UnprotectedAdmin(addr));
    }
    let io = |source| ServeError::Io { addr, source };
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(io)?;
    let local = listener.local_addr().map_err(io)?;
    let app = Router::new()
        .route("/api/v1/pipelines/{name}/{action}", post(admin))
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

/// Constant-time comparison of the bearer token.
fn authorized(access: &AdminAccess, headers: &HeaderMap) -> bool {
    match access {
        AdminAccess::Open => true,
        AdminAccess::Disabled => false,
        AdminAccess::Token(token) => {
            let given = headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .unwrap_or("")
                .as_bytes();
            let want = token.expose().as_bytes();
            given.len() == want.len()
                && given
                    .iter()
                    .zip(want)
                    .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                    == 0
        }
    }
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

async fn admin(
    State(s): State<Arc<AppState>>,
    Path((name, action)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if matches!(s.admin, AdminAccess::Disabled) {
        return error(
            StatusCode::FORBIDDEN,
            "the admin API is disabled (--no-admin-api)",
        );
    }
    if !authorized(&s.admin, &headers) {
        let mut r = error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
        return r;
    }
    let Some(p) = s.pipelines.iter().find(|p| p.name == name) else {
        return error(StatusCode::NOT_FOUND, format!("no pipeline named `{name}`"));
    };
    // `result` says how a reload took effect.
    let done = |result: Option<Reloaded>| {
        let mut body = json!({ "pipeline": name, "action": action });
        if let Some(r) = result {
            body["result"] = json!(r);
        }
        (StatusCode::ACCEPTED, Json(body)).into_response()
    };
    match action.as_str() {
        "pause" => {
            p.pause();
            done(None)
        }
        "resume" => {
            p.resume();
            done(None)
        }
        "restart" => {
            p.restart();
            done(None)
        }
        "reload" => match runner::reload(p, &s.host).await {
            Ok(how) => done(Some(how)),
            Err(ReloadError::Invalid(d)) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                Json(json!({
                    "error": "the file does not validate; the running version stays",
                    "errors": d.0.iter().map(|e| e.to_string()).collect::<Vec<_>>(),
                })),
            )
                .into_response(),
            Err(ReloadError::Control(e)) => error(StatusCode::CONFLICT, e.to_string()),
            Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        },
        other => error(
            StatusCode::NOT_FOUND,
            format!("unknown action `{other}`; expected pause, resume, restart or reload"),
        ),
    }
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
