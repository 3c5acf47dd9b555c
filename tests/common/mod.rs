//! What the tests that drive `sluice::wasm` directly share (the harness
//! library does not depend on sluice).

use std::path::PathBuf;

use sluice::config::{Limits, Pos, TransformConfig};

/// A transform on the component at `plugin`, named after its file, with
/// `config_json`: default limits, no grants.
pub fn transform(plugin: PathBuf, config_json: &str) -> TransformConfig {
    TransformConfig {
        name: plugin
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default(),
        plugin,
        config_json: config_json.into(),
        limits: Limits::default(),
        capabilities: Vec::new(),
        env: Vec::new(),
        plugin_pos: Pos { line: 1, col: 1 },
        config_pos: Pos { line: 1, col: 1 },
    }
}
