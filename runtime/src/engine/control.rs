//! Steering a running pipeline: pause, resume, restart and reload.
//!
//! Pause and restart reuse the drain of a shutdown (stop intake, settle and
//! ack everything in flight, flush, disconnect), so neither loses nor
//! duplicates a message. A reload that changes only the transform chain
//! swaps the chain between two batches without touching the connections; any
//! other change restarts the pipeline with the new configuration.

use std::sync::Arc;

use tokio::sync::watch;

use super::{State, Status};
use crate::config::Pipeline;
use crate::metrics::{PipelineMetrics, TransformMetrics};
use crate::wasm::chain::Chain;
use crate::wasm::WasmHost;

/// What the admin API asked for. Counters, so that every request is seen
/// even when two arrive before the supervisor looks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Control {
    pub paused: bool,
    pub restarts: u64,
    pub reloads: u64,
}

/// How a reload took effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reloaded {
    /// Only the transforms changed (or only plugin files): the new chain
    /// took over at a batch boundary, the connections stayed up.
    Swapped,
    /// The source, sink or another setting changed: the pipeline drained and
    /// restarted with the new configuration.
    Restarted,
    /// The pipeline is paused or not running: the new configuration applies
    /// when it starts.
    Staged,
}

/// Why an admin request was refused.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The new configuration names another pipeline.
    #[error(
        "the file now names pipeline `{found}`, not `{expected}`; rename needs a process restart"
    )]
    Renamed {
        /// The running pipeline's name.
        expected: String,
        /// The name in the file.
        found: String,
    },
    /// The new chain could not be built (compile or `init` failed).
    #[error("{0}")]
    Chain(String),
    /// The pipeline has stopped for good.
    #[error("pipeline has stopped")]
    Stopped,
}

/// A signal that turns true on shutdown or when the admin API asks the
/// running pipeline (started at `generation`) to stop: pause or restart.
pub(super) fn stop_signal(
    mut shutdown: watch::Receiver<bool>,
    mut control: watch::Receiver<Control>,
    generation: Control,
) -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        tokio::select! {
            _ = shutdown.wait_for(|s| *s) => {}
            _ = control.wait_for(|c| c.paused || c.restarts != generation.restarts) => {}
            // The run ended on its own: nobody listens any more.
            _ = tx.closed() => return,
        }
        tx.send_replace(true);
    });
    rx
}

/// Loads and initialises `p`'s transforms on a blocking thread. Returns the
/// chain (without stages when there are no transforms: it forwards every
/// input) and its metric handles.
pub(super) async fn build_chain(
    host: &Arc<WasmHost>,
    p: &Pipeline,
    metrics: &PipelineMetrics,
) -> Result<(Chain, Vec<TransformMetrics>), String> {
    let tm = metrics.resolve_transforms(&p.transform_names());
    let (h, name, ts, chain_tm) = (
        host.clone(),
        p.name.clone(),
        p.transforms.clone(),
        tm.clone(),
    );
    let chain = tokio::task::spawn_blocking(move || Chain::new(&h, &name, &ts, chain_tm))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|(i, e)| format!("transform `{}`: {e}", p.transforms[i].name))?;
    Ok((chain, tm))
}

impl Status {
    pub(super) fn set_config(&self, p: Pipeline) {
        if let Ok(mut c) = self.config.lock() {
            *c = Some(p);
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> Option<Pipeline> {
        self.config.lock().ok().and_then(|c| c.clone())
    }

    fn request(&self, f: impl FnOnce(&mut Control)) {
        self.control.send_modify(f);
    }

    /// Stops consuming: the pipeline drains what it holds (delivered and
    /// acked) and disconnects; the broker keeps the rest for its persistent
    /// session. Idempotent.
    pub fn pause(&self) {
        tracing::info!(pipeline = %self.name, "pause requested");
        self.request(|c| c.paused = true);
    }

    /// Undoes [`pause`](Self::pause). Idempotent.
    pub fn resume(&self) {
        tracing::info!(pipeline = %self.name, "resume requested");
        self.request(|c| c.paused = false);
    }

    /// Drains and starts again (also ends a restart backoff at once).
    pub fn restart(&self) {
        tracing::info!(pipeline = %self.name, "restart requested");
        self.request(|c| c.restarts += 1);
    }

    /// Puts `new` (already validated, plugins compiled and `init` checked)
    /// in force: swaps the chain in place when nothing but the transforms
    /// changed, else restarts with it.
    pub async fn reload(
        &self,
        new: Pipeline,
        host: &Arc<WasmHost>,
    ) -> Result<Reloaded, ControlError> {
        if new.name != self.name {
            return Err(ControlError::Renamed {
                expected: self.name.clone(),
                found: new.name,
            });
        }
        let (state, _) = self.state();
        if state == State::Stopped {
            return Err(ControlError::Stopped);
        }
        let old = self.config();
        let same_connections = old.as_ref().is_some_and(|o| {
            let strip = |p: &Pipeline| Pipeline {
                transforms: Vec::new(),
                ..p.clone()
            };
            strip(o) == strip(&new)
        });
        let swap = self.swap.lock().ok().and_then(|s| s.clone());
        let result = match swap {
            Some(swap) if same_connections && state == State::Running => {
                // Built beside the old chain, which keeps running meanwhile.
                let (chain, tm) = build_chain(host, &new, &self.metrics)
                    .await
                    .map_err(ControlError::Chain)?;
                if swap.send(chain).is_ok() {
                    self.metrics.set_transforms(tm);
                    self.set_config(new);
                    Reloaded::Swapped
                } else {
                    // The run ended meanwhile: the next start uses `new`.
                    self.set_config(new);
                    Reloaded::Staged
                }
            }
            _ => {
                // `new` was checked (plugins compiled, `init` called) by the
                // caller, before anything is stopped.
                let running = !matches!(state, State::Paused);
                if let Ok(mut p) = self.pending.lock() {
                    *p = Some(new);
                }
                if running {
                    self.request(|c| c.restarts += 1);
                    Reloaded::Restarted
                } else {
                    Reloaded::Staged
                }
            }
        };
        self.request(|c| c.reloads += 1);
        tracing::info!(pipeline = %self.name, how = ?result, "configuration reloaded");
        Ok(result)
    }
}
