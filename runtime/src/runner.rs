//! What the CLI commands do: validate files, run pipelines until shutdown.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::watch;

use crate::config::{self, Diagnostic, Diagnostics, Pipeline};
use crate::engine::{self, Status};
use crate::http::{self, AppState};
use crate::metrics::Metrics;
use crate::wasm::{Instance, WasmHost};

/// Loads every file and runs every check that needs no broker, including
/// compiling each plugin, linking it against the world and calling `init`
/// with its config. Returns the pipelines or every error found.
pub fn validate(files: &[PathBuf], host: &WasmHost) -> Result<Vec<Pipeline>, Diagnostics> {
    let mut errors = Vec::new();
    let mut pipelines = Vec::new();
    for f in files {
        match config::load(f) {
            Ok(p) => {
                errors.extend(check_plugins(&p, host));
                pipelines.push(p);
            }
            Err(Diagnostics(d)) => errors.extend(d),
        }
    }
    if let Err(Diagnostics(d)) = config::check_unique_names(&pipelines) {
        errors.extend(d);
    }
    if errors.is_empty() {
        Ok(pipelines)
    } else {
        Err(Diagnostics(errors))
    }
}

/// Runs the plugin checks of [`validate`] on pipelines already loaded.
pub fn validate_loaded(
    pipelines: Vec<Pipeline>,
    host: &WasmHost,
) -> Result<Vec<Pipeline>, Diagnostics> {
    let mut errors: Vec<Diagnostic> = pipelines
        .iter()
        .flat_map(|p| check_plugins(p, host))
        .collect();
    if let Err(Diagnostics(d)) = config::check_unique_names(&pipelines) {
        errors.extend(d);
    }
    if errors.is_empty() {
        Ok(pipelines)
    } else {
        Err(Diagnostics(errors))
    }
}

fn check_plugins(p: &Pipeline, host: &WasmHost) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    for t in &p.transforms {
        let diag = |pos, message| Diagnostic {
            file: p.file.clone(),
            pos,
            message,
        };
        match host.load(&t.plugin, &t.capabilities) {
            Ok(plugin) => {
                if let Err(e) = Instance::new(
                    &plugin,
                    &p.name,
                    &t.name,
                    &t.config_json,
                    t.limits,
                    &t.capabilities,
                ) {
                    out.push(diag(t.config_pos, format!("transform `{}`: {e}", t.name)));
                }
            }
            Err(e) => out.push(diag(t.plugin_pos, format!("transform `{}`: {e}", t.name))),
        }
    }
    out
}

/// Runs `pipelines` until `shutdown` turns true, serving HTTP on `listen`.
/// `on_listen` is called with the bound address once the listener is up.
pub async fn run(
    pipelines: Vec<Pipeline>,
    host: Arc<WasmHost>,
    metrics: Arc<Metrics>,
    listen: SocketAddr,
    shutdown: watch::Receiver<bool>,
    on_listen: impl FnOnce(SocketAddr, &[Arc<Status>]),
) -> std::io::Result<()> {
    let statuses: Vec<Arc<Status>> = pipelines
        .iter()
        .map(|p| {
            let m = metrics.pipeline(&p.name, &p.transform_names());
            Arc::new(Status::new(&p.name, Arc::new(m)))
        })
        .collect();
    let state = Arc::new(AppState {
        metrics: metrics.clone(),
        pipelines: statuses.clone(),
    });
    let (addr, server) = http::serve(listen, state, shutdown.clone()).await?;
    on_listen(addr, &statuses);
    let mut tasks = Vec::new();
    for (p, s) in pipelines.into_iter().zip(statuses) {
        tasks.push(tokio::spawn(engine::supervise(
            p,
            host.clone(),
            s,
            shutdown.clone(),
        )));
    }
    for t in tasks {
        let _ = t.await;
    }
    let _ = server.await;
    Ok(())
}
