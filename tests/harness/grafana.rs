//! Reading the Grafana dashboard in `configs/grafana/`: its PromQL queries,
//! the metric names and grouping labels they use, and its `$variables`.
//!
//! The PromQL reading is a small tokenizer, not a parser: it finds the
//! identifiers that are metric names (everything that is not a function,
//! an aggregation, a keyword, a label matcher, a duration or a Grafana
//! variable) and refuses function names PromQL does not have. Real syntax
//! checking is left to a real Prometheus (`tests/prometheus.rs`).

use std::collections::BTreeSet;
use std::path::PathBuf;

use serde_json::Value;

use crate::paths::workspace_root;

/// The dashboard file, relative to the repository root.
pub const DASHBOARD_FILE: &str = "configs/grafana/sluice-dashboard.json";

/// Grafana's own variables that a query may use without defining them.
pub const GRAFANA_BUILTIN_VARIABLES: &[&str] = &[
    "__interval",
    "__interval_ms",
    "__range",
    "__range_s",
    "__range_ms",
    "__rate_interval",
];

/// PromQL functions (Prometheus 2.42).
const FUNCTIONS: &[&str] = &[
    "abs",
    "absent",
    "absent_over_time",
    "acos",
    "acosh",
    "asin",
    "asinh",
    "atan",
    "atanh",
    "avg_over_time",
    "ceil",
    "changes",
    "clamp",
    "clamp_max",
    "clamp_min",
    "cos",
    "cosh",
    "count_over_time",
    "day_of_month",
    "day_of_week",
    "day_of_year",
    "days_in_month",
    "deg",
    "delta",
    "deriv",
    "exp",
    "floor",
    "histogram_quantile",
    "holt_winters",
    "hour",
    "idelta",
    "increase",
    "irate",
    "label_join",
    "label_replace",
    "last_over_time",
    "ln",
    "log10",
    "log2",
    "max_over_time",
    "min_over_time",
    "minute",
    "month",
    "pi",
    "predict_linear",
    "present_over_time",
    "quantile_over_time",
    "rad",
    "rate",
    "resets",
    "round",
    "scalar",
    "sgn",
    "sin",
    "sinh",
    "sort",
    "sort_desc",
    "sqrt",
    "stddev_over_time",
    "stdvar_over_time",
    "sum_over_time",
    "tan",
    "tanh",
    "time",
    "timestamp",
    "vector",
    "year",
];

/// PromQL aggregation operators.
const AGGREGATIONS: &[&str] = &[
    "avg",
    "bottomk",
    "count",
    "count_values",
    "group",
    "max",
    "min",
    "quantile",
    "stddev",
    "stdvar",
    "sum",
    "topk",
];

/// Keywords followed by a parenthesised label list.
const LABEL_LIST_KEYWORDS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// Other keywords.
const KEYWORDS: &[&str] = &["and", "or", "unless", "bool", "offset", "atan2"];

/// One PromQL query of one dashboard panel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PanelQuery {
    /// The panel's title.
    pub panel: String,
    /// The query's `refId` (empty if missing).
    pub ref_id: String,
    /// The query's `expr` (empty if missing).
    pub expr: String,
}

/// What a PromQL expression refers to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PromqlRefs {
    /// Metric (sample) names, e.g. `sluice_end_to_end_latency_seconds_bucket`.
    pub metrics: BTreeSet<String>,
    /// Labels named in `by (...)`, `without (...)`, `on (...)`, … lists.
    pub grouping_labels: BTreeSet<String>,
    /// Labels named in `{...}` selectors.
    pub matcher_labels: BTreeSet<String>,
}

/// The absolute path of [`DASHBOARD_FILE`].
pub fn dashboard_path() -> PathBuf {
    workspace_root().join(DASHBOARD_FILE)
}

/// The dashboard JSON (panics with the reason if it is missing or invalid).
pub fn load_dashboard() -> Value {
    let path = dashboard_path();
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|err| panic!("read {}: {err}", path.display()));
    serde_json::from_str(&text)
        .unwrap_or_else(|err| panic!("{} is not JSON: {err}", path.display()))
}

/// Every panel of `dashboard`, including those nested in collapsed rows.
pub fn dashboard_panels(dashboard: &Value) -> Vec<&Value> {
    let mut all = Vec::new();
    for panel in dashboard["panels"].as_array().into_iter().flatten() {
        all.push(panel);
        all.extend(panel["panels"].as_array().into_iter().flatten());
    }
    all
}

/// Every query target of every panel of `dashboard`, in order.
pub fn dashboard_queries(dashboard: &Value) -> Vec<PanelQuery> {
    let mut queries = Vec::new();
    for panel in dashboard_panels(dashboard) {
        for target in panel["targets"].as_array().into_iter().flatten() {
            queries.push(PanelQuery {
                panel: panel["title"].as_str().unwrap_or_default().to_owned(),
                ref_id: target["refId"].as_str().unwrap_or_default().to_owned(),
                expr: target["expr"].as_str().unwrap_or_default().to_owned(),
            });
        }
    }
    queries
}

fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':'
}

fn is_ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// Index just past the string literal that starts at `start` (a quote).
fn skip_string(chars: &[char], start: usize) -> usize {
    let quote = chars[start];
    let mut i = start + 1;
    while i < chars.len() {
        match chars[i] {
            '\\' if quote != '`' => i += 2,
            c if c == quote => return i + 1,
            _ => i += 1,
        }
    }
    i
}

/// Index just past the identifier starting at `start`.
fn ident_end(chars: &[char], start: usize) -> usize {
    let mut i = start;
    while i < chars.len() && is_ident_char(chars[i]) {
        i += 1;
    }
    i
}

/// Index of the next non-space character at or after `i`.
fn skip_space(chars: &[char], mut i: usize) -> usize {
    while i < chars.len() && chars[i].is_whitespace() {
        i += 1;
    }
    i
}

/// Index just past a Grafana variable (`$name` or `${name...}`) at `start`.
fn skip_variable(chars: &[char], start: usize) -> usize {
    let i = start + 1;
    if chars.get(i) == Some(&'{') {
        chars[i..]
            .iter()
            .position(|&c| c == '}')
            .map_or(chars.len(), |end| i + end + 1)
    } else {
        ident_end(chars, i)
    }
}

/// The metric names and labels a PromQL expression (which may hold
/// Grafana variables) refers to. An identifier followed by `(` that is no
/// PromQL function or aggregation is an error.
pub fn promql_refs(expr: &str) -> Result<PromqlRefs, String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut refs = PromqlRefs::default();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' || c == '`' {
            i = skip_string(&chars, i);
        } else if c == '$' {
            i = skip_variable(&chars, i);
        } else if c == '[' {
            // A range or subquery: durations and variables only.
            i = chars[i..]
                .iter()
                .position(|&c| c == ']')
                .map_or(chars.len(), |end| i + end + 1);
        } else if c == '{' {
            // Label matchers: `name op "value"`, comma-separated.
            i += 1;
            let mut expect_name = true;
            while i < chars.len() && chars[i] != '}' {
                let c = chars[i];
                if c == '"' || c == '\'' || c == '`' {
                    i = skip_string(&chars, i);
                } else if is_ident_start(c) && expect_name {
                    let end = ident_end(&chars, i);
                    refs.matcher_labels.insert(chars[i..end].iter().collect());
                    expect_name = false;
                    i = end;
                } else {
                    if c == ',' {
                        expect_name = true;
                    }
                    i += 1;
                }
            }
            i += 1;
        } else if c.is_ascii_digit()
            || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            // A number or a duration (`0.99`, `1e3`, `5m`).
            while i < chars.len() && (is_ident_char(chars[i]) || chars[i] == '.') {
                i += 1;
            }
        } else if is_ident_start(c) {
            let end = ident_end(&chars, i);
            let word: String = chars[i..end].iter().collect();
            let next = skip_space(&chars, end);
            let lower = word.to_ascii_lowercase();
            if LABEL_LIST_KEYWORDS.contains(&lower.as_str()) {
                i = next;
                if chars.get(i) == Some(&'(') {
                    let close = chars[i..]
                        .iter()
                        .position(|&c| c == ')')
                        .map_or(chars.len(), |end| i + end);
                    let list: String = chars[i + 1..close].iter().collect();
                    for label in list.split(',').map(str::trim).filter(|l| !l.is_empty()) {
                        refs.grouping_labels.insert(label.to_owned());
                    }
                    i = close + 1;
                }
                continue;
            }
            if AGGREGATIONS.contains(&lower.as_str()) || KEYWORDS.contains(&lower.as_str()) {
                i = end;
                continue;
            }
            if chars.get(next) == Some(&'(') {
                if !FUNCTIONS.contains(&word.as_str()) {
                    return Err(format!("`{word}(` is not a PromQL function in `{expr}`"));
                }
            } else {
                refs.metrics.insert(word);
            }
            i = end;
        } else {
            i += 1;
        }
    }
    Ok(refs)
}

/// The names of the Grafana variables (`$name`, `${name}`, `${name:fmt}`,
/// `[[name]]`) that `text` uses.
pub fn grafana_variables(text: &str) -> BTreeSet<String> {
    let chars: Vec<char> = text.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    while i < chars.len() {
        if chars[i] == '$' {
            let end = skip_variable(&chars, i);
            let raw: String = chars[i + 1..end].iter().collect();
            let name = raw
                .trim_start_matches('{')
                .trim_end_matches('}')
                .split([':', '.'])
                .next()
                .unwrap_or_default()
                .to_owned();
            if !name.is_empty() {
                names.insert(name);
            }
            i = end.max(i + 1);
        } else if chars[i] == '[' && chars.get(i + 1) == Some(&'[') {
            let start = i + 2;
            let end = ident_end(&chars, start);
            if end > start && chars.get(end) == Some(&']') {
                names.insert(chars[start..end].iter().collect());
            }
            i = end.max(i + 1);
        } else {
            i += 1;
        }
    }
    names
}

/// `text` with every `$name` / `${name}` of `values` replaced by its value.
/// Fails naming the variables that are left.
pub fn expand_variables(text: &str, values: &[(&str, &str)]) -> Result<String, String> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::new();
    let mut unknown = BTreeSet::new();
    let mut i = 0;
    while i < chars.len() {
        if chars[i] != '$' {
            out.push(chars[i]);
            i += 1;
            continue;
        }
        let end = skip_variable(&chars, i);
        let raw: String = chars[i + 1..end].iter().collect();
        let name = raw
            .trim_start_matches('{')
            .trim_end_matches('}')
            .split(':')
            .next()
            .unwrap_or_default();
        match values.iter().find(|(key, _)| *key == name) {
            Some((_, value)) => out.push_str(value),
            None => {
                unknown.insert(name.to_owned());
                out.push_str(&chars[i..end].iter().collect::<String>());
            }
        }
        i = end.max(i + 1);
    }
    if unknown.is_empty() {
        Ok(out)
    } else {
        Err(format!("no value for {unknown:?} in `{text}`"))
    }
}

#[cfg(test)]
mod tests {
    use super::{expand_variables, grafana_variables, promql_refs};

    #[test]
    fn finds_the_metrics_and_labels_of_a_query() {
        let refs = promql_refs(
            r#"histogram_quantile(0.99, sum by (pipeline, le) (rate(a_bucket{pipeline=~"$pipeline", x="}by(y)"}[$__rate_interval]))) / ignoring(le) b_total offset 5m and on (instance) c"#,
        )
        .unwrap();
        let metrics: Vec<&str> = refs.metrics.iter().map(String::as_str).collect();
        assert_eq!(metrics, ["a_bucket", "b_total", "c"]);
        let grouping: Vec<&str> = refs.grouping_labels.iter().map(String::as_str).collect();
        assert_eq!(grouping, ["instance", "le", "pipeline"]);
        let matchers: Vec<&str> = refs.matcher_labels.iter().map(String::as_str).collect();
        assert_eq!(matchers, ["pipeline", "x"]);
    }

    #[test]
    fn refuses_a_function_promql_does_not_have() {
        let err = promql_refs("rates(a_total[5m])").unwrap_err();
        assert!(err.contains("`rates(`"), "{err}");
    }

    #[test]
    fn lists_and_expands_grafana_variables() {
        let expr = r#"rate(m{p=~"$pipeline",i=~"${instance:regex}"}[$__rate_interval]) [[old]]"#;
        let names: Vec<String> = grafana_variables(expr).into_iter().collect();
        assert_eq!(names, ["__rate_interval", "instance", "old", "pipeline"]);
        assert_eq!(
            expand_variables("a{p=~\"$p\"}[${r}]", &[("p", "x|y"), ("r", "1m")]).unwrap(),
            "a{p=~\"x|y\"}[1m]"
        );
        let err = expand_variables("$a $b", &[("a", "1")]).unwrap_err();
        assert!(err.contains("\"b\""), "{err}");
    }
}
