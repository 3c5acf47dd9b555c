//! Templates over MQTT metadata for Kafka topics and keys:
//! `{{topic}}` is the whole MQTT topic, `{{topic.N}}` its level N (0-based),
//! `{{pipeline}}` the pipeline name. Everything else is literal text.

use std::fmt;

/// A parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Lit(String),
    Topic,
    Level(usize),
    Pipeline,
}

/// A template that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TemplateError(String);

/// Rendering failed because the topic has too few levels.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "template `{template}` needs topic level {level} but MQTT topic `{topic}` has {levels} levels"
)]
pub struct RenderError {
    template: String,
    level: usize,
    topic: String,
    levels: usize,
}

impl Template {
    /// Parses a template string.
    pub fn parse(s: &str) -> Result<Self, TemplateError> {
        let mut parts = Vec::new();
        let mut rest = s;
        while let Some(open) = rest.find("{{") {
            if open > 0 {
                parts.push(Part::Lit(rest[..open].to_string()));
            }
            let after = &rest[open + 2..];
            let close = after
                .find("}}")
                .ok_or_else(|| TemplateError(format!("unclosed `{{{{` in template `{s}`")))?;
            let var = after[..close].trim();
            let part = match var {
                "topic" => Part::Topic,
                "pipeline" => Part::Pipeline,
                _ => match var.strip_prefix("topic.").map(str::parse::<usize>) {
                    Some(Ok(n)) => Part::Level(n),
                    _ => {
                        return Err(TemplateError(format!(
                            "unknown template variable `{var}` in `{s}` (expected `topic`, `topic.N` or `pipeline`)"
                        )))
                    }
                },
            };
            parts.push(part);
            rest = &after[close + 2..];
        }
        if rest.contains("}}") {
            return Err(TemplateError(format!("stray `}}}}` in template `{s}`")));
        }
        if !rest.is_empty() {
            parts.push(Part::Lit(rest.to_string()));
        }
        Ok(Template { parts })
    }

    /// The literal value when the template has no variables.
    pub fn as_static(&self) -> Option<&str> {
        match self.parts.as_slice() {
            [] => Some(""),
            [Part::Lit(s)] => Some(s),
            _ => None,
        }
    }

    /// Renders the template for one message.
    pub fn render(&self, topic: &str, pipeline: &str) -> Result<String, RenderError> {
        if let Some(s) = self.as_static() {
            return Ok(s.to_string());
        }
        let mut out = String::new();
        for p in &self.parts {
            match p {
                Part::Lit(s) => out.push_str(s),
                Part::Topic => out.push_str(topic),
                Part::Pipeline => out.push_str(pipeline),
                Part::Level(n) => match topic.split('/').nth(*n) {
                    Some(level) => out.push_str(level),
                    None => {
                        return Err(RenderError {
                            template: self.to_string(),
                            level: *n,
                            topic: topic.to_string(),
                            levels: topic.split('/').count(),
                        })
                    }
                },
            }
        }
        Ok(out)
    }
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for p in &self.parts {
            match p {
                Part::Lit(s) => f.write_str(s)?,
                Part::Topic => f.write_str("{{topic}}")?,
                Part::Pipeline => f.write_str("{{pipeline}}")?,
                Part::Level(n) => write!(f, "{{{{topic.{n}}}}}")?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_levels_render() {
        let t = Template::parse("{{topic.2}}").unwrap();
        assert_eq!(
            t.render("sensors/dev-1/telemetry", "p").unwrap(),
            "telemetry"
        );
        let k = Template::parse("{{pipeline}}-{{ topic.1 }}").unwrap();
        assert_eq!(k.render("sensors/dev-1/telemetry", "p").unwrap(), "p-dev-1");
        assert_eq!(
            Template::parse("static").unwrap().as_static(),
            Some("static")
        );
        assert_eq!(
            Template::parse("{{topic}}")
                .unwrap()
                .render("a/b", "p")
                .unwrap(),
            "a/b"
        );
    }

    #[test]
    fn missing_levels_and_bad_variables_are_errors() {
        let t = Template::parse("{{topic.5}}").unwrap();
        assert!(t
            .render("a/b", "p")
            .unwrap_err()
            .to_string()
            .contains("has 2 levels"));
        assert!(Template::parse("{{device}}")
            .unwrap_err()
            .to_string()
            .contains("unknown template variable `device`"));
        assert!(Template::parse("{{topic.1").is_err());
        assert!(Template::parse("a}}").is_err());
    }

    #[test]
    fn display_round_trips() {
        let s = "x-{{topic.1}}-{{topic}}-{{pipeline}}";
        assert_eq!(Template::parse(s).unwrap().to_string(), s);
    }
}
