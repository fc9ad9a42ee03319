//! Accuracy regression guard: runs `exfilguard eval` with the embedded model on the held-out
//! slice (tools and DGA families the shipped model never trained on, benign names from split
//! groups it never saw) and fails if any figure drops below its floor.
//!
//! Floors are the targets where the model meets them, and otherwise the measured
//! figure of the shipped model less a small margin (see model/README.md for the gaps).

mod support;
use std::process::Command;
use support::data_dir;

fn exe() -> Command {
    Command::new(env!("CARGO_BIN_EXE_exfilguard"))
}

#[test]
fn held_out_metrics_stay_above_floors() {
    let tmp = std::env::temp_dir().join(format!("exfilguard-accuracy-{}", std::process::id()));
    let out = exe()
        .args(["dataset", "split", "--data"])
        .arg(data_dir())
        .arg("--out")
        .arg(&tmp)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = tmp.join("report.json");
    let mut cmd = exe();
    cmd.arg("eval");
    for b in ["alexa", "umbrella", "opendns-top10k", "opendns-random10k"] {
        cmd.arg("--benign")
            .arg(tmp.join(format!("test_benign_{b}.txt")));
    }
    let out = cmd
        .arg("--malicious")
        .arg(tmp.join("test_tunnel.tsv"))
        .arg("--malicious")
        .arg(tmp.join("test_dga.tsv"))
        .args(["--label-column", "2", "--json"])
        .arg(&report)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{}", String::from_utf8_lossy(&out.stdout));
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    std::fs::remove_dir_all(&tmp).ok();
    let rate = |label: &str| -> f64 {
        r["labels"][label]["rate"]
            .as_f64()
            .unwrap_or_else(|| panic!("no label {label} in report"))
    };
    let rows = |label: &str| r["labels"][label]["rows"].as_u64().unwrap();

    // Benign: the targets.
    let mut failures = Vec::new();
    let mut max_fpr = |label: &str, target: f64| {
        if rate(label) > target {
            failures.push(format!("{label}: FPR {:.6} > {target}", rate(label)));
        }
    };
    max_fpr("test_benign_alexa", 0.0001);
    max_fpr("test_benign_umbrella", 0.001);
    max_fpr("test_benign_opendns-top10k", 0.001);
    max_fpr("test_benign_opendns-random10k", 0.002);
    assert!(rows("test_benign_alexa") > 25_000 && rows("test_benign_umbrella") > 10_000);

    let mut min_tpr = |label: &str, floor: f64| {
        if rate(label) < floor {
            failures.push(format!("{label}: TPR {:.4} < {floor}", rate(label)));
        }
    };
    // Held-out tunnel tools. dnsexfiltrator meets the 99 % target. tuns cannot per name: 60 % of
    // its queries are payload-free polls (`r12345`); its 4,477 payload queries are all caught.
    min_tpr("dnsexfiltrator", 0.99);
    min_tpr("tuns", 0.39);
    // Held-out DGA families: far below the 90 % target at this FPR (model/README.md says why);
    // floors guard against regression.
    min_tpr("ramdo", 0.33);
    min_tpr("newgoz", 0.05);
    // DGA families the model trained on (their test rows are unseen, their family is not).
    min_tpr("cryptolocker", 0.55);
    min_tpr("tinba", 0.38);
    min_tpr("gameover-zeus", 0.45);
    assert!(
        failures.is_empty(),
        "accuracy regressions:\n{}",
        failures.join("\n")
    );
}
