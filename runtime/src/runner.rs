//! What the CLI commands do: validate files, run pipelines until shutdown.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::watch;

use crate::config::{self, Diagnostic, Diagnostics, Pipeline, TransformConfig};
use crate::engine::{self, Status};
use crate::http::{self, AppState};
use crate::metrics::Metrics;
use crate::wasm::WasmHost;

/// Loads every file and runs every check that needs no broker, including
/// compiling each plugin, linking it against the world and calling `init`
/// with its config. Returns the pipelines or every error found.
pub fn validate(files: &[PathBuf], host: &WasmHost) -> Result<Vec<Pipeline>, Diagnostics> {
    let mut errors = Vec::new();
    let mut pipelines = Vec::new();
    for f in files {
        let loaded = std::fs::read_to_string(f)
            .map_err(|e| {
                Diagnostics(vec![Diagnostic {
                    file: f.clone(),
                    pos: config::Pos { line: 1, col: 1 },
                    message: format!("cannot read file: {e}"),
                }])
            })
            .and_then(|text| {
                let name = pipeline_name_hint(&text);
                config::load_checked(f, &text, |k| std::env::var(k).ok(), &mut |t| {
                    check_plugin(t, &name, host)
                })
            });
        match loaded {
            Ok(p) => pipelines.push(p),
            Err(Diagnostics(d)) => errors.extend(d),
        }
    }
    finish(pipelines, errors)
}

/// Adds the cross-file checks and turns the findings into a result.
fn finish(
    pipelines: Vec<Pipeline>,
    mut errors: Vec<Diagnostic>,
) -> Result<Vec<Pipeline>, Diagnostics> {
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
    let mut errors: Vec<Diagnostic> = Vec::new();
    for p in &pipelines {
        for t in &p.transforms {
            for (pos, message) in check_plugin(t, &p.name, host) {
                errors.push(Diagnostic {
                    file: p.file.clone(),
                    pos,
                    message,
                });
            }
        }
    }
    finish(pipelines, errors)
}

/// The pipeline name for log context while the file is being checked.
fn pipeline_name_hint(text: &str) -> String {
    text.lines()
        .find_map(|l| l.strip_prefix("name:"))
        .map(|n| n.trim().to_string())
        .unwrap_or_default()
}

/// Compiles and links one plugin (checking its imports against its
/// grants) and calls its `init` with the config.
fn check_plugin(
    t: &TransformConfig,
    pipeline: &str,
    host: &WasmHost,
) -> Vec<(config::Pos, String)> {
    match host.check(t, pipeline) {
        Ok(()) => Vec::new(),
        Err((pos, e)) => vec![(pos, format!("transform `{}`: {e}", t.name))],
    }
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
