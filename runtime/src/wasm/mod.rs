//! The WebAssembly host: engines shared by the whole process, plugins
//! compiled once (and cached on disk as precompiled artefacts keyed by
//! content hash and engine compatibility), one sandboxed instance per
//! pipeline per transform.
//!
//! Sandbox:
//! - **Imports.** A plugin may import the `sluice:transform` interfaces and
//!   a baseline of WASI interfaces that every Rust `wasm32-wasip2` guest
//!   imports and that give nothing away here: `wasi:io/*`, `wasi:cli/*`
//!   (stdio closed, environment empty, `exit` ends the call with a trap) and
//!   `wasi:random/insecure-seed` (a fixed seed). `wasi:clocks/*` needs the
//!   `clock` capability and `wasi:random/random` and `wasi:random/insecure`
//!   need `random`; files (`wasi:filesystem/*`), sockets (`wasi:sockets/*`)
//!   and anything else are never granted. [`WasmHost::load`] checks the
//!   component's imports against the transform's grants and names every
//!   import that is not allowed, before anything runs. `env:` grants named
//!   environment variables; `stdio` passes stdout and stderr through.
//! - **Limits** ([`Limits`]): total linear memory (the store's resource
//!   limiter traps on growth past it), a time budget per call (epoch
//!   interruption, ticking every [`EPOCH_TICK`]), the wasm stack (an engine
//!   setting in wasmtime, so the host keeps one engine per distinct
//!   `stack_kb`), and the number and size of the outputs for one input.
//!   A trap, a timeout, an overrun, a wrong number of results or malformed
//!   results (see `abi::Malformed`) fails the whole call and poisons the
//!   instance, so the caller recreates it with [`Instance::new`] (the
//!   chain then tries each message of the batch alone: see
//!   [`chain`]); too many or too large outputs for one input fail only that
//!   input (see [`Processed`]).
//!
//! This is the only module that calls `wasmtime::component::bindgen!`.

mod abi;
pub mod cache;
pub mod chain;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wasmtime::component::{
    Component, ComponentExportIndex, Func, HasSelf, Linker, ResourceTable, TypedFunc,
};
use wasmtime::{Config, Engine, EngineWeak, ResourceLimiter, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use crate::config::{Capability, Limits, Pos, TransformConfig};
use crate::message::Message;
use cache::{Lease, PluginCache};
use chain::Outputs;

mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "transform",
        // Batches are lowered into the guest straight from the host's
        // messages, without an owned copy of each one first.
        ownership: Borrowing { duplicate_if_necessary: true },
    });
}

use bindings::sluice::transform::log::Level;
use bindings::sluice::transform::types as wit;
use bindings::{Transform, TransformPre};

/// The interface every transform exports.
const TRANSFORMER: &str = "sluice:transform/transformer@0.1.0";

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
    /// The compiled-plugin cache's settings are wrong.
    #[error("{0}")]
    Cache(String),
}

/// How a `process` call failed as a whole.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{reason}")]
pub struct CallError {
    /// `timeout`, `memory`, `stack`, `trap` or `invalid` (label of the
    /// traps metric).
    pub kind: &'static str,
    /// Human-readable reason.
    pub reason: String,
}

/// The results of one successful `process` call.
#[derive(Debug)]
pub struct Processed {
    /// One per input, in order: its outputs, or why it failed.
    pub results: Vec<Result<Outputs, String>>,
    /// How many of those inputs failed because their outputs broke
    /// `limits.max_outputs` or `limits.max_output_bytes` (counted as
    /// `invalid` traps; the instance stays usable).
    pub over_limit: usize,
}

/// Longest transform error text kept (it becomes a Kafka header).
const MAX_ERROR_TEXT: usize = 4096;

/// The process's engines (one per distinct `limits.stack_kb`) and the
/// thread that ticks their epochs.
pub struct WasmHost {
    /// Engines by max wasm stack in bytes.
    engines: Mutex<Vec<(usize, Engine)>>,
    /// What the epoch thread ticks.
    ticking: Arc<Mutex<Vec<EngineWeak>>>,
    cache: Option<PluginCache>,
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
    /// The export `process`, called through [`abi::Batch`].
    process: ComponentExportIndex,
    engine: Engine,
    /// The file it came from.
    pub path: PathBuf,
    /// Keeps its compiled-plugin cache entry from being pruned while it
    /// is loaded.
    _cache_entry: Option<Lease>,
}

/// Per-store host state.
pub struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: Sandbox,
    log: LogLimiter,
}

/// Most table elements of one instance, all tables together.
const MAX_TABLE_ELEMENTS: usize = 1 << 20;

/// The store's resource limiter: caps the instance's linear memory (all its
/// memories together, so a component cannot multiply the cap by declaring
/// many memories) and tables, and remembers which cap was hit so that the
/// trap can be named.
struct Sandbox {
    memory_cap: usize,
    memory_used: usize,
    table_used: usize,
    hit_memory: bool,
}

impl Sandbox {
    /// Accounts a growth from `current` to `desired` against `used` and
    /// `cap` (all memories, or all tables, together). If it does not fit,
    /// remembers that a cap was hit and returns the total it would reach.
    fn grow(
        &mut self,
        used: fn(&mut Self) -> &mut usize,
        cap: usize,
        (current, desired, maximum): (usize, usize, Option<usize>),
    ) -> Result<bool, usize> {
        let total = used(self).saturating_add(desired.saturating_sub(current));
        if total > cap || maximum.is_some_and(|m| desired > m) {
            self.hit_memory = true;
            return Err(total);
        }
        *used(self) = total;
        Ok(true)
    }
}

impl ResourceLimiter for Sandbox {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let cap = self.memory_cap;
        self.grow(|s| &mut s.memory_used, cap, (current, desired, maximum))
            .map_err(|total| {
                wasmtime::Error::msg(format!("memory limit reached: growing to {total} bytes"))
            })
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.hit_memory = true;
        Err(error.context("memory growth failed"))
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.grow(
            |s| &mut s.table_used,
            MAX_TABLE_ELEMENTS,
            (current, desired, maximum),
        )
        .map_err(|total| {
            wasmtime::Error::msg(format!("table limit reached: growing to {total} elements"))
        })
    }

    fn table_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.hit_memory = true;
        Err(error.context("table growth failed"))
    }

    fn instances(&self) -> usize {
        1000
    }

    fn tables(&self) -> usize {
        1000
    }

    fn memories(&self) -> usize {
        100
    }
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
    /// Creates the engine for the default stack size and the epoch ticker.
    /// Compiled plugins are cached in `cache` (none: no cache).
    pub fn new(cache: Option<PluginCache>) -> Result<Self, WasmError> {
        let stop = Arc::new(AtomicBool::new(false));
        let ticking: Arc<Mutex<Vec<EngineWeak>>> = Arc::default();
        let (t, s) = (ticking.clone(), stop.clone());
        std::thread::Builder::new()
            .name("sluice-epoch".into())
            .spawn(move || {
                while !s.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    let Ok(mut engines) = t.lock() else { return };
                    engines.retain(|e| match e.upgrade() {
                        Some(engine) => {
                            engine.increment_epoch();
                            true
                        }
                        None => false,
                    });
                }
            })
            .map_err(engine_error)?;
        let host = WasmHost {
            engines: Mutex::default(),
            ticking,
            cache,
            stop_ticker: stop,
        };
        host.engine(Limits::default().stack_kb)?;
        Ok(host)
    }

    /// The engine for a max wasm stack of `stack_kb` KiB, created on first
    /// use. wasmtime sets the stack limit per engine, not per store, so each
    /// distinct `limits.stack_kb` gets its own engine (a plugin used with
    /// two stack sizes is compiled for each).
    fn engine(&self, stack_kb: u64) -> Result<Engine, WasmError> {
        let stack = usize::try_from(stack_kb)
            .ok()
            .and_then(|kb| kb.checked_mul(1024))
            .ok_or_else(|| WasmError::Engine(format!("stack of {stack_kb} KiB is too large")))?;
        let mut engines = self.engines.lock().map_err(engine_error)?;
        if let Some((_, e)) = engines.iter().find(|(s, _)| *s == stack) {
            return Ok(e.clone());
        }
        let mut cfg = Config::new();
        cfg.wasm_component_model(true)
            .epoch_interruption(true)
            .max_wasm_stack(stack);
        if std::env::var_os("SLUICE_WASM_PERFMAP").is_some_and(|v| !v.is_empty()) {
            // /tmp/perf-PID.map names each plugin function for `perf report`
            // (plugins/README.md, "Profile a transform").
            cfg.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        let engine = Engine::new(&cfg).map_err(engine_error)?;
        self.ticking
            .lock()
            .map_err(engine_error)?
            .push(engine.weak());
        engines.push((stack, engine.clone()));
        Ok(engine)
    }

    /// The plugin at `path` compiled by `engine`, and its lease on the
    /// cache entry it came from or went to (none without a cache, or when
    /// the entry could not be written).
    fn compile(
        &self,
        engine: &Engine,
        path: &Path,
    ) -> Result<(Component, Option<Lease>), WasmError> {
        let bytes = std::fs::read(path).map_err(|source| WasmError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        check_component_header(path, &bytes)?;
        let cached = self
            .cache
            .as_ref()
            .map(|cache| (cache, cache.entry_for(engine, &bytes)));
        if let Some((cache, c)) = &cached {
            if c.is_file() {
                // Before loading, so that another thread's prune keeps it.
                let lease = cache.used(c);
                // SAFETY: the file was written by `precompile_component` of an
                // engine with the same compatibility hash (it is in the name),
                // into a folder that only this runtime writes. wasmtime also
                // checks the header and rejects mismatches with an error.
                match unsafe { Component::deserialize_file(engine, c) } {
                    Ok(comp) => return Ok((comp, Some(lease))),
                    // Another process sharing the folder pruned it.
                    Err(e) if !c.exists() => {
                        tracing::debug!(cache = %c.display(), error = %e, "compiled-plugin cache entry deleted meanwhile")
                    }
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
        let Some((cache, c)) = cached else {
            let comp = Component::new(engine, &bytes).map_err(compile_err)?;
            return Ok((comp, None));
        };
        let pre = engine.precompile_component(&bytes).map_err(compile_err)?;
        let lease = match cache.store(&c, &pre) {
            Ok((lease, _)) => Some(lease),
            Err(e) => {
                tracing::warn!(cache = %c.display(), error = %e, "cannot write compiled-plugin cache");
                None
            }
        };
        // SAFETY: `pre` was produced just now by this engine.
        let comp = unsafe { Component::deserialize(engine, &pre) }.map_err(compile_err)?;
        Ok((comp, lease))
    }

    /// Compiles (or loads from cache) and links the plugin of transform
    /// `t`, checking that it exports the `sluice:transform/transform` world
    /// and imports nothing that `t` is not granted (see the module docs).
    pub fn load(&self, t: &TransformConfig) -> Result<Arc<Plugin>, WasmError> {
        let path = t.plugin.as_path();
        let engine = self.engine(t.limits.stack_kb)?;
        let (component, cache_entry) = self.compile(&engine, path)?;
        check_imports(path, &component, &engine, &t.capabilities)?;
        let mut linker: Linker<HostState> = Linker::new(&engine);
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
                .exports(&engine)
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
        let process = component
            .get_export_index(None, TRANSFORMER)
            .and_then(|i| component.get_export_index(Some(&i), "process"))
            .ok_or_else(|| {
                WasmError::Link(format!(
                    "plugin `{}` does not export `{TRANSFORMER}#process`",
                    path.display()
                ))
            })?;
        Ok(Arc::new(Plugin {
            pre,
            process,
            engine,
            path: path.to_path_buf(),
            _cache_entry: cache_entry,
        }))
    }

    /// What `validate` does for one transform: loads its plugin and
    /// initialises one instance with its config. On failure, returns where
    /// in the pipeline file the problem belongs (the `plugin:` value for
    /// load and link errors, the `config:` key for `init` errors).
    pub fn check(&self, t: &TransformConfig, pipeline: &str) -> Result<(), (Pos, WasmError)> {
        let plugin = self.load(t).map_err(|e| (t.plugin_pos, e))?;
        Instance::new(&plugin, pipeline, t).map_err(|e| (t.config_pos, e))?;
        Ok(())
    }
}

/// What a plugin needs to be allowed to import an interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Need {
    /// Always allowed: the host's version gives nothing away.
    Nothing,
    /// Allowed with this capability.
    Grant(Capability),
    /// Never allowed; says why.
    Never(&'static str),
}

/// The import policy, by interface name (`wasi:cli/stdout@0.2.6`).
fn import_need(name: &str) -> Need {
    let unversioned = name.split('@').next().unwrap_or(name);
    let (package, interface) = unversioned.split_once('/').unwrap_or((unversioned, ""));
    match (package, interface) {
        ("sluice:transform", _) | ("wasi:io", _) => Need::Nothing,
        (
            "wasi:cli",
            "environment" | "exit" | "stdin" | "stdout" | "stderr" | "terminal-input"
            | "terminal-output" | "terminal-stdin" | "terminal-stdout" | "terminal-stderr",
        ) => Need::Nothing,
        ("wasi:random", "insecure-seed") => Need::Nothing,
        ("wasi:random", "random" | "insecure") => Need::Grant(Capability::Random),
        ("wasi:clocks", "wall-clock" | "monotonic-clock") => Need::Grant(Capability::Clock),
        ("wasi:filesystem", _) => Need::Never("plugins get no file system access"),
        ("wasi:sockets", _) => Need::Never("plugins get no network access"),
        _ => Need::Never("the host does not provide it"),
    }
}

/// Rejects a component that imports an interface the transform is not
/// granted, naming every such import.
fn check_imports(
    path: &Path,
    component: &Component,
    engine: &Engine,
    caps: &[Capability],
) -> Result<(), WasmError> {
    // (reason, imports) in order of first appearance.
    let mut refused: Vec<(String, Vec<String>)> = Vec::new();
    for (name, _) in component.component_type().imports(engine) {
        let reason = match import_need(name) {
            Need::Nothing => continue,
            Need::Grant(c) if caps.contains(&c) => continue,
            Need::Grant(c) => format!("add `{}` to the transform's capabilities", c.name()),
            Need::Never(why) => why.to_string(),
        };
        let name = format!("`{name}`");
        match refused.iter_mut().find(|(r, _)| *r == reason) {
            Some((_, names)) => names.push(name),
            None => refused.push((reason, vec![name])),
        }
    }
    if refused.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = refused
        .into_iter()
        .map(|(reason, names)| format!("{} ({reason})", names.join(", ")))
        .collect();
    Err(WasmError::Link(format!(
        "plugin `{}` imports what it is not granted: {}",
        path.display(),
        list.join("; ")
    )))
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
    /// `process`, type-checked against [`abi::Batch`] and [`abi::Results`].
    process: Func,
    ticks: u64,
    limits: Limits,
}

impl Instance {
    /// Instantiates `plugin` for transform `t` of `pipeline` with `t`'s
    /// limits and grants, and calls `init` with its config.
    pub fn new(plugin: &Plugin, pipeline: &str, t: &TransformConfig) -> Result<Self, WasmError> {
        let caps = &t.capabilities;
        let limits = t.limits;
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
        for name in &t.env {
            if let Ok(value) = std::env::var(name) {
                wasi.env(name, value);
            }
        }
        let state = HostState {
            wasi: wasi.build(),
            table: ResourceTable::new(),
            limiter: Sandbox {
                memory_cap: usize::try_from(limits.memory_mb)
                    .unwrap_or(usize::MAX)
                    .saturating_mul(1 << 20),
                memory_used: 0,
                table_used: 0,
                hit_memory: false,
            },
            log: LogLimiter {
                pipeline: pipeline.to_string(),
                transform: t.name.clone(),
                window: Instant::now(),
                count: 0,
                suppressed: 0,
            },
        };
        let mut store = Store::new(&plugin.engine, state);
        store.limiter(|s| &mut s.limiter);
        let ticks = limits
            .timeout_ms
            .div_ceil(EPOCH_TICK.as_millis() as u64)
            .max(1)
            + 1;
        store.set_epoch_deadline(ticks);
        store.epoch_deadline_trap();
        let instantiated = plugin
            .pre
            .instance_pre()
            .instantiate(&mut store)
            .and_then(|instance| {
                let bindings = Transform::new(&mut store, &instance)?;
                let process = instance
                    .get_func(&mut store, plugin.process)
                    .ok_or_else(|| wasmtime::format_err!("`process` is not a function"))?;
                process.typed::<(abi::Batch<'static>,), (abi::Results,)>(&store)?;
                Ok((bindings, process))
            });
        let (bindings, process) = instantiated.map_err(|e| {
            WasmError::Init(format!(
                "plugin `{}` failed to instantiate: {}",
                plugin.path.display(),
                describe_trap(&e, store.data(), &limits).reason
            ))
        })?;
        store.set_epoch_deadline(ticks);
        let res = bindings
            .sluice_transform_transformer()
            .call_init(&mut store, &t.config_json);
        match res {
            Ok(Ok(())) => Ok(Instance {
                store,
                process,
                ticks,
                limits,
            }),
            Ok(Err(msg)) => Err(WasmError::Init(format!(
                "plugin init failed: {}",
                truncate(&msg)
            ))),
            Err(e) => Err(WasmError::Init(format!(
                "plugin init failed: {}",
                describe_trap(&e, store.data(), &limits).reason
            ))),
        }
    }

    /// Runs one batch. Returns one result per input, or a [`CallError`]
    /// after which this instance must be replaced (a trap, a timeout, an
    /// overrun, or a wrong number of results). Inputs whose outputs break
    /// `max_outputs` or `max_output_bytes` fail one by one (see
    /// [`Processed::over_limit`]).
    pub fn process(&mut self, batch: &[Message]) -> Result<Processed, CallError> {
        self.store.set_epoch_deadline(self.ticks);
        self.store
            .set_hostcall_fuel(hostcall_fuel(batch.len(), &self.limits));
        // SAFETY: `Instance::new` type-checked `process` against these types.
        let process =
            unsafe { TypedFunc::<(abi::Batch<'_>,), (abi::Results,)>::new_unchecked(self.process) };
        let expect = abi::Expect {
            limits: self.limits,
            batch: batch.len(),
        };
        let (abi::Results {
            returned,
            results,
            over_limit,
        },) = abi::lift_with(expect, || {
            process.call(&mut self.store, (abi::Batch(batch),))
        })
        .map_err(|e| describe_trap(&e, self.store.data(), &self.limits))?;
        if returned != batch.len() {
            return Err(CallError {
                kind: "invalid",
                reason: format!(
                    "plugin returned {returned} results for a batch of {} messages",
                    batch.len()
                ),
            });
        }
        Ok(Processed {
            results,
            over_limit,
        })
    }
}

/// wasmtime's budget for copying out of the guest in one call (its
/// "host-call fuel"), which bounds what a plugin's results can make the
/// host read and allocate. The outputs' strings and bytes are bounded by
/// the limits per input instead (checked before they are copied), header
/// records by [`abi::MAX_HEADERS`] a call, and error texts are cut to
/// [`MAX_ERROR_TEXT`] as they are copied; so for a UTF-8 guest the fuel
/// pays for records: for each input one result and at most `max_outputs`
/// messages, and [`RECORD_FUEL`] for all header records and error texts.
/// (Guests with UTF-16 strings take wasmtime's generic lifting, which pays
/// for every byte and checks the limits after copying.) wasmtime gives the
/// same fuel to each call the guest makes to the host during the call
/// (`log`, WASI). A batch that runs out fails its call, and the chain then
/// tries its messages alone.
fn hostcall_fuel(batch: usize, limits: &Limits) -> usize {
    let records = usize::try_from(limits.max_outputs)
        .unwrap_or(usize::MAX)
        .saturating_mul(abi::MESSAGE_SIZE)
        .saturating_add(abi::RESULT_SIZE);
    batch.saturating_mul(records).saturating_add(RECORD_FUEL)
}

/// The host-call fuel for a call's header records and error texts.
const RECORD_FUEL: usize = 32 << 20;

/// Checks the count of one input's outputs against `limits.max_outputs`.
fn check_output_count(count: u64, limits: &Limits) -> Result<(), String> {
    if count > limits.max_outputs {
        return Err(format!(
            "plugin returned {count} messages for one input, more than limits.max_outputs ({})",
            limits.max_outputs
        ));
    }
    Ok(())
}

/// Checks the bytes of one input's outputs (see [`output_bytes`]) against
/// `limits.max_output_bytes`.
fn check_output_bytes(bytes: u64, limits: &Limits) -> Result<(), String> {
    if bytes > limits.max_output_bytes {
        return Err(format!(
            "plugin returned {bytes} bytes for one input, more than limits.max_output_bytes ({})",
            limits.max_output_bytes
        ));
    }
    Ok(())
}

/// The bytes of one output that `max_output_bytes` counts.
fn output_bytes(m: &Message) -> u64 {
    let len = |s: &str| s.len() as u64;
    len(&m.topic)
        + m.kafka_topic.as_deref().map_or(0, len)
        + m.key.as_ref().map_or(0, |k| k.len() as u64)
        + m.payload.len() as u64
        + m.headers
            .iter()
            .map(|(name, value)| len(name) + len(value))
            .sum::<u64>()
        + m.content_type.as_deref().map_or(0, len)
}

/// A plugin's error text cut to [`MAX_ERROR_TEXT`] bytes (it becomes a
/// dead-letter header); only what is kept is copied.
fn truncate(text: &str) -> String {
    if text.len() <= MAX_ERROR_TEXT {
        return text.to_owned();
    }
    let mut end = MAX_ERROR_TEXT;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{} ... (truncated)", &text[..end])
}

/// Names a failed call: `timeout`, `stack`, `memory`, or `trap`.
fn describe_trap(e: &wasmtime::Error, state: &HostState, limits: &Limits) -> CallError {
    match e.downcast_ref::<wasmtime::Trap>() {
        Some(wasmtime::Trap::Interrupt) => {
            return CallError {
                kind: "timeout",
                reason: format!(
                    "plugin exceeded its time budget of {} ms (limits.timeout_ms)",
                    limits.timeout_ms
                ),
            }
        }
        Some(wasmtime::Trap::StackOverflow) => {
            return CallError {
                kind: "stack",
                reason: format!(
                    "plugin exhausted its stack of {} KiB (limits.stack_kb)",
                    limits.stack_kb
                ),
            }
        }
        _ => {}
    }
    if state.limiter.hit_memory {
        return CallError {
            kind: "memory",
            reason: format!(
                "plugin exceeded its memory limit of {} MiB (limits.memory_mb)",
                limits.memory_mb
            ),
        };
    }
    if let Some(malformed) = e.downcast_ref::<abi::Malformed>() {
        return CallError {
            kind: "invalid",
            reason: malformed.to_string(),
        };
    }
    if let Some(exit) = e.downcast_ref::<wasmtime_wasi::I32Exit>() {
        return CallError {
            kind: "trap",
            reason: format!("plugin called exit({})", exit.0),
        };
    }
    let reason = match e.downcast_ref::<wasmtime::Trap>() {
        Some(wasmtime::Trap::UnreachableCodeReached) => {
            "plugin trapped: wasm `unreachable` instruction executed (a panic in a Rust plugin)"
                .to_string()
        }
        Some(t) => format!("plugin trapped: {t}"),
        // `{e:#}` starts with "error while executing at wasm backtrace:";
        // the root cause is the trap itself.
        None => format!(
            "plugin trapped: {}",
            e.root_cause()
                .to_string()
                .lines()
                .next()
                .unwrap_or("unknown error")
        ),
    };
    CallError {
        kind: "trap",
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imports_are_allowed_granted_or_refused_by_interface() {
        for always in [
            "sluice:transform/log@0.1.0",
            "wasi:io/streams@0.2.6",
            "wasi:cli/environment@0.2.6",
            "wasi:cli/exit@0.2.0",
            "wasi:cli/terminal-stdout@0.2.6",
            "wasi:random/insecure-seed@0.2.4",
        ] {
            assert_eq!(import_need(always), Need::Nothing, "{always}");
        }
        assert_eq!(
            import_need("wasi:clocks/wall-clock@0.2.6"),
            Need::Grant(Capability::Clock)
        );
        assert_eq!(
            import_need("wasi:random/random@0.2.6"),
            Need::Grant(Capability::Random)
        );
        for never in [
            "wasi:filesystem/preopens@0.2.6",
            "wasi:sockets/tcp@0.2.6",
            "wasi:http/outgoing-handler@0.2.6",
            "wasi:cli/run@0.2.6",
            "wasi:clocks/timezone@0.2.6",
        ] {
            assert!(matches!(import_need(never), Need::Never(_)), "{never}");
        }
    }

    fn output(payload_len: usize) -> Message {
        Message {
            topic: "a/b".into(),
            kafka_topic: Some("k".into()),
            key: Some(vec![1, 2].into()),
            payload: vec![0; payload_len].into(),
            headers: vec![("n".into(), "vv".into())],
            timestamp_ms: 0,
            qos: crate::message::Qos::AtLeastOnce,
            retain: false,
            content_type: Some("ct".into()),
        }
    }

    #[test]
    fn outputs_count_every_field_against_the_limits() {
        // 3 + 1 + 2 + 10 + 3 + 2 = 21 bytes each.
        assert_eq!(output_bytes(&output(10)), 21);
        let limits = Limits {
            max_outputs: 2,
            max_output_bytes: 42,
            ..Limits::default()
        };
        assert!(check_output_bytes(42, &limits).is_ok());
        assert_eq!(
            check_output_bytes(43, &limits),
            Err(
                "plugin returned 43 bytes for one input, more than limits.max_output_bytes (42)"
                    .into()
            )
        );
        assert!(check_output_count(2, &limits).is_ok());
        assert_eq!(
            check_output_count(3, &limits),
            Err(
                "plugin returned 3 messages for one input, more than limits.max_outputs (2)".into()
            )
        );
    }

    #[test]
    fn long_error_texts_are_cut_on_a_character_boundary() {
        assert_eq!(truncate("short"), "short");
        let long = "é".repeat(MAX_ERROR_TEXT);
        let cut = truncate(&long);
        assert!(cut.ends_with(" ... (truncated)"));
        assert!(cut.len() <= MAX_ERROR_TEXT + " ... (truncated)".len());
    }
}
