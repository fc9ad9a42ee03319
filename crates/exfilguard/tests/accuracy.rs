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

/// The held-out test slices, written by `dataset split` into a fresh directory.
fn split(tag: &str) -> std::path::PathBuf {
    let tmp = std::env::temp_dir().join(format!("exfilguard-{tag}-{}", std::process::id()));
    let mut cmd = exe();
    cmd.args(["dataset", "split", "--data"])
        .arg(data_dir())
        .arg("--out")
        .arg(&tmp);
    run_ok(&mut cmd);
    tmp
}

fn run_ok(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{}", String::from_utf8_lossy(&out.stdout));
}

/// Runs an `eval` command and reads the JSON report it wrote.
fn report_of(cmd: &mut Command, report: &std::path::Path) -> serde_json::Value {
    run_ok(cmd);
    serde_json::from_slice(&std::fs::read(report).unwrap()).unwrap()
}

#[test]
fn held_out_metrics_stay_above_floors() {
    let tmp = split("accuracy");
    let report = tmp.join("report.json");
    let mut cmd = exe();
    cmd.arg("eval");
    for b in ["alexa", "umbrella", "opendns-top10k", "opendns-random10k"] {
        cmd.arg("--benign")
            .arg(tmp.join(format!("test_benign_{b}.txt")));
    }
    cmd.arg("--malicious")
        .arg(tmp.join("test_tunnel.tsv"))
        .arg("--malicious")
        .arg(tmp.join("test_dga.tsv"))
        .args(["--label-column", "2", "--json"])
        .arg(&report);
    let r = report_of(&mut cmd, &report);
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

/// The deployed decision (`eval --stream`) on tools and DGA families nobody trained on
/// (`model/eval`, from `model/unseen.py`), the held-out slice and the benign lookup names.
#[test]
fn deployed_decision_holds_on_unseen_tools_and_families() {
    let tmp = split("stream");
    let eval = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../model/eval");
    let report = tmp.join("stream.json");
    let mut cmd = exe();
    cmd.args(["eval", "--stream"]);
    for b in ["alexa", "umbrella"] {
        cmd.arg("--benign")
            .arg(tmp.join(format!("test_benign_{b}.txt")));
    }
    cmd.arg("--benign").arg(eval.join("benign_lookup.tsv"));
    for m in ["unseen_tunnels.tsv", "unseen_dga.tsv"] {
        cmd.arg("--malicious").arg(eval.join(m));
    }
    cmd.arg("--malicious")
        .arg(tmp.join("test_tunnel.tsv"))
        .arg("--malicious")
        .arg(tmp.join("test_dga.tsv"))
        .arg("--json")
        .arg(&report);
    let r = report_of(&mut cmd, &report);
    std::fs::remove_dir_all(&tmp).ok();
    let labels = r["labels"].as_object().unwrap();
    let get = |l: &str, k: &str| labels[l][k].as_f64().unwrap();
    assert_eq!(
        get("benign_lookup", "refused"),
        0.0,
        "a lookup name refused"
    );
    assert!(get("test_benign_alexa", "rate") <= 0.0001);
    assert!(get("test_benign_umbrella", "rate") <= 0.001);
    let tunnels = [
        "dnscat2",
        "dnstt",
        "cobaltstrike_dns",
        "sliver_dns",
        "godoh",
        "hex_c2",
        "powershell_dnsmessenger",
        "dotnet_implant",
        "apt_lowvolume",
        "dnsexfil_words",
        "tuns",
        "dnsexfiltrator",
    ];
    for t in tunnels {
        assert!(get(t, "rate_after_free") >= 0.995, "{t}: {}", labels[t]);
    }
    let words = ["suppobox", "gozi", "nymaim2", "pizd", "matsnu"];
    for (l, s) in labels {
        if s["truth"] == "malicious" && !tunnels.contains(&l.as_str()) {
            let floor = if words.contains(&l.as_str()) {
                0.8
            } else {
                0.9
            };
            assert!(s["rate"].as_f64().unwrap() >= floor, "{l}: {s}");
        }
    }
}

/// A slow DGA bot (one query a minute, one client): the DGA-bot mark's slow rule still refuses
/// ≥ 90 % of every unseen family (≥ 80 % for word lists); before the sliding window it refused
/// 0 % of most. Benign lookup names replayed the same way are never refused.
#[test]
fn slow_dga_bots_are_marked() {
    let eval = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../model/eval");
    let tmp = tempfile::tempdir().unwrap();
    let report = tmp.path().join("slow.json");
    let mut cmd = exe();
    cmd.args([
        "eval",
        "--stream",
        "--interval-ms",
        "60000",
        "--clients",
        "1",
    ])
    .arg("--benign")
    .arg(eval.join("benign_lookup.tsv"))
    .arg("--malicious")
    .arg(eval.join("unseen_dga.tsv"))
    .arg("--json")
    .arg(&report);
    let r = report_of(&mut cmd, &report);
    let labels = r["labels"].as_object().unwrap();
    assert_eq!(labels["benign_lookup"]["refused"].as_f64(), Some(0.0));
    let words = ["suppobox", "gozi", "nymaim2", "pizd"];
    let mut n = 0;
    for (l, s) in labels {
        if s["truth"] == "malicious" {
            n += 1;
            let floor = if words.contains(&l.as_str()) {
                0.8
            } else {
                0.9
            };
            assert!(s["rate"].as_f64().unwrap() >= floor, "{l}: {s}");
        }
    }
    assert!(n >= 18, "only {n} DGA families in the report");
}
