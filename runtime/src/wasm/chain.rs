//! A pipeline's transform chain: batches in, one [`Outcome`] per input out.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use smallvec::SmallVec;

use super::{CallError, Instance, Plugin, WasmError, WasmHost};
use crate::config::TransformConfig;
use crate::connectors::Failure;
use crate::message::Message;
use crate::metrics::TransformMetrics;

/// The traps metric's kind for results that break the contract or limits.
const INVALID: &str = "invalid";

/// After a batch's call failed, its messages are tried alone until those
/// that fail alone, and the instances made after them, have taken this
/// many times `limits.timeout_ms`.
const ALONE_BUDGET: u32 = 2;

/// The messages one input became. Most transforms return one message per
/// input, which then needs no allocation of its own.
pub type Outputs = SmallVec<[Message; 1]>;

/// What became of one input message.
#[derive(Debug)]
pub enum Outcome {
    /// Deliver these (none: dropped on purpose by a transform).
    Deliver(Outputs),
    /// Deliver the input itself, unchanged (a pipeline without transforms).
    Forward,
    /// Failed: send the input down the error path.
    Failed(Failure),
}

impl Outcome {
    /// What to deliver for `input`, whose outcome this is; `None` when it
    /// failed.
    pub fn outputs<'a>(&'a self, input: &'a Message) -> Option<&'a [Message]> {
        match self {
            Outcome::Deliver(outs) => Some(outs),
            Outcome::Forward => Some(std::slice::from_ref(input)),
            Outcome::Failed(_) => None,
        }
    }
}

struct Stage {
    cfg: TransformConfig,
    plugin: Arc<Plugin>,
    instance: Option<Instance>,
    metrics: Option<TransformMetrics>,
}

/// The chain of transforms of one pipeline.
pub struct Chain {
    pipeline: String,
    stages: Vec<Stage>,
}

impl Chain {
    /// Loads and initialises every transform. `metrics` is one entry per
    /// transform, in order (empty for `sluice test`, which counts nothing).
    pub fn new(
        host: &WasmHost,
        pipeline: &str,
        transforms: &[TransformConfig],
        mut metrics: Vec<TransformMetrics>,
    ) -> Result<Self, (usize, WasmError)> {
        let mut stages = Vec::new();
        metrics.reverse();
        for (i, t) in transforms.iter().enumerate() {
            let plugin = host.load(t).map_err(|e| (i, e))?;
            let instance = Instance::new(&plugin, pipeline, t).map_err(|e| (i, e))?;
            stages.push(Stage {
                cfg: t.clone(),
                plugin,
                instance: Some(instance),
                metrics: metrics.pop(),
            });
        }
        Ok(Chain {
            pipeline: pipeline.to_string(),
            stages,
        })
    }

    /// Runs `batch` through every transform; a chain without transforms
    /// forwards every input.
    pub fn run(&mut self, batch: &[Message]) -> Vec<Outcome> {
        if self.stages.is_empty() {
            return batch.iter().map(|_| Outcome::Forward).collect();
        }
        let mut failed: Vec<Option<Failure>> = vec![None; batch.len()];
        // What each input became so far: the last stage's outputs go
        // straight here, without being regrouped.
        let mut outs: Vec<Outputs> = (0..batch.len()).map(|_| Outputs::new()).collect();
        // Messages flowing between stages and the input each came from; the
        // first stage reads the batch itself, no copy.
        let mut origins: Vec<usize> = (0..batch.len()).collect();
        let mut msgs: Cow<'_, [Message]> = Cow::Borrowed(batch);
        let last = self.stages.len() - 1;
        for (index, stage) in self.stages.iter_mut().enumerate() {
            if msgs.is_empty() {
                break;
            }
            let started = Instant::now();
            let result = stage.call(&self.pipeline, &msgs);
            if let Some(m) = &stage.metrics {
                m.duration.observe(started.elapsed().as_secs_f64());
            }
            let mut next_origins = Vec::new();
            let mut next = Vec::new();
            if index != last {
                next_origins.reserve(msgs.len());
                next.reserve(msgs.len());
            }
            match result {
                Ok(results) => {
                    for (&origin, r) in origins.iter().zip(results) {
                        match r {
                            Ok(o) if o.is_empty() => {
                                if let Some(m) = &stage.metrics {
                                    m.dropped.inc();
                                }
                            }
                            Ok(o) if index == last => {
                                if outs[origin].is_empty() {
                                    outs[origin] = o;
                                } else {
                                    outs[origin].extend(o);
                                }
                            }
                            Ok(o) => {
                                next_origins.extend(std::iter::repeat_n(origin, o.len()));
                                next.extend(o);
                            }
                            Err(reason) => {
                                failed[origin].get_or_insert(Failure {
                                    stage: "transform",
                                    transform: Some(stage.cfg.name.clone()),
                                    reason,
                                });
                            }
                        }
                    }
                }
                Err(reason) => {
                    for &origin in &origins {
                        failed[origin].get_or_insert(Failure {
                            stage: "transform",
                            transform: Some(stage.cfg.name.clone()),
                            reason: reason.clone(),
                        });
                    }
                }
            }
            origins = next_origins;
            msgs = Cow::Owned(next);
        }
        failed
            .into_iter()
            .zip(outs)
            .map(|(f, o)| match f {
                Some(f) => Outcome::Failed(f),
                None => Outcome::Deliver(o),
            })
            .collect()
    }
}

impl Stage {
    /// Calls the plugin with `msgs`: one result per message. Inputs whose
    /// outputs break the output limits fail alone and are counted as
    /// `invalid` traps; the instance stays. When the call fails as a whole
    /// (a trap, an overrun, a wrong number of results, malformed results),
    /// the instance is dropped and, for a batch of more than one message,
    /// each message is tried again alone, starting on a fresh instance (and
    /// on another after each that fails), so that only the messages that
    /// fail alone fail: a panic on one message does not send its neighbours
    /// to the error path, nor does a batch too large for `limits.memory_mb`
    /// or `limits.timeout_ms` together. Once the messages that failed alone
    /// and the instances made after them have taken more than
    /// [`ALONE_BUDGET`] time budgets, the rest of the
    /// batch fails with the batch's reason, untried, so that a plugin that
    /// spins on every message stalls the pipeline for a few budgets, not
    /// for one per message. Every failed call counts as a trap of its kind.
    /// `Err` only when no instance could be made.
    fn call(
        &mut self,
        pipeline: &str,
        msgs: &[Message],
    ) -> Result<Vec<Result<Outputs, String>>, String> {
        let e = match self.call_once(pipeline, msgs)? {
            Ok(results) => return Ok(results),
            Err(e) if msgs.len() == 1 => {
                tracing::warn!(pipeline, transform = %self.cfg.name, kind = e.kind, error = %e.reason, "plugin call failed; recreating the instance");
                return Ok(vec![Err(e.reason)]);
            }
            Err(e) => e,
        };
        let budget = Duration::from_millis(self.cfg.limits.timeout_ms).saturating_mul(ALONE_BUDGET);
        let mut spent = Duration::ZERO;
        let mut results = Vec::with_capacity(msgs.len());
        let (mut failed, mut untried) = (0, 0);
        for (i, m) in msgs.iter().enumerate() {
            if spent > budget {
                untried = msgs.len() - i;
                let reason = format!(
                    "{} (the plugin failed on its whole batch, and then on {failed} of its \
                     messages alone for {} ms, more than {ALONE_BUDGET} times \
                     limits.timeout_ms: the rest were not tried alone)",
                    e.reason,
                    spent.as_millis()
                );
                results.extend(msgs[i..].iter().map(|_| Err(reason.clone())));
                break;
            }
            let started = Instant::now();
            // A fresh instance's making counts too, whatever the call does
            // (`init` runs under the same time budget).
            let fresh = self.instance.is_none();
            match self.call_once(pipeline, std::slice::from_ref(m)) {
                Ok(Ok(mut one)) => {
                    if fresh {
                        spent += started.elapsed();
                    }
                    results.push(one.pop().unwrap_or_else(|| Err("no result".into())))
                }
                Ok(Err(alone)) => {
                    failed += 1;
                    spent += started.elapsed();
                    results.push(Err(alone.reason));
                }
                Err(reason) => {
                    untried = msgs.len() - i;
                    results.extend(msgs[i..].iter().map(|_| Err(reason.clone())));
                    break;
                }
            }
        }
        if failed == 0 && untried == 0 && matches!(e.kind, "timeout" | "memory") {
            // Every message fits alone: it is the batch that does not.
            tracing::warn!(pipeline, transform = %self.cfg.name, kind = e.kind, error = %e.reason, batch = msgs.len(), "plugin call failed for the batch, but each of its messages went through alone; a smaller batch.max_messages or a larger limits.timeout_ms or limits.memory_mb would save the second pass");
        } else {
            tracing::warn!(pipeline, transform = %self.cfg.name, kind = e.kind, error = %e.reason, batch = msgs.len(), failed_alone = failed, untried, "plugin call failed; tried the messages of the batch alone");
        }
        Ok(results)
    }

    /// One call, on the current instance or a new one. A failed call drops
    /// the instance and counts as a trap of its kind.
    fn call_once(
        &mut self,
        pipeline: &str,
        msgs: &[Message],
    ) -> Result<Result<Vec<Result<Outputs, String>>, CallError>, String> {
        let instance = match &mut self.instance {
            Some(i) => i,
            None => match Instance::new(&self.plugin, pipeline, &self.cfg) {
                Ok(i) => self.instance.insert(i),
                Err(e) => {
                    return Err(format!(
                        "transform `{}` could not be restarted: {e}",
                        self.cfg.name
                    ))
                }
            },
        };
        Ok(match instance.process(msgs) {
            Ok(p) => {
                if p.over_limit > 0 {
                    if let Some(m) = &self.metrics {
                        m.traps_by(INVALID, p.over_limit as u64);
                    }
                    tracing::warn!(pipeline, transform = %self.cfg.name, inputs = p.over_limit, batch = msgs.len(), "plugin outputs for some inputs exceed limits.max_outputs or limits.max_output_bytes; those inputs failed");
                }
                Ok(p.results)
            }
            Err(e) => {
                if let Some(m) = &self.metrics {
                    m.trap(e.kind);
                }
                self.instance = None;
                Err(e)
            }
        })
    }
}
