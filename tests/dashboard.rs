//! The Grafana dashboard (`configs/grafana/sluice-dashboard.json`) and the
//! Prometheus scrape config example (`configs/prometheus.yml`), checked
//! without any server.
//!
//! Grafana publishes no JSON Schema for dashboards in a package registry
//! (`@grafana/schema` and the foundation SDK on npm and PyPI ship types and
//! builders, not schema files), so the dashboard is checked here against
//! the classic dashboard model (schemaVersion 36-41) by hand: known keys
//! only, required fields, unique panel ids, a grid that fits 24 columns
//! without overlaps, well-formed queries and template variables. Its
//! queries are checked against sluice's real `/metrics` text (every metric
//! and label they name exists), and `tests/prometheus.rs` runs each of them
//! on a real Prometheus.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use serde_json::{json, Value};
use sluice::metrics::Metrics;
use sluice_tests::*;

/// Top-level keys of a classic dashboard, plus the `__inputs` /
/// `__requires` / `__elements` that Grafana's export adds for import.
const DASHBOARD_KEYS: &[&str] = &[
    "__elements",
    "__inputs",
    "__requires",
    "annotations",
    "description",
    "editable",
    "fiscalYearStartMonth",
    "gnetId",
    "graphTooltip",
    "id",
    "links",
    "liveNow",
    "panels",
    "refresh",
    "revision",
    "schemaVersion",
    "snapshot",
    "tags",
    "templating",
    "time",
    "timepicker",
    "timezone",
    "title",
    "uid",
    "version",
    "weekStart",
];

const REQUIRED_DASHBOARD_KEYS: &[&str] = &[
    "annotations",
    "editable",
    "graphTooltip",
    "panels",
    "schemaVersion",
    "templating",
    "time",
    "title",
    "uid",
];

/// Keys of a panel (and of a row, which adds `collapsed` and `panels`).
const PANEL_KEYS: &[&str] = &[
    "collapsed",
    "datasource",
    "description",
    "fieldConfig",
    "gridPos",
    "hideTimeOverride",
    "id",
    "interval",
    "libraryPanel",
    "links",
    "maxDataPoints",
    "maxPerRow",
    "options",
    "panels",
    "pluginVersion",
    "repeat",
    "repeatDirection",
    "tags",
    "targets",
    "timeFrom",
    "timeShift",
    "title",
    "transformations",
    "transparent",
    "type",
];

/// Core panel plugins of Grafana 10 and 11 (the deprecated `graph` is not
/// among them: Grafana 11 migrates it away).
const PANEL_TYPES: &[&str] = &[
    "barchart",
    "bargauge",
    "gauge",
    "heatmap",
    "histogram",
    "piechart",
    "row",
    "stat",
    "state-timeline",
    "status-history",
    "table",
    "text",
    "timeseries",
];

/// Keys of a Prometheus query target.
const TARGET_KEYS: &[&str] = &[
    "datasource",
    "editorMode",
    "exemplar",
    "expr",
    "format",
    "hide",
    "instant",
    "interval",
    "intervalFactor",
    "legendFormat",
    "range",
    "refId",
];

const VARIABLE_KEYS: &[&str] = &[
    "allValue",
    "current",
    "datasource",
    "definition",
    "description",
    "hide",
    "includeAll",
    "label",
    "multi",
    "name",
    "options",
    "query",
    "refresh",
    "regex",
    "skipUrlSync",
    "sort",
    "type",
];

const VARIABLE_TYPES: &[&str] = &[
    "adhoc",
    "constant",
    "custom",
    "datasource",
    "interval",
    "query",
    "system",
    "textbox",
];

/// Labels Prometheus adds to every scraped sample.
const TARGET_LABELS: &[&str] = &["instance", "job"];

/// What every panel and query variable reads from: the dashboard's
/// `datasource` variable, so the importer picks the Prometheus.
fn datasource_ref() -> Value {
    json!({ "type": "prometheus", "uid": "${datasource}" })
}

/// Collects problems instead of stopping at the first one.
#[derive(Default)]
struct Problems(Vec<String>);

impl Problems {
    fn check(&mut self, ok: bool, problem: impl FnOnce() -> String) {
        if !ok {
            self.0.push(problem());
        }
    }

    fn only_keys(&mut self, what: &str, value: &Value, allowed: &[&str]) {
        match value.as_object() {
            Some(object) => {
                for key in object.keys() {
                    self.check(allowed.contains(&key.as_str()), || {
                        format!("{what}: unknown key `{key}`")
                    });
                }
            }
            None => self
                .0
                .push(format!("{what}: expected an object, found {value}")),
        }
    }

    fn assert_none(self, what: &str) {
        assert!(
            self.0.is_empty(),
            "{} problem(s) with {what}:\n  {}",
            self.0.len(),
            self.0.join("\n  ")
        );
    }
}

fn is_int_in(value: &Value, min: i64, max: i64) -> bool {
    value.as_i64().is_some_and(|n| (min..=max).contains(&n))
}

fn non_empty_str(value: &Value) -> bool {
    value.as_str().is_some_and(|s| !s.trim().is_empty())
}

/// The grid rectangle of a panel: (x, y, w, h), or a problem.
fn grid(panel: &Value, what: &str, problems: &mut Problems) -> Option<(i64, i64, i64, i64)> {
    let pos = &panel["gridPos"];
    problems.only_keys(
        &format!("{what}.gridPos"),
        pos,
        &["h", "w", "x", "y", "static"],
    );
    let (Some(x), Some(y), Some(w), Some(h)) = (
        pos["x"].as_i64(),
        pos["y"].as_i64(),
        pos["w"].as_i64(),
        pos["h"].as_i64(),
    ) else {
        problems.0.push(format!(
            "{what}: gridPos needs integer x, y, w and h, found {pos}"
        ));
        return None;
    };
    problems.check((1..=24).contains(&w), || {
        format!("{what}: width {w} not in 1..=24")
    });
    problems.check((0..24).contains(&x), || {
        format!("{what}: x {x} not in 0..24")
    });
    problems.check(x + w <= 24, || {
        format!("{what}: x {x} + width {w} is past the 24 grid columns")
    });
    problems.check(y >= 0 && h > 0, || format!("{what}: y {y} / height {h}"));
    Some((x, y, w, h))
}

fn check_field_config(panel: &Value, what: &str, problems: &mut Problems) {
    let config = &panel["fieldConfig"];
    problems.only_keys(
        &format!("{what}.fieldConfig"),
        config,
        &["defaults", "overrides"],
    );
    problems.check(config["defaults"].is_object(), || {
        format!("{what}: fieldConfig.defaults must be an object")
    });
    problems.check(config["overrides"].is_array(), || {
        format!("{what}: fieldConfig.overrides must be an array")
    });
    let defaults = &config["defaults"];
    if let Some(unit) = defaults.get("unit") {
        problems.check(non_empty_str(unit), || format!("{what}: unit {unit}"));
    }
    if let Some(thresholds) = defaults.get("thresholds") {
        problems.check(
            matches!(thresholds["mode"].as_str(), Some("absolute" | "percentage")),
            || format!("{what}: thresholds.mode {}", thresholds["mode"]),
        );
        let steps = thresholds["steps"].as_array().cloned().unwrap_or_default();
        problems.check(!steps.is_empty(), || {
            format!("{what}: thresholds without steps")
        });
        for (index, step) in steps.iter().enumerate() {
            // The first step's value is null (-Infinity).
            let value_ok = step["value"].is_number() || (index == 0 && step["value"].is_null());
            problems.check(value_ok && non_empty_str(&step["color"]), || {
                format!("{what}: threshold step {step}")
            });
        }
    }
    for mapping in defaults["mappings"].as_array().into_iter().flatten() {
        problems.check(
            matches!(
                mapping["type"].as_str(),
                Some("value" | "range" | "regex" | "special")
            ) && mapping["options"].is_object(),
            || format!("{what}: value mapping {mapping}"),
        );
    }
}

fn check_targets(panel: &Value, what: &str, problems: &mut Problems) {
    let Some(targets) = panel["targets"].as_array().filter(|t| !t.is_empty()) else {
        problems.0.push(format!("{what}: no targets"));
        return;
    };
    let mut ref_ids = BTreeSet::new();
    for (index, target) in targets.iter().enumerate() {
        let what = format!("{what} target {index}");
        problems.only_keys(&what, target, TARGET_KEYS);
        let ref_id = target["refId"].as_str().unwrap_or_default();
        problems.check(!ref_id.is_empty(), || format!("{what}: no refId"));
        problems.check(ref_ids.insert(ref_id.to_owned()), || {
            format!("{what}: refId {ref_id} used twice in the panel")
        });
        problems.check(non_empty_str(&target["expr"]), || {
            format!("{what}: no expr")
        });
        if let Some(datasource) = target.get("datasource") {
            problems.check(*datasource == panel["datasource"], || {
                format!("{what}: datasource {datasource} differs from the panel's")
            });
        }
        if let Some(legend) = target.get("legendFormat") {
            problems.check(legend.is_string(), || {
                format!("{what}: legendFormat {legend}")
            });
        }
    }
}

fn check_panels(dashboard: &Value, problems: &mut Problems) {
    let Some(panels) = dashboard["panels"].as_array().filter(|p| !p.is_empty()) else {
        problems.0.push("no panels".into());
        return;
    };
    let mut ids = BTreeSet::new();
    let mut titles = BTreeSet::new();
    let mut placed: Vec<(String, (i64, i64, i64, i64))> = Vec::new();
    for panel in dashboard_panels(dashboard) {
        let title = panel["title"].as_str().unwrap_or_default();
        let what = format!("panel {} {title:?}", panel["id"]);
        problems.only_keys(&what, panel, PANEL_KEYS);
        problems.check(!title.trim().is_empty(), || format!("{what}: no title"));
        match panel["id"].as_i64() {
            Some(id) if id > 0 => {
                problems.check(ids.insert(id), || format!("{what}: id {id} is not unique"))
            }
            _ => problems
                .0
                .push(format!("{what}: id must be a positive integer")),
        }
        let kind = panel["type"].as_str().unwrap_or_default();
        problems.check(PANEL_TYPES.contains(&kind), || {
            format!("{what}: type {kind:?} is not a core panel type")
        });
        let rect = grid(panel, &what, problems);
        if kind == "row" {
            problems.check(panel["collapsed"].is_boolean(), || {
                format!("{what}: a row needs collapsed: true|false")
            });
            // An expanded row's panels follow it at the top level.
            problems.check(
                panel["collapsed"] == true || panel["panels"] == json!([]),
                || format!("{what}: an expanded row must have `panels: []`"),
            );
            problems.check(panel.get("targets").is_none(), || {
                format!("{what}: a row has no targets")
            });
            problems.check(
                rect.is_none_or(|(x, _, w, h)| x == 0 && w == 24 && h == 1),
                || format!("{what}: a row spans the grid (x 0, w 24, h 1)"),
            );
        } else {
            problems.check(titles.insert(title.to_owned()), || {
                format!("{what}: title used twice")
            });
            problems.check(panel["datasource"] == datasource_ref(), || {
                format!(
                    "{what}: datasource must be {}, found {}",
                    datasource_ref(),
                    panel["datasource"]
                )
            });
            problems.check(panel.get("panels").is_none(), || {
                format!("{what}: only rows have panels")
            });
            check_targets(panel, &what, problems);
            check_field_config(panel, &what, problems);
            if let Some(options) = panel.get("options") {
                problems.check(options.is_object(), || format!("{what}: options {options}"));
            }
        }
        if let Some(rect) = rect {
            if panels.iter().any(|top| std::ptr::eq(top, panel)) {
                placed.push((what, rect));
            }
        }
    }
    // Top-level panels must not overlap.
    for (index, (a, (ax, ay, aw, ah))) in placed.iter().enumerate() {
        for (b, (bx, by, bw, bh)) in &placed[index + 1..] {
            let overlap = ax < &(bx + bw) && bx < &(ax + aw) && ay < &(by + bh) && by < &(ay + ah);
            problems.check(!overlap, || format!("{a} overlaps {b}"));
        }
    }
}

/// The text of a query variable's query (a string or `{query: ...}`).
fn variable_query(variable: &Value) -> &str {
    variable["query"]
        .as_str()
        .or_else(|| variable["query"]["query"].as_str())
        .unwrap_or_default()
}

fn check_templating(dashboard: &Value, problems: &mut Problems) {
    let templating = &dashboard["templating"];
    problems.only_keys("templating", templating, &["list"]);
    let variables = templating["list"].as_array().cloned().unwrap_or_default();
    let mut defined: BTreeSet<String> = GRAFANA_BUILTIN_VARIABLES
        .iter()
        .map(|name| (*name).to_owned())
        .collect();
    for variable in &variables {
        let name = variable["name"].as_str().unwrap_or_default();
        let what = format!("variable {name:?}");
        problems.only_keys(&what, variable, VARIABLE_KEYS);
        problems.check(
            !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            || format!("{what}: bad name"),
        );
        let kind = variable["type"].as_str().unwrap_or_default();
        problems.check(VARIABLE_TYPES.contains(&kind), || {
            format!("{what}: type {kind:?}")
        });
        for (key, max) in [("hide", 2), ("refresh", 2), ("sort", 8)] {
            if let Some(value) = variable.get(key) {
                problems.check(is_int_in(value, 0, max), || {
                    format!("{what}: {key} {value} not in 0..={max}")
                });
            }
        }
        for key in ["multi", "includeAll", "skipUrlSync"] {
            if let Some(value) = variable.get(key) {
                problems.check(value.is_boolean(), || format!("{what}: {key} {value}"));
            }
        }
        match kind {
            "datasource" => problems.check(variable["query"] == "prometheus", || {
                format!("{what}: a datasource variable of type prometheus")
            }),
            "query" => {
                problems.check(variable["datasource"] == datasource_ref(), || {
                    format!("{what}: datasource must be {}", datasource_ref())
                });
                let query = variable_query(variable);
                problems.check(query.starts_with("label_values("), || {
                    format!("{what}: expected a label_values(...) query, found {query:?}")
                });
                // A variable can use only those defined before it.
                for used in grafana_variables(query) {
                    problems.check(defined.contains(&used), || {
                        format!("{what}: uses ${used}, which is not defined before it")
                    });
                }
            }
            _ => {}
        }
        problems.check(defined.insert(name.to_owned()), || {
            format!("{what}: defined twice")
        });
    }
    problems.check(
        variables
            .iter()
            .any(|v| v["name"] == "datasource" && v["type"] == "datasource"),
        || "no `datasource` variable of type datasource".into(),
    );
    let pipeline = variables.iter().find(|v| v["name"] == "pipeline");
    problems.check(
        pipeline.is_some_and(|v| {
            let query = variable_query(v).replace(' ', "");
            query.starts_with("label_values(sluice_messages_received_total")
                && query.ends_with(",pipeline)")
        }),
        || {
            "no `pipeline` variable from label_values(sluice_messages_received_total, pipeline)"
                .into()
        },
    );
    for query in dashboard_queries(dashboard) {
        for used in grafana_variables(&query.expr) {
            problems.check(defined.contains(&used), || {
                format!(
                    "panel {:?} {}: undefined variable ${used}",
                    query.panel, query.ref_id
                )
            });
        }
    }
}

#[test]
fn the_dashboard_is_well_formed_grafana_dashboard_json() {
    let dashboard = load_dashboard();
    let mut problems = Problems::default();
    problems.only_keys("dashboard", &dashboard, DASHBOARD_KEYS);
    for key in REQUIRED_DASHBOARD_KEYS {
        problems.check(dashboard.get(key).is_some(), || format!("missing `{key}`"));
    }
    problems.check(is_int_in(&dashboard["schemaVersion"], 36, 41), || {
        format!(
            "schemaVersion {} is not one of Grafana 9.4-11 (36..=41)",
            dashboard["schemaVersion"]
        )
    });
    let uid = dashboard["uid"].as_str().unwrap_or_default();
    problems.check(
        (1..=40).contains(&uid.len())
            && uid
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
        || format!("uid {uid:?}: 1-40 of [A-Za-z0-9_-]"),
    );
    problems.check(non_empty_str(&dashboard["title"]), || "no title".into());
    problems.check(dashboard["editable"].is_boolean(), || "editable".into());
    problems.check(is_int_in(&dashboard["graphTooltip"], 0, 2), || {
        "graphTooltip not in 0..=2".into()
    });
    problems.only_keys("time", &dashboard["time"], &["from", "to"]);
    problems.check(
        non_empty_str(&dashboard["time"]["from"]) && non_empty_str(&dashboard["time"]["to"]),
        || "time needs from and to".into(),
    );
    if let Some(refresh) = dashboard.get("refresh") {
        problems.check(refresh.is_string() || *refresh == false, || {
            format!("refresh {refresh}")
        });
    }
    for tag in dashboard["tags"].as_array().into_iter().flatten() {
        problems.check(tag.is_string(), || format!("tag {tag}"));
    }
    problems.only_keys("annotations", &dashboard["annotations"], &["list"]);
    for annotation in dashboard["annotations"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        problems.check(
            non_empty_str(&annotation["name"])
                && annotation["datasource"].is_object()
                && annotation["enable"].is_boolean()
                && non_empty_str(&annotation["iconColor"]),
            || format!("annotation needs name, datasource, enable, iconColor: {annotation}"),
        );
    }
    check_panels(&dashboard, &mut problems);
    check_templating(&dashboard, &mut problems);
    problems.assert_none(DASHBOARD_FILE);
}

/// Sluice's `/metrics` text with one pipeline, one transform and one trap
/// (trap series exist only once one happened).
fn sluice_metrics_text() -> String {
    let metrics = Metrics::new();
    let pipeline = metrics.pipeline("sensors", &["to-celsius".to_owned()]);
    pipeline.transforms()[0].trap("trap");
    metrics.render()
}

/// Sample name -> label names (plus `instance` and `job`, which the scrape
/// adds), from Prometheus text.
fn samples(text: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut samples: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let labels = samples.entry(line[..name_end].to_owned()).or_default();
        labels.extend(TARGET_LABELS.iter().map(|l| (*l).to_owned()));
        if let Some(rest) = line[name_end..].strip_prefix('{') {
            // name="value",... with values free of quotes here.
            for pair in rest.split("\",") {
                if let Some((label, _)) = pair.split_once("=\"") {
                    labels.insert(label.trim_start_matches(',').to_owned());
                }
            }
        }
    }
    samples
}

/// `# TYPE` lines: family name -> type.
fn families(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.split_once(' '))
        .map(|(name, kind)| (name.to_owned(), kind.to_owned()))
        .collect()
}

#[test]
fn every_metric_and_label_the_dashboard_queries_is_in_sluice_metrics_output() {
    let text = sluice_metrics_text();
    let samples = samples(&text);
    let dashboard = load_dashboard();
    let mut problems = Problems::default();
    let mut queries: Vec<(String, String)> = dashboard_queries(&dashboard)
        .into_iter()
        .map(|q| (format!("panel {:?} {}", q.panel, q.ref_id), q.expr))
        .collect();
    // label_values(METRIC{...}, LABEL) of the query variables.
    for variable in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let query = variable_query(variable);
        if let Some(inner) = query
            .strip_prefix("label_values(")
            .and_then(|q| q.strip_suffix(')'))
        {
            let (selector, label) = inner.rsplit_once(',').unwrap_or((inner, ""));
            let label = label.trim();
            queries.push((
                format!("variable {}", variable["name"]),
                format!("count by ({label}) ({selector})"),
            ));
        }
    }
    problems.check(!queries.is_empty(), || {
        "the dashboard has no queries".into()
    });
    for (what, expr) in &queries {
        let refs = match promql_refs(expr) {
            Ok(refs) => refs,
            Err(err) => {
                problems.0.push(format!("{what}: {err}"));
                continue;
            }
        };
        problems.check(!refs.metrics.is_empty(), || {
            format!("{what}: no metric in `{expr}`")
        });
        let mut labels = BTreeSet::new();
        for metric in &refs.metrics {
            match samples.get(metric) {
                Some(names) => labels.extend(names.iter().cloned()),
                None => problems.0.push(format!(
                    "{what}: `{metric}` is not in sluice's /metrics output"
                )),
            }
        }
        for label in refs.grouping_labels.union(&refs.matcher_labels) {
            problems.check(labels.contains(label), || {
                format!("{what}: label `{label}` is on none of {:?}", refs.metrics)
            });
        }
    }
    problems.assert_none(&format!("{DASHBOARD_FILE} against sluice's metrics"));
}

#[test]
fn the_dashboard_shows_every_sluice_metric_family() {
    let text = sluice_metrics_text();
    let dashboard = load_dashboard();
    let exprs: Vec<String> = dashboard_queries(&dashboard)
        .into_iter()
        .map(|q| q.expr)
        .chain(
            dashboard["templating"]["list"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|v| variable_query(v).to_owned()),
        )
        .collect();
    let used: BTreeSet<String> = exprs
        .iter()
        .filter_map(|expr| promql_refs(expr.trim_start_matches("label_values")).ok())
        .flat_map(|refs| refs.metrics)
        .collect();
    let mut problems = Problems::default();
    let families = families(&text);
    for (family, kind) in &families {
        if !family.starts_with("sluice_") {
            continue;
        }
        let shown = if kind == "histogram" {
            used.contains(&format!("{family}_bucket"))
        } else {
            used.contains(family)
        };
        problems.check(shown, || format!("no panel shows `{family}` ({kind})"));
    }
    for process in [
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
        "process_open_fds",
    ] {
        problems.check(families.contains_key(process), || {
            format!("sluice no longer exports `{process}`")
        });
        problems.check(used.contains(process), || {
            format!("no panel shows `{process}`")
        });
    }
    for quantile in ["0.5", "0.9", "0.99"] {
        let wanted = format!("histogram_quantile({quantile},");
        problems.check(
            exprs.iter().any(|e| {
                e.starts_with(&wanted) && e.contains("sluice_end_to_end_latency_seconds_bucket")
            }),
            || format!("no end-to-end latency p{} panel query", &quantile[2..]),
        );
    }
    problems.assert_none(DASHBOARD_FILE);
}

/// Seconds of a Prometheus duration like `15s`, `1m` or `1h`.
fn duration_secs(text: &str) -> Option<u64> {
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().ok()?;
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        _ => return None,
    };
    Some(number * scale)
}

#[test]
fn the_prometheus_example_config_scrapes_sluice_on_its_default_listener() {
    let path = workspace_root().join("configs/prometheus.yml");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|err| panic!("read {}: {err}", path.display()));
    let config: Value = serde_yaml::from_str(&text)
        .unwrap_or_else(|err| panic!("{} is not YAML: {err}", path.display()));
    let jobs = config["scrape_configs"]
        .as_array()
        .unwrap_or_else(|| panic!("no scrape_configs list in {}", path.display()));
    let job = jobs
        .iter()
        .find(|job| job["job_name"] == "sluice")
        .unwrap_or_else(|| panic!("no job_name: sluice in {}", path.display()));
    let targets: Vec<&str> = job["static_configs"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|c| c["targets"].as_array().into_iter().flatten())
        .filter_map(Value::as_str)
        .collect();
    assert!(
        targets.contains(&"127.0.0.1:9464"),
        "the sluice job should scrape sluice's default listener 127.0.0.1:9464, not {targets:?}"
    );
    assert!(
        job.get("metrics_path").is_none_or(|p| p == "/metrics"),
        "metrics_path {}",
        job["metrics_path"]
    );
    let interval = job["scrape_interval"]
        .as_str()
        .or(config["global"]["scrape_interval"].as_str())
        .and_then(duration_secs)
        .expect("a scrape_interval like 5s");
    let timeout = job["scrape_timeout"]
        .as_str()
        .and_then(duration_secs)
        .unwrap_or(interval.min(10));
    assert!(
        (1..=60).contains(&interval) && timeout <= interval,
        "scrape_interval {interval}s, scrape_timeout {timeout}s"
    );

    // Prometheus's own check, where Debian's `prometheus` is installed.
    let Some(promtool) = promtool_bin() else {
        println!("promtool not installed: skipped `promtool check config`");
        return;
    };
    let output = Command::new(&promtool)
        .args(["check", "config"])
        .arg(&path)
        .output()
        .unwrap_or_else(|err| panic!("run {}: {err}", promtool.display()));
    assert!(
        output.status.success(),
        "promtool check config {} failed:\n{}{}",
        path.display(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
