//! Where things are: the workspace, the `sluice` binary, the example plugins.

use std::path::PathBuf;

/// The repository root (the parent of the `tests` crate).
pub fn workspace_root() -> PathBuf {
    let tests = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    tests
        .parent()
        .expect("tests/ has a parent directory")
        .to_path_buf()
}

/// The `sluice` binary: `$SLUICE_BIN`, else `sluice` next to the directory
/// of the running test executable (`<target>/debug/deps/..` ->
/// `<target>/debug/sluice`), which respects `CARGO_TARGET_DIR`. A relative
/// `$SLUICE_BIN` is taken from the current directory (the runtime is
/// started in a folder of its own).
pub fn sluice_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("SLUICE_BIN") {
        return std::path::absolute(&path).unwrap_or_else(|_| PathBuf::from(path));
    }
    let exe = std::env::current_exe().expect("path of the test executable");
    let mut dir = exe.parent().expect("test executable has a directory");
    if dir.ends_with("deps") {
        dir = dir.parent().expect("deps/ has a parent directory");
    }
    let bin = dir.join("sluice");
    assert!(
        bin.exists(),
        "the sluice binary is missing at {}: build it with `cargo build -p sluice` \
         (or run `bash scripts/test.sh`), or point SLUICE_BIN at it",
        bin.display()
    );
    bin
}

/// The folder holding the built example plugins:
/// `$SLUICE_PLUGIN_DIR`, else `<root>/plugins/target/wasm32-wasip2/release`.
pub fn plugin_dir() -> PathBuf {
    match std::env::var_os("SLUICE_PLUGIN_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => workspace_root().join("plugins/target/wasm32-wasip2/release"),
    }
}

/// The absolute path of the built example plugin `name` (`json_map` or
/// `json_map.wasm`). Panics with instructions if it has not been built.
pub fn plugin(name: &str) -> PathBuf {
    let file = if name.ends_with(".wasm") {
        name.to_owned()
    } else {
        format!("{name}.wasm")
    };
    let path = plugin_dir().join(file);
    assert!(
        path.exists(),
        "plugin {} is missing: run `bash scripts/test.sh`, or build the plugins first with \
         `cd plugins && cargo build --release --target wasm32-wasip2`",
        path.display()
    );
    path
}
