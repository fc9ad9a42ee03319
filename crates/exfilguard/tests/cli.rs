//! The CLI end to end, with the real embedded model.

use std::io::Write;
use std::process::{Command, Stdio};

fn exe() -> Command {
    Command::new(env!("CARGO_BIN_EXE_exfilguard"))
}

fn json_lines(out: &[u8]) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect()
}

const TUNNEL: &str = "q+aDvIPUCGcDHHAbNdlJFXaCj+nHxXN8w/lOW7b5iVSg+taEkbH8ssUnxRrPgND.5VGfRergsUjUbvbSOamAJcm21gqS00H9ji8yCNBw4lbTcfUKmfpKf3QnZEz8DUl.t.example.org";

#[test]
fn classify_args_json() {
    let out = exe()
        .args(["classify", "-o", "json", "www.Google.com.", TUNNEL, "a..b"])
        .output()
        .unwrap();
    // exit status 1: something malicious was found
    assert_eq!(out.status.code(), Some(1));
    let v = json_lines(&out.stdout);
    assert_eq!(v.len(), 3);
    assert_eq!(v[0]["class"], "benign");
    assert_eq!(v[0]["registered_domain"], "google.com");
    assert_eq!(v[1]["class"], "tunnel");
    assert_eq!(v[1]["registered_domain"], "example.org");
    let reasons: Vec<String> = v[1]["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_owned())
        .collect();
    assert!(
        reasons.iter().any(|r| r.contains("label of 63 base64")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.starts_with("model: P(tunnel)")),
        "{reasons:?}"
    );
    assert!(v[2]["error"].as_str().unwrap().contains("empty label"));
}

/// Issue 25: what is plainly not a query name gets an error saying what it is, never a
/// verdict (a URL once had the registered domain `google.com/path`, an address `1.1`, a sentence
/// was "benign"); real tunnel names with `+` and `/` in their labels are still judged.
#[test]
fn classify_refuses_what_is_not_a_name_with_a_clear_error() {
    let long = format!("{}.example.com", "a".repeat(70));
    let out = exe()
        .args([
            "classify",
            "--format",
            "json",
            "not a name!!",
            "https://google.com/path?q=1",
            "google.com/path",
            "192.168.1.1",
            "2001:db8::1",
            &long,
            TUNNEL,
            "www.example.com",
        ])
        .output()
        .unwrap();
    let v = json_lines(&out.stdout);
    assert_eq!(v.len(), 8, "{v:?}");
    let err = |i: usize| v[i]["error"].as_str().unwrap_or("").to_owned();
    assert!(err(0).contains("whitespace"), "{}", err(0));
    assert!(
        err(1).contains("URL") && err(1).contains("\"google.com\""),
        "{}",
        err(1)
    );
    assert!(
        err(2).contains("path") && err(2).contains("\"google.com\""),
        "{}",
        err(2)
    );
    assert!(
        err(3).contains("IP address") && err(3).contains("1.1.168.192.in-addr.arpa"),
        "{}",
        err(3)
    );
    assert!(
        err(4).contains("IP address") && err(4).ends_with(".8.b.d.0.1.0.0.2.ip6.arpa)"),
        "{}",
        err(4)
    );
    assert!(err(5).contains("70 bytes"), "{}", err(5));
    for bad in &v[..6] {
        assert!(bad.get("class").is_none(), "a verdict for bad input: {bad}");
        assert!(bad["registered_domain"].is_null(), "{bad}");
    }
    // controls: a base64 tunnel name (with `+` and `/`) and a plain name are judged
    assert_eq!(v[6]["class"], "tunnel", "{}", v[6]);
    assert_eq!(v[7]["class"], "benign", "{}", v[7]);
    assert_eq!(v[7]["registered_domain"], "example.com");
}

#[test]
fn classify_stdin_streams_line_by_line() {
    let mut child = exe()
        .args(["classify", "--format", "json", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    // One name in, one verdict out, before stdin closes: streamed, not buffered to EOF.
    writeln!(stdin, "mail.example.com").unwrap();
    stdin.flush().unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["name"], "mail.example.com");
    assert_eq!(v["class"], "benign");
    for i in 0..2000 {
        writeln!(stdin, "host{i}.example.net").unwrap();
    }
    drop(stdin);
    let rest: Vec<String> = std::io::BufRead::lines(stdout)
        .map(Result::unwrap)
        .collect();
    assert_eq!(rest.len(), 2000);
    assert!(child.wait().unwrap().success());
}

#[test]
fn table_format_and_lists() {
    let dir = std::env::temp_dir().join(format!("exfilguard-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("allow"), "example.org\n").unwrap();
    std::fs::write(dir.join("block"), "=www.google.com\n").unwrap();
    let out = exe()
        .arg("--allowlist")
        .arg(dir.join("allow"))
        .arg("--blocklist")
        .arg(dir.join("block"))
        .args(["classify", "--format", "table", "www.google.com", TUNNEL])
        .output()
        .unwrap();
    std::fs::remove_dir_all(&dir).ok();
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("name"), "{text}");
    assert!(
        lines[1].contains("blocked") && lines[1].contains("blocklisted name www.google.com"),
        "{text}"
    );
    assert!(
        lines[2].contains("benign") && lines[2].contains("allowlisted domain example.org"),
        "{text}"
    );
}

/// Issue 25: the table shows the detector's risk and level and the threshold in use, so a
/// high score under a higher threshold reads as what it is; long names are cut on the left so
/// the registered domain stays visible.
#[test]
fn classify_table_shows_risk_and_threshold_and_keeps_the_domain() {
    let out = exe()
        .args([
            "classify",
            "--format",
            "table",
            "qwzxkjhfgtrp.com",
            TUNNEL,
            "www.example.com",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{text}");
    assert!(
        lines[0].contains("risk") && lines[0].contains("p / threshold"),
        "{text}"
    );
    // every model row names a detector, its 0-100 risk, its level, and p against the threshold
    for row in &lines[1..] {
        assert!(
            ["NONE", "LOW", "MEDIUM", "HIGH"]
                .iter()
                .any(|l| row.contains(l)),
            "{row}"
        );
        assert!(row.contains(" < ") || row.contains(" >= "), "{row}");
    }
    assert!(
        lines[2].contains("tunnel") && lines[2].contains(">="),
        "{}",
        lines[2]
    );
    assert!(
        lines[3].contains("benign") && lines[3].contains(" < "),
        "{}",
        lines[3]
    );
    // the tunnel name (164 characters) is cut on the left: its zone is still there
    assert!(
        lines[2].starts_with("...") && lines[2].contains(".t.example.org"),
        "{}",
        lines[2]
    );
}

#[test]
fn broken_inputs_give_clear_errors() {
    let dir = std::env::temp_dir().join(format!("exfilguard-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("model.onnx"), b"not a model").unwrap();
    std::fs::write(dir.join("list"), "ok.com\nbad..entry\n").unwrap();
    let out = exe()
        .arg("--model")
        .arg(dir.join("model.onnx"))
        .args(["classify", "a.com"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("loading model") && err.contains("model.onnx"),
        "{err}"
    );
    let out = exe()
        .arg("--blocklist")
        .arg(dir.join("list"))
        .args(["classify", "a.com"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("line 2") && err.contains("bad..entry"),
        "{err}"
    );
    let out = exe()
        .args(["--threshold", "1.5", "classify", "a.com"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn config_check_reports_every_mistake_with_its_line() {
    let dir = std::env::temp_dir().join(format!("exfilguard-conf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.toml");
    std::fs::write(
        &bad,
        "[kernal]\nmode = \"enforce\"\n\n[kernel]\nmode = \"enforcee\"\nhold_name_len = 300\n\n\
         [resolve]\ntimeout_ms = \"fast\"\nupstrems = [\"9.9.9.9\"]\nlisten = [\"127.0.0.1\"]\n",
    )
    .unwrap();
    let out = exe()
        .args(["config", "--check"])
        .arg(&bad)
        .env("EXFILGUARD__PIPELINE__BATCH_MAX", "lots")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    for want in [
        "7 problems",
        "line 1, column 2: kernal: unknown key (did you mean `kernel`?)",
        "line 5, column 8: kernel.mode = \"enforcee\"",
        "line 6, column 1: kernel.hold_name_len = 300: must be in 1..=255",
        "line 9, column 14: resolve.timeout_ms = \"fast\"",
        "line 10, column 1: resolve.upstrems: unknown key (did you mean `upstreams`?)",
        "line 11, column 1: resolve.listen",
        "pipeline.batch_max: invalid type",
        "(from EXFILGUARD__PIPELINE__BATCH_MAX)",
    ] {
        assert!(err.contains(want), "missing {want:?} in\n{err}");
    }
    assert!(!err.contains("default."), "{err}");
    // the control: the same file mended is valid, and a bare upstream address is port 53
    std::fs::write(
        &bad,
        "[kernel]\nmode = \"enforce\"\n[resolve]\nupstreams = [\"9.9.9.9\"]\n",
    )
    .unwrap();
    let out = exe()
        .args(["config", "--check"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn model_override_and_threshold() {
    let model = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../exfilguard-detect/assets/exfilguard.onnx"
    );
    let out = exe()
        .args([
            "--model",
            model,
            "--threshold",
            "0.0",
            "classify",
            "--format",
            "json",
            "www.google.com",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.code() == Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // At threshold 0 every name is flagged: proves the override reaches the decision.
    assert_ne!(json_lines(&out.stdout)[0]["class"], "benign");
    let info = exe().args(["model-info", "-o", "json"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(
        v["features"].as_array().unwrap().len(),
        exfilguard_detect::N_FEATURES
    );
    // issue 25: every class says what its threshold means; benign's 1.0 is explained, and the
    // thresholds in use follow --threshold
    let d = v["decision"].as_array().unwrap();
    let benign = d.iter().find(|c| c["class"] == "benign").unwrap();
    assert!(benign["threshold_in_use"].is_null(), "{benign}");
    assert!(benign["rule"].as_str().unwrap().contains("unused"));
    let tunnel = d.iter().find(|c| c["class"] == "tunnel").unwrap();
    assert!(tunnel["threshold_in_use"].as_f64().unwrap() > 0.999);
    let table = exe()
        .args(["--threshold", "0.5", "model-info"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&table.stdout);
    let row = text
        .lines()
        .find(|l| l.starts_with("tunnel"))
        .unwrap_or_default();
    assert!(row.contains("0.5000") && !row.contains("0.99999"), "{text}");
    let table = exe().args(["model-info"]).output().unwrap();
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        text.lines()
            .any(|l| l.starts_with("tunnel") && l.contains("0.99999")),
        "{text}"
    );
}

/// Issue 25: `replay` of one real tunnel log gives the same report every time (its hashing has
/// a fixed key; with the per-process random key, runs differed in alarm count and times).
#[test]
fn replay_is_repeatable() {
    let log = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tools/live-capture/captures/dns2tcp-10Bps.log.gz"
    );
    let run = || {
        let out = exe().args(["replay", log]).output().unwrap();
        assert!(
            out.status.code() == Some(1), // alarms raised
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let first = run();
    assert!(first.contains("information rate"), "{first}");
    for _ in 0..3 {
        assert_eq!(
            run(),
            first,
            "replay gave another report for the same input"
        );
    }
    // the same log on stdin (`-`)
    let out = exe()
        .args(["replay", "-"])
        .stdin(std::fs::File::open(log).unwrap())
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        first,
        "replay of stdin"
    );
}
