//! All YAML parsing lives here, so that `serde_yaml` (archived upstream) can be
//! swapped for a maintained fork in one place.
//!
//! Two passes over the text: `serde_yaml` builds the value that typed
//! deserialisation runs on, and a `yaml-rust2` event pass records the line and
//! column of every node by its path (`source.mqtt.topics[0].qos`), so that
//! errors found after parsing still point at the right spot.

use std::collections::HashMap;

use serde::de::DeserializeOwned;
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// A 1-based line and column in a YAML file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pos {
    /// Line, 1-based.
    pub line: usize,
    /// Column, 1-based.
    pub col: usize,
}

/// A parse or type error at a position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct YamlError {
    /// Where it is.
    pub pos: Pos,
    /// What is wrong.
    pub message: String,
}

/// Parsed document: the value plus the position of every node.
pub struct Document {
    /// The whole document as a generic value.
    pub value: serde_yaml::Value,
    positions: HashMap<String, (Pos, Pos)>,
}

impl Document {
    /// Parses `text` (one YAML document).
    pub fn parse(text: &str) -> Result<Self, YamlError> {
        let value: serde_yaml::Value = serde_yaml::from_str(text).map_err(|e| YamlError {
            pos: e
                .location()
                .map(|l| Pos {
                    line: l.line(),
                    col: l.column(),
                })
                .unwrap_or_default(),
            message: clean_serde_message(&e.to_string()),
        })?;
        let mut index = PositionIndex::default();
        let mut parser = Parser::new_from_str(text);
        // serde_yaml accepted the text; a disagreement of the second parser
        // only costs positions, never the config.
        let _ = parser.load(&mut index, false);
        Ok(Document {
            value,
            positions: index.positions,
        })
    }

    /// Position of the key of the node at `path` (or of the node itself for
    /// sequence items and the root). Falls back to the closest ancestor.
    pub fn key_pos(&self, path: &str) -> Pos {
        self.lookup(path).0
    }

    /// Position of the value of the node at `path`, falling back like
    /// [`Document::key_pos`].
    pub fn value_pos(&self, path: &str) -> Pos {
        self.lookup(path).1
    }

    fn lookup(&self, path: &str) -> (Pos, Pos) {
        let mut p = path.to_string();
        loop {
            if let Some(found) = self.positions.get(&p) {
                return *found;
            }
            match parent(&p) {
                Some(up) => p = up,
                None => return self.positions.get("").copied().unwrap_or_default(),
            }
        }
    }

    /// Deserialises the node at `path` into `T`, reporting the first error at
    /// the position of the offending node.
    pub fn typed<T: DeserializeOwned>(&self, path: &str) -> Result<T, YamlError> {
        let node = self.node(path).cloned().unwrap_or(serde_yaml::Value::Null);
        serde_path_to_error::deserialize::<_, T>(node).map_err(|e| {
            let inner = e.path().to_string();
            let full = join(path, if inner == "." { "" } else { &inner });
            let message = clean_serde_message(&e.inner().to_string());
            // An unknown key is reported at the key; anything else at the value.
            let pos = if message.starts_with("unknown field") {
                self.key_pos(&full)
            } else {
                self.value_pos(&full)
            };
            YamlError { pos, message }
        })
    }

    /// Like [`Document::typed`], but keeps going after an error: the
    /// offending key is taken out and deserialisation retried, so several
    /// mistakes in one section are all reported. Returns the value built
    /// from what was left (for further checks) and every error.
    pub fn typed_all<T: DeserializeOwned>(&self, path: &str) -> (Option<T>, Vec<YamlError>) {
        let mut node = self.node(path).cloned().unwrap_or(serde_yaml::Value::Null);
        let mut errors: Vec<YamlError> = Vec::new();
        let mut removed: Vec<String> = Vec::new();
        for _ in 0..32 {
            match serde_path_to_error::deserialize::<_, T>(node.clone()) {
                Ok(v) => return (Some(v), errors),
                Err(e) => {
                    let inner = e.path().to_string();
                    let rel = if inner == "." { String::new() } else { inner };
                    let message = clean_serde_message(&e.inner().to_string());
                    // Taking a required key out makes serde report it
                    // missing: that is our doing, not the user's.
                    let ours = message.starts_with("missing field")
                        && removed.iter().any(|r| {
                            let (parent, leaf) = match r.rfind('.') {
                                Some(i) => (&r[..i], &r[i + 1..]),
                                None => ("", r.as_str()),
                            };
                            parent == rel && message.contains(&format!("`{leaf}`"))
                        });
                    if !ours {
                        let full = join(path, &rel);
                        let pos = if message.starts_with("unknown field") {
                            self.key_pos(&full)
                        } else {
                            self.value_pos(&full)
                        };
                        errors.push(YamlError { pos, message });
                    }
                    if ours || rel.is_empty() || !remove_path(&mut node, &rel) {
                        return (None, errors);
                    }
                    removed.push(rel);
                }
            }
        }
        (None, errors)
    }

    /// The generic value at `path` (`""` is the root).
    pub fn node(&self, path: &str) -> Option<&serde_yaml::Value> {
        let mut cur = &self.value;
        for seg in split_path(path) {
            cur = match seg {
                Seg::Key(k) => cur.as_mapping()?.get(serde_yaml::Value::String(k))?,
                Seg::Index(i) => cur.as_sequence()?.get(i)?,
            };
        }
        Some(cur)
    }
}

/// Removes the node at relative `path` from `value`; false if not found.
fn remove_path(value: &mut serde_yaml::Value, path: &str) -> bool {
    let mut segs = split_path(path);
    let Some(last) = segs.pop() else {
        return false;
    };
    let mut cur = value;
    for seg in segs {
        let next = match seg {
            Seg::Key(k) => cur
                .as_mapping_mut()
                .and_then(|m| m.get_mut(serde_yaml::Value::String(k))),
            Seg::Index(i) => cur.as_sequence_mut().and_then(|s| s.get_mut(i)),
        };
        match next {
            Some(n) => cur = n,
            None => return false,
        }
    }
    match last {
        Seg::Key(k) => cur
            .as_mapping_mut()
            .and_then(|m| m.remove(serde_yaml::Value::String(k)))
            .is_some(),
        Seg::Index(_) => false,
    }
}

/// Joins a base path and a relative one the way serde_path_to_error prints.
pub fn join(base: &str, rel: &str) -> String {
    match (base.is_empty(), rel.is_empty()) {
        (true, _) => rel.to_string(),
        (_, true) => base.to_string(),
        _ if rel.starts_with('[') => format!("{base}{rel}"),
        _ => format!("{base}.{rel}"),
    }
}

fn parent(path: &str) -> Option<String> {
    if path.is_empty() {
        return None;
    }
    let cut = path.rfind(['.', '[']).unwrap_or(0);
    Some(path[..cut].to_string())
}

enum Seg {
    Key(String),
    Index(usize),
}

fn split_path(path: &str) -> Vec<Seg> {
    let mut out = Vec::new();
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let mut rest = part;
        if let Some(b) = rest.find('[') {
            if b > 0 {
                out.push(Seg::Key(rest[..b].to_string()));
            }
            rest = &rest[b..];
            while let Some(stripped) = rest.strip_prefix('[') {
                let end = stripped.find(']').unwrap_or(stripped.len());
                if let Ok(i) = stripped[..end].parse() {
                    out.push(Seg::Index(i));
                }
                rest = stripped.get(end + 1..).unwrap_or("");
            }
        } else {
            out.push(Seg::Key(rest.to_string()));
        }
    }
    out
}

/// serde_yaml appends " at line X column Y" to messages; we print positions
/// ourselves.
/// Rust type names mean nothing to a YAML author either.
fn clean_serde_message(msg: &str) -> String {
    let msg = match msg.find(" at line ") {
        Some(i) => &msg[..i],
        None => msg,
    };
    let mut out = msg.to_string();
    for (rust, human) in [
        ("expected usize", "expected a whole number"),
        ("expected u64", "expected a whole number"),
        ("expected u32", "expected a whole number"),
        ("expected u16", "expected a whole number"),
        ("expected u8", "expected a whole number"),
    ] {
        if out.ends_with(rust) {
            out = format!("{}{human}", &out[..out.len() - rust.len()]);
        }
    }
    out
}

enum Frame {
    Map {
        path: String,
        key: Option<(String, Pos)>,
        first: bool,
    },
    Seq {
        path: String,
        next: usize,
    },
}

#[derive(Default)]
struct PositionIndex {
    positions: HashMap<String, (Pos, Pos)>,
    stack: Vec<Frame>,
}

impl PositionIndex {
    /// Path and key position for a node starting now, or `None` when the
    /// event is a mapping key.
    fn place(&mut self, at: Pos) -> Option<(String, Pos)> {
        match self.stack.last_mut() {
            None => Some((String::new(), at)),
            Some(Frame::Seq { path, next }) => {
                let p = format!("{path}[{next}]");
                *next += 1;
                Some((p, at))
            }
            Some(Frame::Map { path, key, .. }) => {
                key.take().map(|(k, kpos)| (join(path, &k), kpos))
            }
        }
    }
}

impl MarkedEventReceiver for PositionIndex {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let at = Pos {
            line: mark.line(),
            col: mark.col() + 1,
        };
        match ev {
            Event::Scalar(text, ..) => match self.place(at) {
                Some((path, kpos)) => {
                    self.positions.insert(path, (kpos, at));
                }
                None => {
                    if let Some(Frame::Map { key, first, path }) = self.stack.last_mut() {
                        *key = Some((text, at));
                        // A block mapping's start mark can lie past its
                        // first key; the key is where a reader looks.
                        if std::mem::take(first) {
                            if let Some(p) = self.positions.get_mut(path.as_str()) {
                                if p.0 == p.1 {
                                    *p = (at, at);
                                } else {
                                    p.1 = at;
                                }
                            }
                        }
                    }
                }
            },
            Event::MappingStart(..) | Event::SequenceStart(..) => {
                let Some((path, kpos)) = self.place(at) else {
                    // A complex mapping key: not something a pipeline uses.
                    self.stack.push(Frame::Seq {
                        path: "<complex key>".into(),
                        next: 0,
                    });
                    return;
                };
                self.positions.insert(path.clone(), (kpos, at));
                if matches!(ev, Event::MappingStart(..)) {
                    self.stack.push(Frame::Map {
                        path,
                        key: None,
                        first: true,
                    });
                } else {
                    self.stack.push(Frame::Seq { path, next: 0 });
                }
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            Event::Alias(_) => {
                self.place(at);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "a: 1\nb:\n  c: [x, y]\n  d:\n    - e: true\n      f: 2\n";

    #[test]
    fn positions_are_recorded_by_path() {
        let d = Document::parse(DOC).unwrap();
        assert_eq!(d.key_pos("a"), Pos { line: 1, col: 1 });
        assert_eq!(d.value_pos("a"), Pos { line: 1, col: 4 });
        assert_eq!(d.value_pos("b.c[1]"), Pos { line: 3, col: 10 });
        assert_eq!(d.key_pos("b.d[0].f"), Pos { line: 6, col: 7 });
        assert_eq!(d.value_pos("b.d[0].f"), Pos { line: 6, col: 10 });
        // Unknown paths fall back to the nearest ancestor.
        assert_eq!(d.key_pos("b.d[0].zz"), Pos { line: 5, col: 7 });
    }

    #[test]
    fn syntax_errors_carry_a_position() {
        let e = Document::parse("a: [1, 2\nb: 3\n").err().unwrap();
        assert!(e.pos.line >= 1, "{e:?}");
        assert!(!e.message.contains(" at line "), "{e:?}");
    }

    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct T {
        e: bool,
        f: u8,
    }

    #[test]
    fn typed_errors_point_at_the_offending_node() {
        let d = Document::parse(DOC).unwrap();
        let e = d.typed::<Vec<T>>("b.c").unwrap_err();
        assert_eq!(e.pos, Pos { line: 3, col: 7 }, "{e:?}");
        let ok = d.typed::<Vec<T>>("b.d").unwrap();
        assert_eq!(ok.len(), 1);
        let bad = Document::parse("- e: true\n  f: 2\n  g: 3\n").unwrap();
        let e = bad.typed::<Vec<T>>("").unwrap_err();
        assert!(e.message.starts_with("unknown field `g`"), "{e:?}");
        assert_eq!(e.pos, Pos { line: 3, col: 3 });
    }

    #[test]
    fn typed_all_reports_every_bad_key_of_a_section() {
        let d = Document::parse("- e: 1\n  f: 2\n  g: 3\n  h: 4\n").unwrap();
        let (v, errs) = d.typed_all::<Vec<T>>("");
        let mut msgs: Vec<&str> = errs.iter().map(|e| e.message.as_str()).collect();
        msgs.sort();
        assert_eq!(errs.len(), 3, "{msgs:?}");
        assert!(
            msgs[0].starts_with("invalid type: integer `1`, expected a boolean"),
            "{msgs:?}"
        );
        assert!(msgs[1].starts_with("unknown field `g`"), "{msgs:?}");
        assert!(msgs[2].starts_with("unknown field `h`"), "{msgs:?}");
        assert!(v.is_none(), "a required key was bad");
    }
}
