//! The WebAssembly host: one `Engine` per process, plugins compiled once
//! (and cached on disk as precompiled artefacts keyed by content hash and
//! engine compatibility), one sandboxed instance per pipeline per transform.
//!
//! Sandbox: no WASI capability is granted by default: no preopened files, no
//! environment, no sockets, stdio closed, clocks frozen at the Unix epoch and
//! randomness a fixed stream. `capabilities:` in the YAML opts in to real
//! clocks, randomness or stdio. Every store has a memory cap and a per-batch
//! time budget (epoch interruption); a trap poisons the instance, so the
//! caller recreates it with [`Instance::new`].
//!
//! This is the only module that calls `wasmtime::component::bindgen!`.

pub mod chain;

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{Config, Engine, Store, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use crate::config::{Capability, Limits};
use crate::message::{Message, Qos};

mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "transform",
    });
}

use bindings::sluice::transform::log::Level;
use bindings::sluice::transform::types as wit;
use bindings::{Transform, TransformPre};

/// How often the epoch ticks; time budgets are rounded up to it.
pub const EPOCH_TICK: Duration = Duration::from_millis(5);

/// Wasm host errors.
#[derive(Debug, thiserror::Error)]
pub enum WasmError {
    /// The plugin file cannot be read.
    #[error("cannot read plugin `{path}`: {source}")]
    Read {
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// Not a component, or does not compile.
    #[error("{0}")]
    Compile(String),
    /// Does not export the world, or imports something not granted.
    #[error("{0}")]
    Link(String),
    /// `init` returned an error or trapped.
    #[error("{0}")]
    Init(String),
    /// Engine set-up failed.
    #[error("cannot set up the WebAssembly engine: {0}")]
    Engine(String),
}

/// How a `process` call failed as a whole.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{reason}")]
pub struct CallError {
    /// `timeout`, `memory`, `trap` or `invalid` (label of the traps metric).
    pub kind: &'static str,
    /// Human-readable reason.
    pub reason: String,
}

/// The process-wide engine.
pub struct WasmHost {
    engine: Engine,
    cache_dir: Option<PathBuf>,
    stop_ticker: Arc<AtomicBool>,
}

impl Drop for WasmHost {
    fn drop(&mut self) {
        self.stop_ticker.store(true, Ordering::Relaxed);
    }
}

/// A compiled, linked plugin, ready to instantiate.
pub struct Plugin {
    pre: TransformPre<HostState>,
    engine: Engine,
    /// The file it came from.
    pub path: PathBuf,
}

/// Per-store host state.
pub struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    limits: StoreLimits,
    log: LogLimiter,
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

struct LogLimiter {
    pipeline: String,
    transform: String,
    window: Instant,
    count: u32,
    suppressed: u32,
}

/// Log records per second per instance before the host starts dropping.
const LOGS_PER_SECOND: u32 = 20;

impl bindings::sluice::transform::log::Host for HostState {
    fn log(&mut self, level: Level, message: String) {
        let l = &mut self.log;
        if l.window.elapsed() >= Duration::from_secs(1) {
            if l.suppressed > 0 {
                tracing::warn!(pipeline = %l.pipeline, transform = %l.transform, suppressed = l.suppressed, "plugin log records suppressed by the rate limit");
            }
            l.window = Instant::now();
            l.count = 0;
            l.suppressed = 0;
        }
        l.count += 1;
        if l.count > LOGS_PER_SECOND {
            l.suppressed += 1;
            return;
        }
        let message: String = message.chars().take(1024).collect();
        let (p, t) = (&l.pipeline, &l.transform);
        match level {
            Level::Trace => tracing::trace!(pipeline = %p, transform = %t, "plugin: {message}"),
            Level::Debug => tracing::debug!(pipeline = %p, transform = %t, "plugin: {message}"),
            Level::Info => tracing::info!(pipeline = %p, transform = %t, "plugin: {message}"),
            Level::Warn => tracing::warn!(pipeline = %p, transform = %t, "plugin: {message}"),
            Level::Error => tracing::error!(pipeline = %p, transform = %t, "plugin: {message}"),
        }
    }
}

impl bindings::sluice::transform::types::Host for HostState {}

struct FrozenWallClock;
impl wasmtime_wasi::HostWallClock for FrozenWallClock {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }
    fn now(&self) -> Duration {
        Duration::ZERO
    }
}

struct FrozenMonotonicClock;
impl wasmtime_wasi::HostMonotonicClock for FrozenMonotonicClock {
    fn resolution(&self) -> u64 {
        1_000_000_000
    }
    fn now(&self) -> u64 {
        0
    }
}

fn engine_error(e: impl std::fmt::Display) -> WasmError {
    WasmError::Engine(e.to_string())
}

impl WasmHost {
    /// Creates the engine and its epoch ticker. Compiled plugins are cached
    /// in `cache_dir` (none: no cache).
    pub fn new(cache_dir: Option<PathBuf>) -> Result<Self, WasmError> {
        let mut cfg = Config::new();
        cfg.wasm_component_model(true)
            .epoch_interruption(true)
            .max_wasm_stack(1 << 20);
        let engine = Engine::new(&cfg).map_err(engine_error)?;
        let stop = Arc::new(AtomicBool::new(false));
        let (e, s) = (engine.weak(), stop.clone());
        std::thread::Builder::new()
            .name("sluice-epoch".into())
            .spawn(move || {
                while !s.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    match e.upgrade() {
                        Some(engine) => engine.increment_epoch(),
                        None => return,
                    }
                }
            })
            .map_err(engine_error)?;
        Ok(WasmHost {
            engine,
            cache_dir,
            stop_ticker: stop,
        })
    }

    /// The default cache folder: `$SLUICE_CACHE_DIR`, else
    /// `$XDG_CACHE_HOME/sluice`, else `$HOME/.cache/sluice`.
    pub fn default_cache_dir() -> Option<PathBuf> {
        if let Some(d) = std::env::var_os("SLUICE_CACHE_DIR") {
            return Some(PathBuf::from(d));
        }
        if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
            return Some(PathBuf::from(d).join("sluice"));
        }
        std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache").join("sluice"))
    }

    fn cache_key(&self, bytes: &[u8]) -> String {
        let content = Sha256::digest(bytes);
        let mut h = DefaultHasher::new();
        self.engine.precompile_compatibility_hash().hash(&mut h);
        let hex: String = content.iter().map(|b| format!("{b:02x}")).collect();
        format!("{hex}-{:016x}.cwasm", h.finish())
    }

    fn compile(&self, path: &Path) -> Result<Component, WasmError> {
        let bytes = std::fs::read(path).map_err(|source| WasmError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        check_component_header(path, &bytes)?;
        let cached = self
            .cache_dir
            .as_ref()
            .map(|d| d.join(self.cache_key(&bytes)));
        if let Some(c) = &cached {
            if c.is_file() {
                // SAFETY: the file was written by `precompile_component` of an
                // engine with the same compatibility hash (it is in the name),
                // into a folder that only this runtime writes. wasmtime also
                // checks the header and rejects mismatches with an error.
                match unsafe { Component::deserialize_file(&self.engine, c) } {
                    Ok(comp) => return Ok(comp),
                    Err(e) => {
                        tracing::warn!(cache = %c.display(), error = %e, "ignoring unusable compiled-plugin cache entry")
                    }
                }
            }
        }
        let compile_err = |e: wasmtime::Error| {
            WasmError::Compile(format!(
                "plugin `{}` does not compile: {e:#}",
                path.display()
            ))
        };
        let Some(c) = cached else {
            return Component::new(&self.engine, &bytes).map_err(compile_err);
        };
        let pre = self
            .engine
            .precompile_component(&bytes)
            .map_err(compile_err)?;
        if let Err(e) = write_atomically(&c, &pre) {
            tracing::warn!(cache = %c.display(), error = %e, "cannot write compiled-plugin cache");
        }
        // SAFETY: `pre` was produced just now by this engine.
        unsafe { Component::deserialize(&self.engine, &pre) }.map_err(compile_err)
    }

    /// Compiles (or loads from cache) and links a plugin, checking that it
    /// exports the `sluice:transform/transform` world and imports nothing
    /// the host does not provide. (Capabilities shape each instance's WASI
    /// context, see [`Instance::new`].)
    pub fn load(&self, path: &Path) -> Result<Arc<Plugin>, WasmError> {
        let component = self.compile(path)?;
        let mut linker: Linker<HostState> = Linker::new(&self.engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(engine_error)?;
        Transform::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s)
            .map_err(engine_error)?;
        let pre = linker.instantiate_pre(&component).map_err(|e| {
            WasmError::Link(format!(
                "plugin `{}` cannot be linked: {e:#}",
                path.display()
            ))
        })?;
        let pre = TransformPre::new(pre).map_err(|e| {
            let exports: Vec<String> = component
                .component_type()
                .exports(&self.engine)
                .map(|(name, _)| format!("`{name}`"))
                .collect();
            let found = if exports.is_empty() {
                "it exports nothing".to_string()
            } else {
                format!("it exports {}", exports.join(", "))
            };
            WasmError::Link(format!(
                "plugin `{}` does not export the `sluice:transform/transform` world: {e:#} ({found})",
                path.display()
            ))
        })?;
        Ok(Arc::new(Plugin {
            pre,
            engine: self.engine.clone(),
            path: path.to_path_buf(),
        }))
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d)?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

fn check_component_header(path: &Path, bytes: &[u8]) -> Result<(), WasmError> {
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        return Err(WasmError::Compile(format!(
            "plugin `{}` is not a WebAssembly file",
            path.display()
        )));
    }
    if bytes[4..8] == [1, 0, 0, 0] {
        return Err(WasmError::Compile(format!(
            "plugin `{}` is a core WebAssembly module, not a component: build it for wasm32-wasip2 (or wrap it with `wasm-tools component new`)",
            path.display()
        )));
    }
    Ok(())
}

/// One sandboxed, initialised instance of a plugin.
pub struct Instance {
    store: Store<HostState>,
    bindings: Transform,
    ticks: u64,
}

impl Instance {
    /// Instantiates `plugin` for `pipeline`/`transform` and calls `init`.
    pub fn new(
        plugin: &Plugin,
        pipeline: &str,
        transform: &str,
        config_json: &str,
        limits: Limits,
        caps: &[Capability],
    ) -> Result<Self, WasmError> {
        let mut wasi = WasiCtxBuilder::new();
        if !caps.contains(&Capability::Clock) {
            wasi.wall_clock(FrozenWallClock)
                .monotonic_clock(FrozenMonotonicClock);
        }
        if !caps.contains(&Capability::Random) {
            use rand::SeedableRng;
            wasi.secure_random(rand::rngs::StdRng::seed_from_u64(0))
                .insecure_random(rand::rngs::StdRng::seed_from_u64(1))
                .insecure_random_seed(0);
        }
        if caps.contains(&Capability::Stdio) {
            wasi.inherit_stdout().inherit_stderr();
        }
        let state = HostState {
            wasi: wasi.build(),
            table: ResourceTable::new(),
            limits: StoreLimitsBuilder::new()
                .memory_size((limits.memory_mb as usize).saturating_mul(1 << 20))
                .trap_on_grow_failure(true)
                .build(),
            log: LogLimiter {
                pipeline: pipeline.to_string(),
                transform: transform.to_string(),
                window: Instant::now(),
                count: 0,
                suppressed: 0,
            },
        };
        let mut store = Store::new(&plugin.engine, state);
        store.limiter(|s| &mut s.limits);
        let ticks = limits
            .timeout_ms
            .div_ceil(EPOCH_TICK.as_millis() as u64)
            .max(1)
            + 1;
        store.set_epoch_deadline(ticks);
        store.epoch_deadline_trap();
        let bindings = plugin.pre.instantiate(&mut store).map_err(|e| {
            WasmError::Init(format!(
                "plugin `{}` failed to instantiate: {}",
                plugin.path.display(),
                describe_trap(&e).reason
            ))
        })?;
        store.set_epoch_deadline(ticks);
        let res = bindings
            .sluice_transform_transformer()
            .call_init(&mut store, config_json);
        match res {
            Ok(Ok(())) => Ok(Instance {
                store,
                bindings,
                ticks,
            }),
            Ok(Err(msg)) => Err(WasmError::Init(format!("plugin init failed: {msg}"))),
            Err(e) => Err(WasmError::Init(format!(
                "plugin init failed: {}",
                describe_trap(&e).reason
            ))),
        }
    }

    /// Runs one batch. Returns one result per input, or a [`CallError`]
    /// after which this instance must be replaced.
    pub fn process(
        &mut self,
        batch: &[Message],
    ) -> Result<Vec<Result<Vec<Message>, String>>, CallError> {
        let input: Vec<wit::Message> = batch.iter().map(to_wit).collect();
        self.store.set_epoch_deadline(self.ticks);
        let out = self
            .bindings
            .sluice_transform_transformer()
            .call_process(&mut self.store, &input)
            .map_err(|e| describe_trap(&e))?;
        if out.len() != batch.len() {
            return Err(CallError {
                kind: "invalid",
                reason: format!(
                    "plugin returned {} results for a batch of {} messages",
                    out.len(),
                    batch.len()
                ),
            });
        }
        Ok(out
            .into_iter()
            .map(|r| match r {
                Ok(msgs) => Ok(msgs.into_iter().map(from_wit).collect()),
                Err(e) => Err(e.message),
            })
            .collect())
    }
}

fn describe_trap(e: &wasmtime::Error) -> CallError {
    if let Some(t) = e.downcast_ref::<wasmtime::Trap>() {
        if *t == wasmtime::Trap::Interrupt {
            return CallError {
                kind: "timeout",
                reason: "plugin exceeded its time budget (limits.timeout_ms)".into(),
            };
        }
    }
    let text = format!("{e:#}");
    if text.contains("growing memory") || text.contains("memory") && text.contains("limit") {
        return CallError {
            kind: "memory",
            reason: "plugin exceeded its memory limit (limits.memory_mb)".into(),
        };
    }
    // `{e:#}` starts with "error while executing at wasm backtrace:"; the
    // trap itself (e.g. "wasm `unreachable` instruction executed") is the
    // root cause.
    let cause = e.root_cause().to_string();
    CallError {
        kind: "trap",
        reason: format!(
            "plugin trapped: {}",
            cause.lines().next().unwrap_or("unknown error")
        ),
    }
}

fn to_wit(m: &Message) -> wit::Message {
    wit::Message {
        topic: m.topic.clone(),
        kafka_topic: m.kafka_topic.clone(),
        key: m.key.as_ref().map(|k| k.to_vec()),
        payload: m.payload.to_vec(),
        headers: m
            .headers
            .iter()
            .map(|(name, value)| wit::Header {
                name: name.clone(),
                value: value.clone(),
            })
            .collect(),
        timestamp_ms: m.timestamp_ms,
        qos: match m.qos {
            Qos::AtMostOnce => wit::Qos::AtMostOnce,
            Qos::AtLeastOnce => wit::Qos::AtLeastOnce,
            Qos::ExactlyOnce => wit::Qos::ExactlyOnce,
        },
        retain: m.retain,
        content_type: m.content_type.clone(),
    }
}

fn from_wit(m: wit::Message) -> Message {
    Message {
        topic: m.topic,
        kafka_topic: m.kafka_topic,
        key: m.key.map(Into::into),
        payload: m.payload.into(),
        headers: m.headers.into_iter().map(|h| (h.name, h.value)).collect(),
        timestamp_ms: m.timestamp_ms,
        qos: match m.qos {
            wit::Qos::AtMostOnce => Qos::AtMostOnce,
            wit::Qos::AtLeastOnce => Qos::AtLeastOnce,
            wit::Qos::ExactlyOnce => Qos::ExactlyOnce,
        },
        retain: m.retain,
        content_type: m.content_type,
    }
}
