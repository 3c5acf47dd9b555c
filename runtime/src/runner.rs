//! What the CLI commands do: validate files, run pipelines until shutdown.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::watch;

use crate::config::{self, Diagnostic, Diagnostics, Pipeline, TransformConfig};
use crate::engine::{self, Reloaded, Status};
use crate::http::{self, AdminAccess, AppState, ServeError};
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

/// Why a reload was refused; the running pipeline is left as it was.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The file no longer validates.
    #[error("{0}")]
    Invalid(Diagnostics),
    /// The pipeline refused the new configuration.
    #[error(transparent)]
    Control(#[from] engine::ControlError),
    /// A worker thread failed.
    #[error("reload failed: {0}")]
    Internal(String),
}

/// Re-reads the pipeline's file, checks it as `validate` does (compiling
/// the plugins and calling `init`, beside the running version), then puts
/// it in force. On any error the running pipeline is untouched.
pub async fn reload(status: &Arc<Status>, host: &Arc<WasmHost>) -> Result<Reloaded, ReloadError> {
    let file = status
        .config()
        .map(|p| p.file)
        .ok_or_else(|| ReloadError::Internal("pipeline has no configuration yet".into()))?;
    let h = host.clone();
    let checked = tokio::task::spawn_blocking(move || validate(&[file], &h))
        .await
        .map_err(|e| ReloadError::Internal(e.to_string()))?;
    let new = match checked {
        Ok(mut p) if p.len() == 1 => p.remove(0),
        Ok(_) => return Err(ReloadError::Internal("expected one pipeline".into())),
        Err(d) => {
            tracing::warn!(pipeline = %status.name, errors = %d, "reload refused: the file does not validate; the running version stays");
            return Err(ReloadError::Invalid(d));
        }
    };
    Ok(status.reload(new, host).await?)
}

/// Runs `pipelines` until `shutdown` turns true, serving HTTP on `listen`
/// with admin actions as `admin` allows. `on_listen` is called with the
/// bound address once the listener is up.
pub async fn run(
    pipelines: Vec<Pipeline>,
    host: Arc<WasmHost>,
    metrics: Arc<Metrics>,
    (listen, admin): (SocketAddr, AdminAccess),
    shutdown: watch::Receiver<bool>,
    on_listen: impl FnOnce(SocketAddr, &[Arc<Status>]),
) -> Result<(), ServeError> {
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
        host: host.clone(),
        admin,
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

/// What identifies one version of a file for [`watch_files`].
type Fingerprint = Vec<Option<(std::time::SystemTime, u64)>>;

fn fingerprint(p: &Pipeline) -> Fingerprint {
    std::iter::once(&p.file)
        .chain(p.transforms.iter().map(|t| &t.plugin))
        .map(|f| {
            let m = std::fs::metadata(f).ok()?;
            Some((m.modified().ok()?, m.len()))
        })
        .collect()
}

/// Reloads a pipeline when its file or one of its plugin files changes,
/// polling every `every` until `shutdown`. A change is acted on once the
/// files have stayed the same for one more poll (a write has finished). A
/// version that fails to validate is reported and left alone until the
/// files change again; the running version stays.
pub async fn watch_files(
    statuses: Vec<Arc<Status>>,
    host: Arc<WasmHost>,
    every: std::time::Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    // Per pipeline: the version in force (or last tried) and a candidate.
    let mut seen: Vec<(Option<Fingerprint>, Option<Fingerprint>)> =
        statuses.iter().map(|_| (None, None)).collect();
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        for (s, (current, candidate)) in statuses.iter().zip(seen.iter_mut()) {
            let Some(p) = s.config() else { continue };
            let now = fingerprint(&p);
            let Some(cur) = current else {
                *current = Some(now);
                continue;
            };
            if *cur == now {
                *candidate = None;
                continue;
            }
            if candidate.as_ref() != Some(&now) {
                // Changed since the last poll: wait until it settles.
                *candidate = Some(now);
                continue;
            }
            tracing::info!(pipeline = %s.name, "pipeline or plugin file changed: reloading");
            match reload(s, &host).await {
                Ok(how) => {
                    tracing::info!(pipeline = %s.name, how = ?how, "reloaded after a file change")
                }
                Err(e) => {
                    tracing::error!(pipeline = %s.name, error = %e, "reload after a file change failed; the running version stays")
                }
            }
            // Fingerprint of what is in force now (the plugin list may have changed).
            *current = Some(s.config().map(|p| fingerprint(&p)).unwrap_or(now));
            *candidate = None;
        }
    }
}
