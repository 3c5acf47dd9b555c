//! `${VAR}` and `${VAR:-default}` expansion over the raw YAML text.

use super::yaml::Pos;

/// An environment reference that could not be expanded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvError {
    /// Where the reference starts.
    pub pos: Pos,
    /// What is wrong.
    pub message: String,
}

/// Expands every `${NAME}` / `${NAME:-default}` in `text` using `lookup`.
/// `$${` stays a literal `${`. Returns the expanded text or every error found.
pub fn expand(
    text: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<String, Vec<EnvError>> {
    let mut out = String::with_capacity(text.len());
    let mut errors = Vec::new();
    let mut line = 1;
    let mut line_start = 0;
    let mut i = 0;
    let bytes = text.as_bytes();
    while i < text.len() {
        let c = bytes[i];
        if c == b'\n' {
            line += 1;
            line_start = i + 1;
        }
        if text[i..].starts_with("$${") {
            out.push_str("${");
            i += 3;
            continue;
        }
        if !text[i..].starts_with("${") {
            let ch = text[i..].chars().next().unwrap_or('\0');
            out.push(ch);
            i += ch.len_utf8().max(1);
            continue;
        }
        let pos = Pos {
            line,
            col: text[line_start..i].chars().count() + 1,
        };
        let Some(end) = text[i + 2..].find('}').map(|e| i + 2 + e) else {
            errors.push(EnvError {
                pos,
                message: "unterminated `${`: expected `}`".into(),
            });
            break;
        };
        let inner = &text[i + 2..end];
        let (name, default) = match inner.find(":-") {
            Some(d) => (&inner[..d], Some(&inner[d + 2..])),
            None => (inner, None),
        };
        let valid = !name.is_empty()
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !name.starts_with(|c: char| c.is_ascii_digit());
        if !valid {
            errors.push(EnvError {
                pos,
                message: format!("invalid environment variable name `{name}` in `${{{inner}}}`"),
            });
        } else {
            match (lookup(name), default) {
                (Some(v), None) => out.push_str(&v),
                (Some(v), Some(_)) if !v.is_empty() => out.push_str(&v),
                (_, Some(d)) => out.push_str(d),
                (None, None) => errors.push(EnvError {
                    pos,
                    message: format!(
                        "environment variable `{name}` is not set (use `${{{name}:-default}}` to give a default)"
                    ),
                }),
            }
        }
        i = end + 1;
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "HOST" => Some("broker".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn variables_and_defaults_expand() {
        assert_eq!(
            expand("url: mqtt://${HOST}:1883", env).unwrap(),
            "url: mqtt://broker:1883"
        );
        assert_eq!(expand("a: ${NOPE:-x}", env).unwrap(), "a: x");
        assert_eq!(expand("a: ${EMPTY:-x}", env).unwrap(), "a: x");
        assert_eq!(expand("a: ${EMPTY}", env).unwrap(), "a: ");
        assert_eq!(expand("a: $${HOST} é", env).unwrap(), "a: ${HOST} é");
    }

    #[test]
    fn every_unset_variable_is_reported_with_its_position() {
        let errs = expand("a: 1\nb: ${ONE}\nc: x ${TWO}", env).unwrap_err();
        assert_eq!(errs.len(), 2);
        assert_eq!(errs[0].pos, Pos { line: 2, col: 4 });
        assert!(errs[0].message.contains("`ONE` is not set"));
        assert_eq!(errs[1].pos, Pos { line: 3, col: 6 });
    }

    #[test]
    fn malformed_references_are_errors() {
        assert_eq!(expand("a: ${1X}", env).unwrap_err().len(), 1);
        assert!(expand("a: ${HOST", env).unwrap_err()[0]
            .message
            .contains("unterminated"));
    }
}
