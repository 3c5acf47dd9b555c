//! Write Sluice transforms in Rust.
//!
//! A Sluice transform is a WebAssembly component that sits between the MQTT
//! source and the Kafka sink of a pipeline. With this crate a transform is
//! one struct, one [`Transform::process`] function and one
//! [`export_transform!`] line:
//!
//! ```
//! use serde::Deserialize;
//! use sluice_sdk::{Config, Message, Transform};
//!
//! /// Keeps readings at or above `min` degrees, drops the rest.
//! pub struct MinTemperature {
//!     min: f64,
//! }
//!
//! #[derive(Deserialize)]
//! #[serde(deny_unknown_fields)]
//! struct Settings {
//!     /// Lowest temperature kept.
//!     min: f64,
//! }
//!
//! #[derive(Deserialize)]
//! struct Reading {
//!     temperature: f64,
//! }
//!
//! impl Transform for MinTemperature {
//!     fn new(config: Config) -> Result<Self, String> {
//!         let settings: Settings = config.parse()?; // `invalid config: ...` stops the pipeline
//!         Ok(Self { min: settings.min })
//!     }
//!
//!     fn process(&mut self, msg: Message) -> Result<Vec<Message>, String> {
//!         let reading: Reading = msg.json()?; // not JSON: the message is dead-lettered
//!         if reading.temperature >= self.min {
//!             Ok(vec![msg]) // keep (map: return a changed message)
//!         } else {
//!             Ok(vec![]) // drop
//!         }
//!     }
//! }
//!
//! sluice_sdk::export_transform!(MinTemperature);
//!
//! // The logic is plain Rust: test it natively.
//! let mut t = MinTemperature::new(Config::new(r#"{"min": 20}"#)).unwrap();
//! assert_eq!(t.process(Message::new("s/1", r#"{"temperature": 25}"#)).unwrap().len(), 1);
//! assert_eq!(t.process(Message::new("s/1", r#"{"temperature": 15}"#)).unwrap().len(), 0);
//! assert!(t.process(Message::new("s/1", "garbage")).is_err());
//! ```
//!
//! Build it as a `cdylib` for `wasm32-wasip2` (`cargo build --release`) and
//! point a pipeline's `transforms:` entry at the `.wasm` file:
//!
//! ```yaml
//! transforms:
//!   - name: warm-only
//!     plugin: ../plugins/target/wasm32-wasip2/release/min_temperature.wasm
//!     config: { min: 20 }
//! ```
//!
//! # The contract
//!
//! - [`Transform::new`] runs once per plugin instance with the transform's
//!   `config:` map. An error stops the pipeline from starting and is shown by
//!   `sluice validate`.
//! - [`Transform::process`] runs once per message, in arrival order. Return
//!   `Ok(vec![])` to drop the message, `Ok(vec![m])` to pass it on (changed or
//!   not), `Ok(vec![m1, m2, ...])` to split it, and `Err(reason)` to send the
//!   input message to the pipeline's dead-letter topic with `reason`.
//! - A panic traps the whole plugin instance: the host dead-letters the
//!   batch and starts a fresh instance. Return `Err` instead.
//! - There is no filesystem, network, environment, clock or randomness: the
//!   message and the config are all the input, unless the pipeline YAML
//!   grants a clock, randomness, stdio or named environment variables. A
//!   plugin that imports what it is not granted (e.g. uses `std::fs`) is
//!   rejected when it is loaded. [`log`] writes to the host's log.
//!
//! Everything that only makes sense inside WebAssembly is compiled only for
//! `target_arch = "wasm32"`, so transforms are unit-tested natively:
//! `cargo test --target x86_64-unknown-linux-gnu`. [`Runner`] drives a
//! transform exactly as the host does, for tests of the whole contract.
#![deny(missing_docs)]

mod alloc;
mod config;
mod fields;
pub mod log;
mod message;
mod runner;

pub use alloc::SmallBlocks;
pub use config::Config;
pub use fields::{FieldValue, JsonFields};
pub use message::{json_type_name, Header, Message, Qos};
pub use runner::Runner;

/// Re-exported so that transforms and the SDK agree on one `serde_json`.
pub use serde_json;

/// The guest's allocator (see [`SmallBlocks`]); the `small-blocks` feature,
/// on by default.
#[cfg(all(
    feature = "small-blocks",
    target_arch = "wasm32",
    not(target_feature = "atomics")
))]
#[global_allocator]
static ALLOCATOR: SmallBlocks = SmallBlocks::new();

/// A transform: built once from its config, then called for every message.
///
/// See the [crate documentation](crate) for an example.
pub trait Transform: Sized + 'static {
    /// Builds the transform from the `config:` map of its pipeline entry.
    ///
    /// Validate everything here, so that mistakes show up at
    /// `sluice validate` rather than as dead letters. The error text is shown
    /// to the user as is: name the key and what was expected.
    fn new(config: Config) -> Result<Self, String>;

    /// Transforms one message: `Ok(vec![])` drops it, `Ok(vec![m])` maps it,
    /// `Ok(vec![m1, m2, ...])` splits it, and `Err(reason)` sends the input
    /// message to the dead-letter topic with `reason`.
    fn process(&mut self, msg: Message) -> Result<Vec<Message>, String>;
}

/// Exports a [`Transform`] as the plugin's `sluice:transform/transformer`
/// implementation. Use it once per plugin crate, at the crate's top level:
///
/// ```
/// use sluice_sdk::{Config, Message, Transform};
///
/// /// Passes every message on unchanged.
/// pub struct Identity;
///
/// impl Transform for Identity {
///     fn new(_config: Config) -> Result<Self, String> {
///         Ok(Identity)
///     }
///
///     fn process(&mut self, msg: Message) -> Result<Vec<Message>, String> {
///         Ok(vec![msg])
///     }
/// }
///
/// sluice_sdk::export_transform!(Identity);
/// ```
///
/// The host calls `init` once per instance (which calls [`Transform::new`])
/// and then `process` with batches; every message of a batch is passed to
/// [`Transform::process`] in order, and each gets exactly one result.
/// `process` before a successful `init` answers every message with an error.
///
/// In native builds this only checks that the type implements [`Transform`].
#[macro_export]
macro_rules! export_transform {
    ($ty:ty) => {
        const _: () = {
            const fn assert_is_transform<T: $crate::Transform>() {}
            assert_is_transform::<$ty>();
        };

        #[cfg(target_arch = "wasm32")]
        const _: () = {
            use $crate::bindings::exports::sluice::transform::transformer as __wit;

            struct __SluiceExport;

            ::std::thread_local! {
                static RUNNER: ::core::cell::RefCell<$crate::Runner<$ty>> =
                    const { ::core::cell::RefCell::new($crate::Runner::new()) };
            }

            impl __wit::Guest for __SluiceExport {
                fn init(
                    config: ::std::string::String,
                ) -> ::core::result::Result<(), ::std::string::String> {
                    $crate::__private::init(&RUNNER, config)
                }

                fn process(
                    batch: ::std::vec::Vec<__wit::Message>,
                ) -> ::std::vec::Vec<
                    ::core::result::Result<::std::vec::Vec<__wit::Message>, __wit::TransformError>,
                > {
                    $crate::__private::process(&RUNNER, batch)
                }
            }

            $crate::bindings::__export_sluice_transform!(
                __SluiceExport with_types_in $crate::bindings
            );
        };
    };
}

/// The generated WIT bindings. Not a stable API: use the types above.
#[doc(hidden)]
#[allow(missing_docs, clippy::all)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "transform",
        pub_export_macro: true,
        export_macro_name: "__export_sluice_transform",
    });
}

/// Glue called by [`export_transform!`]. Not a stable API.
#[doc(hidden)]
pub mod __private {
    use std::cell::RefCell;
    use std::thread::LocalKey;

    use crate::bindings::sluice::transform::types as wit;
    use crate::{Runner, Transform};

    /// The guest's `init` export.
    pub fn init<T: Transform>(
        runner: &'static LocalKey<RefCell<Runner<T>>>,
        config: String,
    ) -> Result<(), String> {
        runner.with_borrow_mut(|runner| runner.init(&config))
    }

    /// The guest's `process` export: converts the WIT types (moving, not
    /// copying, the buffers) and runs the batch.
    pub fn process<T: Transform>(
        runner: &'static LocalKey<RefCell<Runner<T>>>,
        batch: Vec<wit::Message>,
    ) -> Vec<Result<Vec<wit::Message>, wit::TransformError>> {
        runner.with_borrow_mut(|runner| {
            batch
                .into_iter()
                .map(|msg| match runner.process_one(msg.into()) {
                    Ok(out) => Ok(out.into_iter().map(Into::into).collect()),
                    Err(message) => Err(wit::TransformError { message }),
                })
                .collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bindings::sluice::transform::types as wit;
    use std::cell::RefCell;

    /// Drops empty payloads, doubles others, rejects `bad`.
    struct Double;

    impl Transform for Double {
        fn new(config: Config) -> Result<Self, String> {
            match config.value()?.as_object() {
                Some(map) if map.is_empty() => Ok(Double),
                _ => Err("expected an empty config".into()),
            }
        }

        fn process(&mut self, msg: Message) -> Result<Vec<Message>, String> {
            match msg.payload.as_slice() {
                b"" => Ok(vec![]),
                b"bad" => Err("bad payload".into()),
                _ => Ok(vec![msg.clone(), msg]),
            }
        }
    }

    export_transform!(Double);

    thread_local! {
        static RUNNER: RefCell<Runner<Double>> = const { RefCell::new(Runner::new()) };
    }

    fn wit_message(payload: &str) -> wit::Message {
        Message::new("a/b", payload).with_key("k").into()
    }

    #[test]
    fn exported_glue_keeps_one_result_per_input_in_order() {
        let before = __private::process(&RUNNER, vec![wit_message("x")]);
        assert!(before[0]
            .as_ref()
            .is_err_and(|e| e.message.contains("not initialised")));

        assert_eq!(
            __private::init(&RUNNER, r#"{"x":1}"#.into()),
            Err("expected an empty config".into())
        );
        __private::init(&RUNNER, String::new()).unwrap();

        let results = __private::process(
            &RUNNER,
            vec![wit_message(""), wit_message("x"), wit_message("bad")],
        );
        assert_eq!(results.len(), 3);
        assert!(results[0].as_ref().unwrap().is_empty());
        let doubled = results[1].as_ref().unwrap();
        assert_eq!(doubled.len(), 2);
        assert_eq!(doubled[1].payload, b"x");
        assert_eq!(doubled[1].key.as_deref(), Some(&b"k"[..]));
        assert_eq!(results[2].as_ref().unwrap_err().message, "bad payload");
    }

    #[test]
    fn log_functions_print_natively() {
        log::trace("trace");
        log::debug("debug");
        log::info("info");
        log::warn(String::from("warn"));
        log::error(format!("error {}", 1));
        assert_eq!(log::Level::Warn.to_string(), "WARN");
    }
}
