//! Drives a [`Transform`] the way the host does.

use crate::{Config, Message, Transform};

/// One transform instance as the host sees it: `init` once, then `process`
/// batches. [`export_transform!`](crate::export_transform) keeps one of these
/// per plugin instance; tests can use it to check a transform against the
/// host's contract (one result per input, in order; errors before `init`).
///
/// ```
/// use sluice_sdk::{Config, Message, Runner, Transform};
///
/// struct Upper;
///
/// impl Transform for Upper {
///     fn new(_config: Config) -> Result<Self, String> {
///         Ok(Upper)
///     }
///     fn process(&mut self, msg: Message) -> Result<Vec<Message>, String> {
///         let text = msg.payload_str()?.to_uppercase();
///         Ok(vec![msg.with_payload(text)])
///     }
/// }
///
/// let mut runner = Runner::<Upper>::new();
/// assert!(runner.process(vec![Message::new("t", "a")])[0].is_err()); // before init
/// runner.init("{}").unwrap();
/// let results = runner.process(vec![Message::new("t", "a"), Message::new("t", vec![0xff])]);
/// assert_eq!(results[0].as_ref().unwrap()[0].payload, b"A");
/// assert!(results[1].is_err()); // not UTF-8: dead-lettered
/// ```
pub struct Runner<T> {
    state: State<T>,
}

enum State<T> {
    NotInitialised,
    InitFailed(String),
    Ready(T),
}

impl<T: Transform> Runner<T> {
    /// A runner whose `init` has not been called yet.
    pub const fn new() -> Self {
        Self {
            state: State::NotInitialised,
        }
    }

    /// Builds the transform from `config` (JSON object text), replacing any
    /// earlier instance. The error is the transform's own message.
    pub fn init(&mut self, config: &str) -> Result<(), String> {
        match T::new(Config::new(config)) {
            Ok(transform) => {
                self.state = State::Ready(transform);
                Ok(())
            }
            Err(reason) => {
                self.state = State::InitFailed(reason.clone());
                Err(reason)
            }
        }
    }

    /// Processes a batch: exactly one result per input message, in order.
    /// Before a successful `init` every result is an error.
    pub fn process(&mut self, batch: Vec<Message>) -> Vec<Result<Vec<Message>, String>> {
        batch.into_iter().map(|msg| self.process_one(msg)).collect()
    }

    /// Processes one message.
    pub fn process_one(&mut self, msg: Message) -> Result<Vec<Message>, String> {
        match &mut self.state {
            State::Ready(transform) => transform.process(msg),
            State::NotInitialised => {
                Err("transform is not initialised: the host did not call init".into())
            }
            State::InitFailed(reason) => Err(format!(
                "transform is not initialised: init failed: {reason}"
            )),
        }
    }

    /// The transform instance, once `init` succeeded.
    pub fn transform(&self) -> Option<&T> {
        match &self.state {
            State::Ready(transform) => Some(transform),
            _ => None,
        }
    }
}

impl<T: Transform> Default for Runner<T> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    /// Splits a payload on commas; `max` parts at most, else an error.
    struct SplitCommas {
        max: usize,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Settings {
        max: usize,
    }

    impl Transform for SplitCommas {
        fn new(config: Config) -> Result<Self, String> {
            let Settings { max } = config.parse()?;
            Ok(Self { max })
        }

        fn process(&mut self, msg: Message) -> Result<Vec<Message>, String> {
            let text = msg.payload_str()?;
            let parts: Vec<&str> = text.split(',').filter(|p| !p.is_empty()).collect();
            if parts.len() > self.max {
                return Err(format!(
                    "{} parts, at most {} allowed",
                    parts.len(),
                    self.max
                ));
            }
            Ok(parts.into_iter().map(|p| msg.child(p)).collect())
        }
    }

    fn payloads(result: &Result<Vec<Message>, String>) -> Vec<&[u8]> {
        result
            .as_ref()
            .unwrap()
            .iter()
            .map(|m| m.payload.as_slice())
            .collect()
    }

    #[test]
    fn process_before_init_errors_for_every_message() {
        let mut runner = Runner::<SplitCommas>::new();
        let results = runner.process(vec![Message::new("t", "a"), Message::new("t", "b")]);
        assert_eq!(results.len(), 2);
        for result in results {
            assert_eq!(
                result.unwrap_err(),
                "transform is not initialised: the host did not call init"
            );
        }
    }

    #[test]
    fn process_after_failed_init_reports_the_init_error() {
        let mut runner = Runner::<SplitCommas>::new();
        let err = runner.init(r#"{"max": "two"}"#).unwrap_err();
        assert!(err.starts_with("invalid config: invalid type"), "{err}");
        let results = runner.process(vec![Message::new("t", "a")]);
        assert_eq!(
            results[0].as_ref().unwrap_err(),
            &format!("transform is not initialised: init failed: {err}")
        );
        assert!(runner.transform().is_none());
    }

    #[test]
    fn one_result_per_input_in_order_for_drop_map_split_and_error() {
        let mut runner = Runner::<SplitCommas>::new();
        runner.init(r#"{"max": 2}"#).unwrap();
        let results = runner.process(vec![
            Message::new("t", ""),
            Message::new("t", "a"),
            Message::new("t", "b,c"),
            Message::new("t", "d,e,f"),
            Message::new("t", vec![0xff]),
        ]);
        assert_eq!(results.len(), 5);
        assert!(payloads(&results[0]).is_empty());
        assert_eq!(payloads(&results[1]), [b"a"]);
        assert_eq!(payloads(&results[2]), [b"b", b"c"]);
        assert_eq!(
            results[3].as_ref().unwrap_err(),
            "3 parts, at most 2 allowed"
        );
        assert!(results[4]
            .as_ref()
            .unwrap_err()
            .starts_with("payload is not UTF-8"));
    }

    #[test]
    fn init_again_replaces_the_instance() {
        let mut runner = Runner::<SplitCommas>::new();
        runner.init(r#"{"max": 1}"#).unwrap();
        runner.init(r#"{"max": 3}"#).unwrap();
        assert_eq!(runner.transform().unwrap().max, 3);
        assert!(runner.process_one(Message::new("t", "a,b,c")).is_ok());
    }

    #[test]
    fn an_empty_batch_gives_no_results() {
        let mut runner = Runner::<SplitCommas>::new();
        assert!(runner.process(Vec::new()).is_empty());
    }
}
