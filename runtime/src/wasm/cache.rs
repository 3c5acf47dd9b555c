//! The on-disk cache of compiled plugins.
//!
//! Compiling a plugin takes from a tenth of a second (a Rust transform) to
//! seconds and half a GiB of memory (a Python one); loading the compiled
//! artefact (`.cwasm`) takes under a millisecond. Each entry is named by the
//! plugin's content hash and the engine's compatibility hash, so a rebuilt
//! plugin or a new Sluice gets a new entry and never loads a stale one.
//!
//! Every rebuild of a plugin therefore leaves its old entry behind, and
//! entries are megabytes (tens for Python and JavaScript guests). So the
//! cache is bounded: after a new entry is written, the least recently used
//! entries beyond [`PluginCache::max_bytes`] are deleted. An entry is
//! "used" when it is written or loaded (loading sets its modification
//! time to now). This process does not delete the entries of the plugins
//! it runs, even over the bound (else two plugins over the bound would
//! recompile each other at every start), nor, for [`KEEP_AFTER_USE`],
//! those of plugins it stopped running (`sluice run` checks its
//! pipelines' plugins, drops them, then loads them again to start them).
//! After that they may go: under `--watch`, a rebuilt plugin's old entry
//! (once the pipeline has moved to the new build, at its next batch), and
//! a paused pipeline's entries (compiled again on resume if pruned).
//! Only files named like entries are ever deleted (the folder may hold
//! other things: `~/.cache/sluice` is also where the guest tool chains
//! go), and so are temporary files of writes that were cut short more
//! than [`STALE_TMP`] ago. Several processes may share the folder: an
//! entry that another one deletes is compiled again.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use sha2::{Digest, Sha256};
use wasmtime::Engine;

use super::WasmError;

/// The bound when `SLUICE_CACHE_MAX_MB` is not set (wasmtime's own cache
/// uses the same soft limit).
pub const DEFAULT_MAX_BYTES: u64 = 1 << 30;

/// A temporary file older than this is left from a write that was cut
/// short (writing one takes milliseconds).
pub const STALE_TMP: Duration = Duration::from_secs(3600);

/// How long an entry stays kept after the last plugin loaded from it is
/// dropped.
pub const KEEP_AFTER_USE: Duration = Duration::from_secs(600);

/// Length of a hex SHA-256.
const CONTENT_HEX: usize = 64;
/// Length of the hex engine hash.
const ENGINE_HEX: usize = 16;

/// A folder of compiled plugins and its size bound.
#[derive(Debug)]
pub struct PluginCache {
    dir: PathBuf,
    max_bytes: u64,
    /// The entries this process loaded or wrote, which it keeps while
    /// they are in use and for `keep_after_use` after.
    in_use: InUse,
    keep_after_use: Duration,
}

type InUse = Arc<Mutex<HashMap<PathBuf, Use>>>;

#[derive(Debug)]
struct Use {
    /// Live [`Lease`]s.
    leases: usize,
    /// When the last one was taken or dropped.
    since: Instant,
}

/// A cache entry that a loaded plugin uses: [`PluginCache::prune`] keeps
/// it while the lease lives, and for [`KEEP_AFTER_USE`] after.
#[derive(Debug)]
pub struct Lease {
    in_use: InUse,
    entry: PathBuf,
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Ok(mut in_use) = self.in_use.lock() {
            if let Some(u) = in_use.get_mut(&self.entry) {
                u.leases = u.leases.saturating_sub(1);
                u.since = Instant::now();
            }
        }
    }
}

/// What [`PluginCache::prune`] deleted.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Entries deleted.
    pub entries: usize,
    /// Their bytes.
    pub bytes: u64,
    /// Entries kept.
    pub kept: usize,
    /// Their bytes.
    pub kept_bytes: u64,
    /// Bytes of the entries kept because this process uses them or used
    /// them less than [`KEEP_AFTER_USE`] ago.
    pub in_use_bytes: u64,
}

impl PluginCache {
    /// A cache in `dir` of at most `max_bytes` (beyond the entries this
    /// process uses).
    pub fn new(dir: PathBuf, max_bytes: u64) -> Self {
        PluginCache {
            dir,
            max_bytes,
            in_use: InUse::default(),
            keep_after_use: KEEP_AFTER_USE,
        }
    }

    /// Keeps the entries of plugins this process stopped using for
    /// `window` (default [`KEEP_AFTER_USE`]).
    pub fn keep_after_use(mut self, window: Duration) -> Self {
        self.keep_after_use = window;
        self
    }

    /// The cache the environment names: the folder `$SLUICE_CACHE_DIR`,
    /// else `$XDG_CACHE_HOME/sluice`, else `$HOME/.cache/sluice` (none
    /// when none of them is set), of at most `$SLUICE_CACHE_MAX_MB` MiB
    /// (default 1024).
    pub fn from_env() -> Result<Option<Self>, WasmError> {
        Self::from_vars(|k| std::env::var_os(k))
    }

    fn from_vars(
        var: impl Fn(&str) -> Option<std::ffi::OsString>,
    ) -> Result<Option<Self>, WasmError> {
        // Empty counts as unset, as for the folder (`X: ${Y:-}` in compose).
        let max_bytes = match var("SLUICE_CACHE_MAX_MB").filter(|v| !v.is_empty()) {
            None => DEFAULT_MAX_BYTES,
            Some(v) => v
                .to_str()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .and_then(|mb| mb.checked_mul(1 << 20))
                .ok_or_else(|| {
                    WasmError::Cache(format!(
                        "SLUICE_CACHE_MAX_MB must be a whole number of MiB, got `{}`",
                        v.to_string_lossy()
                    ))
                })?,
        };
        let dir = var("SLUICE_CACHE_DIR")
            .filter(|d| !d.is_empty())
            .map(PathBuf::from)
            .or_else(|| {
                var("XDG_CACHE_HOME")
                    .filter(|d| !d.is_empty())
                    .map(|d| PathBuf::from(d).join("sluice"))
            })
            .or_else(|| {
                var("HOME")
                    .filter(|d| !d.is_empty())
                    .map(|h| PathBuf::from(h).join(".cache").join("sluice"))
            });
        Ok(dir.map(|d| Self::new(d, max_bytes)))
    }

    /// The file of the entry for plugin `bytes` compiled by `engine`.
    pub(crate) fn entry_for(&self, engine: &Engine, bytes: &[u8]) -> PathBuf {
        let content: String = Sha256::digest(bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let mut h = DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        self.entry(&content, h.finish())
    }

    /// The file of the entry for a plugin's content hash (hex SHA-256)
    /// and an engine's compatibility hash.
    fn entry(&self, content_hex: &str, engine: u64) -> PathBuf {
        self.dir.join(format!("{content_hex}-{engine:016x}.cwasm"))
    }

    /// Notes that this process uses `entry`, so that it keeps it while the
    /// lease lives.
    fn keep(&self, entry: &Path) -> Lease {
        if let Ok(mut in_use) = self.in_use.lock() {
            let since = Instant::now();
            let u = in_use
                .entry(entry.to_path_buf())
                .or_insert(Use { leases: 0, since });
            u.leases += 1;
            u.since = since;
        }
        Lease {
            in_use: self.in_use.clone(),
            entry: entry.to_path_buf(),
        }
    }

    /// The entries this process keeps now; forgets those it no longer
    /// needs to.
    fn kept(&self) -> HashSet<PathBuf> {
        let Ok(mut in_use) = self.in_use.lock() else {
            return HashSet::new();
        };
        in_use.retain(|_, u| u.leases > 0 || u.since.elapsed() < self.keep_after_use);
        in_use.keys().cloned().collect()
    }

    /// Marks `entry` as used now: this process keeps it while the lease
    /// lives, and other processes prune it after entries used longer ago.
    /// Best effort: a read-only cache still loads.
    pub(crate) fn used(&self, entry: &Path) -> Lease {
        if let Err(e) = touch(entry) {
            tracing::debug!(cache = %entry.display(), error = %e, "cannot mark a compiled-plugin cache entry as used");
        }
        self.keep(entry)
    }

    /// Writes `bytes` as `entry` (through a temporary file, so that no
    /// reader sees half an entry), then prunes the cache. This process
    /// keeps the entry while the lease lives.
    pub(crate) fn store(&self, entry: &Path, bytes: &[u8]) -> std::io::Result<(Lease, Pruned)> {
        // Taken first, so that another thread's prune cannot delete the
        // entry between the rename and here.
        let lease = self.keep(entry);
        std::fs::create_dir_all(&self.dir)?;
        // Unique also among processes that share the folder from different
        // PID namespaces (containers, all PID 1).
        let tmp = entry.with_extension(format!(
            "tmp{}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        if let Err(e) = std::fs::write(&tmp, bytes).and_then(|()| std::fs::rename(&tmp, entry)) {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        Ok((lease, self.prune()))
    }

    /// Deletes the least recently used entries until the rest fit in
    /// `max_bytes` (the entries this process uses, or used less than
    /// [`KEEP_AFTER_USE`] ago, are kept in any case), and temporary files
    /// older than [`STALE_TMP`]. Files that vanish meanwhile (another
    /// Sluice pruning the same folder) are skipped.
    pub fn prune(&self) -> Pruned {
        let mut pruned = Pruned::default();
        let in_use = self.kept();
        let Ok(list) = std::fs::read_dir(&self.dir) else {
            return pruned;
        };
        let now = SystemTime::now();
        let mut entries = Vec::new();
        for item in list.flatten() {
            let name = item.file_name();
            let Some(name) = name.to_str() else { continue };
            let Some(kind) = kind(name) else { continue };
            let Ok(meta) = item.metadata() else { continue };
            if !meta.is_file() {
                continue;
            }
            let used = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
            match kind {
                Kind::Entry => entries.push((item.path(), used, meta.len())),
                Kind::Tmp => {
                    let age = now.duration_since(used).unwrap_or_default();
                    if age > STALE_TMP && std::fs::remove_file(item.path()).is_ok() {
                        tracing::info!(file = %item.path().display(), "deleted a compiled-plugin cache file left by an interrupted write");
                    }
                }
            }
        }
        // The entries kept for this process first, then the most recently
        // used.
        entries.sort_by_key(|e| std::cmp::Reverse((in_use.contains(&e.0), e.1)));
        // Once one entry does not fit, every entry used before it goes.
        let mut full = false;
        for (path, _, len) in entries {
            full = full || pruned.kept_bytes.saturating_add(len) > self.max_bytes;
            let using = in_use.contains(&path);
            if using || !full {
                pruned.kept += 1;
                pruned.kept_bytes += len;
                if using {
                    pruned.in_use_bytes += len;
                }
            } else if std::fs::remove_file(&path).is_ok() {
                pruned.entries += 1;
                pruned.bytes += len;
            }
        }
        if pruned.entries > 0 {
            tracing::info!(
                cache = %self.dir.display(),
                deleted = pruned.entries,
                deleted_bytes = pruned.bytes,
                kept = pruned.kept,
                kept_bytes = pruned.kept_bytes,
                max_bytes = self.max_bytes,
                "deleted the least recently used compiled plugins over the cache's bound (SLUICE_CACHE_MAX_MB)"
            );
        }
        if pruned.in_use_bytes > self.max_bytes {
            // A bound of 0 asks for this: a note, not a warning.
            let (cache, in_use_bytes, max_bytes) =
                (self.dir.display(), pruned.in_use_bytes, self.max_bytes);
            let what = "the compiled plugins this process uses (or used in the last 10 minutes) are over the cache's bound (SLUICE_CACHE_MAX_MB); they are kept, but other processes sharing the folder delete them, and then compile them again";
            if max_bytes == 0 {
                tracing::info!(%cache, in_use_bytes, max_bytes, "{what}");
            } else {
                tracing::warn!(%cache, in_use_bytes, max_bytes, "{what}");
            }
        }
        pruned
    }
}

/// Sets `entry`'s modification time to now, as `touch` does: with a null
/// time, which needs only write access (an explicit time needs the
/// file's owner, so a cache shared by two users would miss it).
fn touch(entry: &Path) -> std::io::Result<()> {
    let file = std::fs::File::options().write(true).open(entry)?;
    #[cfg(unix)]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: `file` is an open descriptor for the whole call, and a
        // null `times` is documented to mean "now" for both times.
        if unsafe { libc::futimens(file.as_raw_fd(), std::ptr::null()) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
    #[cfg(not(unix))]
    file.set_modified(SystemTime::now())
}

enum Kind {
    Entry,
    Tmp,
}

/// Whether `name` is an entry (`<64 hex>-<16 hex>.cwasm`), a temporary file
/// of one (`<64 hex>-<16 hex>.tmp<pid>-<16 hex>`, or `.tmp<pid>` as older
/// versions named them), or neither.
fn kind(name: &str) -> Option<Kind> {
    let (stem, ext) = name.split_once('.')?;
    let (content, engine) = stem.split_once('-')?;
    let hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    if !hex(content, CONTENT_HEX) || !hex(engine, ENGINE_HEX) {
        return None;
    }
    if ext == "cwasm" {
        return Some(Kind::Entry);
    }
    let tmp = ext.strip_prefix("tmp")?;
    let (pid, suffix) = match tmp.split_once('-') {
        Some((pid, suffix)) => (pid, Some(suffix)),
        None => (tmp, None),
    };
    let pid_ok = !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit());
    (pid_ok && suffix.is_none_or(|s| hex(s, ENGINE_HEX))).then_some(Kind::Tmp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::ffi::OsString;

    fn name(i: u8) -> String {
        format!("{}-{:016x}.cwasm", format!("{i:02x}").repeat(32), 7u64)
    }

    /// An entry of `len` bytes last used `ago` seconds ago.
    fn put(dir: &Path, file: &str, len: usize, ago: u64) -> PathBuf {
        let p = dir.join(file);
        std::fs::write(&p, vec![0u8; len]).unwrap();
        age(&p, ago);
        p
    }

    /// Sets `p`'s modification time to `ago` seconds ago.
    fn age(p: &Path, ago: u64) {
        let f = std::fs::File::options().write(true).open(p).unwrap();
        f.set_modified(SystemTime::now() - Duration::from_secs(ago))
            .unwrap();
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    }

    fn sorted(mut v: Vec<String>) -> Vec<String> {
        v.sort();
        v
    }

    /// A cache over `d` that used `in_use` just now (without touching
    /// them), so that it keeps them for [`KEEP_AFTER_USE`].
    fn cache(d: &Path, max_bytes: u64, in_use: &[&Path]) -> PluginCache {
        let cache = PluginCache::new(d.to_path_buf(), max_bytes);
        for p in in_use {
            drop(cache.keep(p));
        }
        cache
    }

    fn modified(p: &Path) -> SystemTime {
        std::fs::metadata(p).unwrap().modified().unwrap()
    }

    #[test]
    fn pruning_deletes_the_least_recently_used_entries_over_the_bound() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        put(d, &name(1), 300, 10);
        put(d, &name(2), 300, 20);
        put(d, &name(3), 300, 30);
        let oldest = put(d, &name(4), 300, 40);
        // Used just now by another process, as its cache hit marks it.
        touch(&oldest).unwrap();
        assert!(modified(&oldest) > SystemTime::now() - Duration::from_secs(5));
        let written = put(d, &name(5), 300, 0);

        let pruned = cache(d, 1000, &[&written]).prune();
        assert_eq!(
            pruned,
            Pruned {
                entries: 2,
                bytes: 600,
                kept: 3,
                kept_bytes: 900,
                in_use_bytes: 300,
            }
        );
        assert_eq!(names(d), sorted(vec![name(1), name(4), name(5)]));
    }

    #[test]
    fn entries_in_use_are_kept_even_over_the_bound() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let a = put(d, &name(1), 600, 50);
        let b = put(d, &name(2), 600, 40);
        put(d, &name(3), 10, 5);
        // Two plugins of one pipeline, together over the bound, and newer
        // than neither: both stay; the entry not in use goes.
        let pruned = cache(d, 1000, &[&a, &b]).prune();
        assert_eq!(
            (pruned.entries, pruned.kept, pruned.in_use_bytes),
            (1, 2, 1200)
        );
        assert_eq!(names(d), sorted(vec![name(1), name(2)]));
        // Another process, which uses neither, deletes both at a bound of 0.
        let c = put(d, &name(4), 1, 0);
        cache(d, 0, &[&c]).prune();
        assert_eq!(names(d), vec![name(4)]);
    }

    #[test]
    fn entries_used_before_one_that_does_not_fit_go_too() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        put(d, &name(1), 900, 10);
        put(d, &name(2), 10, 20);
        let written = put(d, &name(3), 100, 0);
        cache(d, 950, &[&written]).prune();
        // name(2) would fit in what is left, but it was used before name(1).
        assert_eq!(names(d), vec![name(3)]);
    }

    #[test]
    fn pruning_leaves_other_files_alone_and_deletes_stale_temporary_files() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let stem = name(9).trim_end_matches(".cwasm").to_string();
        let others = [
            "notes.cwasm".to_string(),
            format!("{}.cwasm", "a".repeat(64)),
            format!("{}-{}.cwasm", "A".repeat(64), "0".repeat(16)),
            format!("{}-{}.cwasm.bak", "a".repeat(64), "0".repeat(16)),
            format!("{stem}.tmp"),
            format!("{stem}.tmpx1"),
            format!("{stem}.tmp1-xyz"),
            format!("{stem}.tmp-{}", "0".repeat(16)),
            "venv".into(),
        ];
        for o in &others {
            put(d, o, 100, 100_000);
        }
        std::fs::create_dir(d.join("npm")).unwrap();
        let stale = STALE_TMP.as_secs() + 60;
        put(d, &format!("{stem}.tmp42"), 100, stale);
        put(d, &format!("{stem}.tmp1-{}", "ab".repeat(8)), 100, stale);
        let fresh_tmp = format!(
            "{}.tmp43-{}",
            name(8).trim_end_matches(".cwasm"),
            "cd".repeat(8)
        );
        put(d, &fresh_tmp, 100, 5);
        put(d, &name(1), 100, 100_000);
        let written = put(d, &name(2), 100, 0);

        let pruned = cache(d, 0, &[&written]).prune();
        assert_eq!((pruned.entries, pruned.kept), (1, 1));
        let mut left: Vec<String> = others.to_vec();
        left.extend([fresh_tmp, name(2), "npm".into()]);
        assert_eq!(names(d), sorted(left));
    }

    #[test]
    fn pruning_a_missing_folder_does_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let cache = PluginCache::new(dir.path().join("gone"), 0);
        assert_eq!(cache.prune(), Pruned::default());
    }

    #[test]
    fn store_and_used_mark_entries_in_use_and_touch_them() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("new");
        let one = PluginCache::new(d.clone(), 4);
        let a = one.entry(&"ab".repeat(32), 1);
        let b = one.entry(&"cd".repeat(32), 1);
        let _a = one.store(&a, b"abc").unwrap();
        // a (3 bytes) and b (2 bytes) do not both fit in 4, but this
        // process uses both.
        let (_b, pruned) = one.store(&b, b"de").unwrap();
        assert_eq!((pruned.entries, pruned.kept), (0, 2));
        assert_eq!(std::fs::read(&b).unwrap(), b"de");
        // Another process that loads b (a hit) and writes c deletes a.
        let two = PluginCache::new(d.clone(), 4);
        age(&b, 60);
        let _b = two.used(&b);
        assert!(modified(&b) > SystemTime::now() - Duration::from_secs(5));
        let c = two.entry(&"ef".repeat(32), 1);
        let (_c, pruned) = two.store(&c, b"f").unwrap();
        assert_eq!((pruned.entries, pruned.bytes), (1, 3));
        assert!(!a.exists() && b.exists() && c.exists());
    }

    #[test]
    fn entries_are_kept_while_a_plugin_uses_them_and_for_a_while_after() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let cache = PluginCache::new(d.to_path_buf(), 0).keep_after_use(Duration::ZERO);
        let old = put(d, &name(1), 100, 60);
        let new = put(d, &name(2), 100, 0);
        let old_plugin = cache.used(&old);
        let new_plugin = cache.used(&new);
        // Both run: both stay at a bound of 0.
        assert_eq!(cache.prune().entries, 0);
        // `--watch` replaced the old build of the plugin: its entry goes.
        drop(old_plugin);
        assert_eq!(cache.prune().entries, 1);
        assert_eq!(names(d), vec![name(2)]);
        // Two pipelines load the same plugin: its entry stays until both
        // have stopped.
        let second = cache.used(&new);
        drop(new_plugin);
        assert_eq!(cache.prune().entries, 0);
        drop(second);
        assert_eq!(cache.prune().entries, 1);
        assert!(names(d).is_empty());
        assert!(cache.kept().is_empty(), "stopped plugins are forgotten");

        // With the real window, an entry outlives its last plugin for a
        // while (`sluice run` checks its plugins, drops them, loads them
        // again).
        let cache = PluginCache::new(d.to_path_buf(), 0);
        let e = put(d, &name(3), 100, 60);
        drop(cache.used(&e));
        assert_eq!(cache.prune().entries, 0);
        assert_eq!(names(d), vec![name(3)]);
    }

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<OsString> {
        let m: HashMap<String, OsString> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), OsString::from(v)))
            .collect();
        move |k| m.get(k).cloned()
    }

    /// (folder, bound) of the cache the variables name.
    fn from(pairs: &[(&str, &str)]) -> Result<Option<(PathBuf, u64)>, WasmError> {
        PluginCache::from_vars(vars(pairs)).map(|c| c.map(|c| (c.dir, c.max_bytes)))
    }

    #[test]
    fn the_environment_names_the_folder_and_the_bound() {
        let home = ("/h/.cache/sluice".into(), DEFAULT_MAX_BYTES);
        assert_eq!(from(&[("HOME", "/h")]).unwrap(), Some(home.clone()));
        assert_eq!(
            from(&[
                ("HOME", "/h"),
                ("XDG_CACHE_HOME", "/x"),
                ("SLUICE_CACHE_MAX_MB", "5")
            ])
            .unwrap(),
            Some(("/x/sluice".into(), 5 << 20))
        );
        assert_eq!(
            from(&[
                ("XDG_CACHE_HOME", "/x"),
                ("SLUICE_CACHE_DIR", "/s"),
                ("SLUICE_CACHE_MAX_MB", " 0 ")
            ])
            .unwrap(),
            Some(("/s".into(), 0))
        );
        // Empty is unset.
        assert_eq!(
            from(&[
                ("HOME", "/h"),
                ("SLUICE_CACHE_DIR", ""),
                ("SLUICE_CACHE_MAX_MB", "")
            ])
            .unwrap(),
            Some(home)
        );
        assert_eq!(from(&[]).unwrap(), None);
        for bad in ["-1", "1.5", "1G", " ", "18446744073709551615"] {
            let e = from(&[("HOME", "/h"), ("SLUICE_CACHE_MAX_MB", bad)])
                .unwrap_err()
                .to_string();
            assert_eq!(
                e,
                format!("SLUICE_CACHE_MAX_MB must be a whole number of MiB, got `{bad}`")
            );
        }
    }
}
