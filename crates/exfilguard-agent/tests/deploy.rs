//! The shipped operations artefacts: the Grafana dashboard validates against its schema, the
//! alert rules pass `promtool check rules`, and every metric either names is one the agent
//! really exports.

use exfilguard_agent::metrics::{Metrics, LIVE_METRICS};
use std::collections::BTreeSet;
use std::path::Path;

fn deploy(p: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../deploy")
        .join(p);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Base names the agent exposes (counter `_total`, histogram `_bucket/_sum/_count`, info
/// `_info` suffixes are accepted on top).
fn exported() -> BTreeSet<String> {
    let mut reg = prometheus_client::registry::Registry::default();
    let m = Metrics::new(&mut reg, "v", "sha");
    // label families are only exposed once they have a child
    let l = |k: &'static str| vec![(k, "x".to_string())];
    m.decisions.get_or_create(&l("decision")).inc();
    m.verdicts.get_or_create(&l("class")).inc();
    m.events_written.get_or_create(&l("sink")).inc();
    m.fleet_updates.get_or_create(&l("op")).inc();
    m.error("x");
    m.behaviour_alarm("x");
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &reg).unwrap();
    let mut names: BTreeSet<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| l.split_whitespace().next().unwrap().to_string())
        .collect();
    names.extend(LIVE_METRICS.iter().map(|s| s.to_string()));
    names
}

fn referenced(text: &str) -> BTreeSet<String> {
    let re = regex::Regex::new(r"exfilguard_[a-z0-9_]+").unwrap();
    re.find_iter(text).map(|m| m.as_str().to_string()).collect()
}

fn known(name: &str, exported: &BTreeSet<String>) -> bool {
    let base = ["_total", "_bucket", "_sum", "_count", "_info"]
        .iter()
        .find_map(|s| name.strip_suffix(s))
        .unwrap_or(name);
    exported.contains(base) || exported.contains(name)
}

#[test]
fn grafana_dashboard_matches_schema_and_metrics() {
    let schema: serde_json::Value =
        serde_json::from_str(&deploy("grafana/dashboard.schema.json")).unwrap();
    let dash: serde_json::Value =
        serde_json::from_str(&deploy("grafana/exfilguard-dashboard.json")).unwrap();
    let v = jsonschema::validator_for(&schema).unwrap();
    let errs: Vec<String> = v
        .iter_errors(&dash)
        .map(|e| format!("{} at {}", e, e.instance_path))
        .collect();
    assert!(
        errs.is_empty(),
        "dashboard does not match the schema: {errs:#?}"
    );
    // the schema is not vacuous: a broken dashboard fails it
    let mut broken = dash.clone();
    broken["panels"][0]["gridPos"]["w"] = 30.into();
    assert!(!v.is_valid(&broken));
    // panels do not overlap and every id is unique
    let panels = dash["panels"].as_array().unwrap();
    let ids: BTreeSet<u64> = panels.iter().map(|p| p["id"].as_u64().unwrap()).collect();
    assert_eq!(ids.len(), panels.len());
    let exported = exported();
    let names = referenced(&dash.to_string());
    assert!(!names.is_empty());
    for n in &names {
        assert!(
            known(n, &exported),
            "dashboard uses {n}, which the agent does not export ({exported:?})"
        );
    }
}

#[test]
fn alert_rules_pass_promtool_and_use_real_metrics() {
    let rules = deploy("prometheus/exfilguard-alerts.yml");
    let exported = exported();
    for n in referenced(&rules) {
        // alert names (ExfilguardX) are not metrics; metric names are lower case
        assert!(
            known(&n, &exported),
            "alert rules use {n}, which the agent does not export"
        );
    }
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/prometheus/exfilguard-alerts.yml");
    match std::process::Command::new("promtool").arg("check").arg("rules").arg(&path).output() {
        Ok(out) => assert!(
            out.status.success(),
            "promtool check rules failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) if std::env::var("EXFILGUARD_SKIP_PROMTOOL").as_deref() == Ok("1") => {
            eprintln!("!!! SKIPPED promtool check: {e} (EXFILGUARD_SKIP_PROMTOOL=1) !!!")
        }
        Err(e) => panic!("promtool (Debian package prometheus) is needed: {e}; EXFILGUARD_SKIP_PROMTOOL=1 skips explicitly"),
    }
}

#[test]
fn powerdns_topology_config_is_valid() {
    let cfg = exfilguard_agent::config::Config::from_toml(&deploy("powerdns/exfilguard.toml"))
        .expect("deploy/powerdns/exfilguard.toml");
    assert!(cfg.rpz.enabled(), "the topology serves the RPZ");
    assert_eq!(cfg.resolve.upstreams, vec!["127.0.0.1:5301"]);
    // the recursor pulls the zone from where the front serves it
    let lua = deploy("powerdns/recursor.lua");
    assert!(lua.contains(&format!(
        "rpzPrimary(\"{}\", \"{}\"",
        cfg.rpz.listen, cfg.rpz.zone
    )));
    let rec = deploy("powerdns/recursor.conf");
    assert!(rec.contains("local-port=5301") && rec.contains("security-poll-suffix=\n"));
}

/// The Kubernetes manifests against the Kubernetes API schemas (`kubernetes-validate --strict`,
/// PyPI; `.ci/run` installs it): unknown fields and wrong types fail.
#[test]
fn kubernetes_manifests_validate_strictly() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/k8s");
    let have = std::process::Command::new("kubernetes-validate")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        have,
        "kubernetes-validate not found: python3 -m pip install kubernetes-validate"
    );
    let mut checked = 0;
    for e in std::fs::read_dir(&dir).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        // kustomization.yaml is not an API object; the ServiceMonitor is a CRD (checked below)
        if !name.ends_with(".yaml") || name == "kustomization.yaml" || name == "servicemonitor.yaml"
        {
            continue;
        }
        let out = std::process::Command::new("kubernetes-validate")
            .args(["--strict", "--kubernetes-version", "1.30"])
            .arg(e.path())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && !text.contains("ERROR"),
            "{name}:\n{text}"
        );
        checked += 1;
    }
    assert!(checked >= 5, "only {checked} manifests checked");
    // every file the kustomization names exists
    let kust = std::fs::read_to_string(dir.join("kustomization.yaml")).unwrap();
    for line in kust.lines().filter_map(|l| l.trim().strip_prefix("- ")) {
        assert!(
            dir.join(line).exists(),
            "kustomization names a missing {line}"
        );
    }
    let sm = std::fs::read_to_string(dir.join("servicemonitor.yaml")).unwrap();
    assert!(sm.contains("kind: ServiceMonitor") && sm.contains("port: metrics"));
}

/// The configuration the ConfigMaps carry is a valid exfilguard config (the agent would refuse
/// to start otherwise), read with PyYAML (a dependency of kubernetes-validate).
#[test]
fn kubernetes_configmaps_hold_valid_configs() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/k8s");
    let script = "import json,sys,yaml\n\
        out=[]\n\
        for p in sys.argv[1:]:\n\
        \x20 for d in yaml.safe_load_all(open(p)):\n\
        \x20   if d and d.get('kind')=='ConfigMap':\n\
        \x20     out.append([p, d['data']['exfilguard.toml']])\n\
        print(json.dumps(out))";
    let out = std::process::Command::new("python3")
        .args(["-c", script])
        .arg(dir.join("configmap.yaml"))
        .arg(dir.join("guard-sidecar.yaml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let maps: Vec<(String, String)> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(maps.len(), 2);
    for (file, toml) in maps {
        let cfg = exfilguard_agent::config::Config::from_toml(&toml)
            .unwrap_or_else(|e| panic!("{file}: {e:#}"));
        assert!(
            cfg.metrics.listen.starts_with("0.0.0.0:"),
            "{file}: metrics must be reachable from the scraper"
        );
    }
}
