//! `webshop bench` as a user runs it, in a tiny configuration: it starts
//! its own shop, runs every phase (bus-observed, polling and long-polling
//! clients and server carts among them), and writes the result files.

use std::process::Command;

#[test]
fn bench_runs_every_phase_and_writes_its_results() {
    let out = tempfile::tempdir().unwrap();
    let status = Command::new(env!("CARGO_BIN_EXE_webshop"))
        .args(["bench", "--duration-secs", "1", "--warmup-secs", "0.2", "--reference-secs", "0.2"])
        .args(["--concurrency", "4", "--catalog-concurrency", "4", "--rate", "20"])
        .arg("--out")
        .arg(out.path())
        .env("RUST_LOG", "error")
        .status()
        .expect("webshop bench starts");
    assert!(status.success(), "webshop bench exited with {status}");

    let result: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("result.json")).unwrap()).unwrap();
    for key in ["machine", "settings", "references", "phases", "ratios", "targets", "memory"] {
        assert!(result.get(key).is_some(), "result.json lacks `{key}`");
    }
    for reference in ["sqlite_single", "sqlite_batched", "broker", "baseline"] {
        assert!(result["references"][reference]["per_s"].as_f64().unwrap() > 0.0, "{reference} measured nothing");
    }
    let phases = result["phases"].as_array().unwrap();
    let names: Vec<&str> = phases.iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "catalog",
            "order-closed",
            "order-poll-20ms",
            "order-poll-5ms",
            "order-long-poll",
            "cancel",
            "cart-checkout",
            "order-open"
        ]
    );
    let targets = result["targets"].as_array().unwrap();
    for t in ["polling every 20 ms", "long polls"] {
        let target = targets.iter().find(|x| x["target"].as_str().unwrap().contains(t)).expect(t);
        assert!(!target["measured"].as_str().unwrap().contains("not run"), "{target}");
    }
    for p in phases {
        assert!(p["ok"].as_u64().unwrap() > 0, "phase {} completed nothing: {p}", p["name"]);
        for key in ["p50_ms", "p90_ms", "p99_ms", "max_ms"] {
            assert!(p["latency"][key].as_f64().is_some(), "phase {} lacks latency.{key}", p["name"]);
        }
    }
    let svg = std::fs::read_to_string(out.path().join("report.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("polyline"), "report.svg is not a chart");
}
