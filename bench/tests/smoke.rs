//! The benchmark itself keeps working: `sluice-bench run` with every case,
//! a few thousand messages each, against the mosquitto and tansu it starts
//! (and stops) itself, with the debug `sluice` built beside it. It checks
//! behaviour only (every case ran, nothing missing or duplicated, the three
//! reports written), never speed.

use std::process::Command;

const MESSAGES: usize = 3000;

/// What one `sluice-bench run` left: its folder, results.json as text and
/// as a value, and what it printed to stderr.
struct Bench {
    out: tempfile::TempDir,
    json: String,
    results: serde_json::Value,
    stderr: String,
}

/// Runs `sluice-bench run` with `args`, short timeouts and a fresh output
/// folder; fails the test if the run fails.
fn bench(args: &[&str]) -> Bench {
    let out = tempfile::tempdir().expect("temp dir");
    let run = Command::new(env!("CARGO_BIN_EXE_sluice-bench"))
        .arg("run")
        .args(args)
        .args(["--case-timeout", "120", "--idle-timeout", "10", "--out"])
        .arg(out.path())
        .output()
        .expect("sluice-bench runs");
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr).into_owned();
    assert!(
        run.status.success(),
        "sluice-bench failed ({}):\n{stdout}\n{stderr}",
        run.status
    );
    let json = std::fs::read_to_string(out.path().join("results.json")).expect("results.json");
    let results = serde_json::from_str(&json).expect("results.json is JSON");
    Bench {
        out,
        json,
        results,
        stderr,
    }
}

#[test]
fn every_case_runs_loses_nothing_and_writes_the_three_reports() {
    let Bench {
        out,
        json,
        results,
        stderr,
    } = bench(&["--messages", &MESSAGES.to_string(), "--warmup", "200"]);
    let cases = results["cases"].as_array().expect("cases");
    let letters: Vec<&str> = cases.iter().filter_map(|c| c["letter"].as_str()).collect();
    assert_eq!(letters, ["a", "b1", "b2", "c", "d", "e", "f"], "{json}");
    for case in cases {
        let id = &case["id"];
        assert_eq!(case["status"], "ok", "case {id}: {case}\n{stderr}");
        assert_eq!(case["sent"], MESSAGES, "case {id}");
        assert_eq!(case["missing"], 0, "case {id}: {case}");
        assert!(
            case["msgs_per_s"].as_f64().is_some_and(|r| r > 0.0),
            "case {id}"
        );
        if case["letter"] != "a" {
            // (a) only counts at mosquitto_sub; every other case is read
            // back from Kafka and checked number by number.
            assert_eq!(case["delivered"], MESSAGES, "case {id}: {case}");
            assert_eq!(case["duplicates"], 0, "case {id}: {case}");
            let total_max = case["latency_ms"]["max"].as_f64();
            assert!(
                case["latency_ms"]["p99"].as_f64().is_some() && total_max.is_some(),
                "case {id}: {case}"
            );
            // Each leg of the split is part of the whole latency; the
            // record's time stamp has millisecond resolution.
            for leg in ["to_record", "from_record"] {
                let max = case["latency_split_ms"][leg]["max"].as_f64();
                assert!(
                    max.zip(total_max).is_some_and(|(m, t)| m <= t + 1.0),
                    "case {id}, {leg}: {case}"
                );
            }
        }
    }

    let table = std::fs::read_to_string(out.path().join("results.md")).expect("results.md");
    for letter in letters {
        assert!(
            table.contains(&format!("| ({letter}) ")),
            "{letter} in\n{table}"
        );
    }
    let plot = std::fs::read_to_string(out.path().join("results.svg")).expect("results.svg");
    assert!(
        plot.starts_with("<svg") || plot.contains("<svg "),
        "an SVG plot"
    );
}

#[test]
fn several_rounds_report_every_round_and_the_median_rows() {
    let Bench {
        out,
        json,
        results,
        stderr,
    } = bench(&[
        "--messages",
        "1000",
        "--warmup",
        "100",
        "--rounds",
        "2",
        "--cases",
        "a,d",
    ]);
    assert!(stderr.contains("==== round 2 of 2"), "{stderr}");

    let rounds = results["rounds"].as_array().expect("rounds");
    assert_eq!(rounds.len(), 2, "{json}");
    for round in rounds {
        let letters: Vec<&str> = round
            .as_array()
            .expect("a round")
            .iter()
            .filter_map(|c| c["letter"].as_str())
            .collect();
        assert_eq!(letters, ["a", "d"], "{json}");
    }
    // Every round stands alone: a round that read an earlier round's
    // records or took its subscription would show duplicates, missing
    // messages or a note.
    for (n, round) in rounds.iter().enumerate() {
        for case in round.as_array().expect("a round") {
            assert_eq!(case["status"], "ok", "round {}: {case}", n + 1);
            assert_eq!(case["missing"], 0, "round {}: {case}", n + 1);
            assert!(case["note"].is_null(), "round {}: {case}", n + 1);
        }
        assert_eq!(round[1]["duplicates"], 0, "round {}: {}", n + 1, round[1]);
    }
    let cases = results["cases"].as_array().expect("cases");
    assert_eq!(cases.len(), 2, "{json}");
    let d = &cases[1];
    assert_eq!(
        (&d["status"], &d["missing"]),
        (&"ok".into(), &0.into()),
        "{d}"
    );
    // d's row is its lower round of two, and its ratio the lower of the
    // rounds' own ratios.
    let rate = d["msgs_per_s"].as_f64().expect("msg/s");
    let rates: Vec<f64> = rounds
        .iter()
        .filter_map(|r| r[1]["msgs_per_s"].as_f64())
        .collect();
    assert_eq!(rate, rates[0].min(rates[1]), "{json}");
    let ratios: Vec<f64> = rounds
        .iter()
        .filter_map(|r| r[1]["vs_a"].as_f64())
        .collect();
    assert_eq!(ratios.len(), 2, "{json}");
    assert_eq!(d["vs_a"].as_f64(), Some(ratios[0].min(ratios[1])), "{json}");

    let table = std::fs::read_to_string(out.path().join("results.md")).expect("results.md");
    assert!(
        table.contains("2 rounds of all the cases") && table.contains("Every round:"),
        "{table}"
    );
    assert_eq!(
        table.matches("| (d) |").count(),
        2,
        "one row per round:\n{table}"
    );
}
