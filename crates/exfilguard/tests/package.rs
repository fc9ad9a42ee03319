//! Packaging: the `.deb` that `cargo deb` builds from the release binary (cargo-deb; `.ci/run`
//! installs it) holds what an operator needs and its binary runs from the package; the container
//! definition refers to files that exist and to the version the manifests deploy.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

#[test]
fn deb_package_holds_the_agent_unit_and_config() {
    let have = Command::new("cargo")
        .args(["deb", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        have,
        "cargo-deb is not installed (cargo install cargo-deb --locked); .ci/run installs it"
    );
    // the binary this test run was built with is the one packaged (target/<profile>/exfilguard)
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_exfilguard"));
    let profile = bin
        .parent()
        .and_then(Path::file_name)
        .unwrap()
        .to_string_lossy()
        .to_string();
    let dir = tempfile::tempdir().unwrap();
    let deb = dir.path().join("exfilguard.deb");
    let mut build = Command::new("cargo");
    build
        .current_dir(root())
        .args([
            "deb",
            "-p",
            "exfilguard",
            "--no-build",
            "--no-strip",
            "--offline",
        ])
        .args(["--profile", &profile])
        .arg("-o")
        .arg(&deb);
    run(&mut build);

    let fields = run(Command::new("dpkg-deb").args(["-f"]).arg(&deb).args([
        "Package",
        "Version",
        "Architecture",
        "Depends",
    ]));
    eprintln!("{fields}");
    assert!(fields.contains("Package: exfilguard"), "{fields}");
    assert!(
        fields.contains("libelf1"),
        "Depends must name libelf1: {fields}"
    );
    let contents = run(Command::new("dpkg-deb").arg("-c").arg(&deb));
    for want in [
        "./usr/bin/exfilguard",
        "/systemd/system/exfilguard.service",
        "./etc/exfilguard/exfilguard.toml",
        "./usr/share/doc/exfilguard/configuration.md",
        "./usr/share/exfilguard/grafana/exfilguard-dashboard.json",
        "./usr/share/exfilguard/prometheus/exfilguard-alerts.yml",
    ] {
        assert!(contents.contains(want), "{want} missing:\n{contents}");
    }
    let ctl = dir.path().join("control");
    run(Command::new("dpkg-deb").arg("-e").arg(&deb).arg(&ctl));
    let conffiles = std::fs::read_to_string(ctl.join("conffiles")).unwrap_or_default();
    assert!(
        conffiles.contains("/etc/exfilguard/exfilguard.toml"),
        "the config must be a conffile (kept on upgrade): {conffiles:?}"
    );
    // installed, not started: the maintainer scripts must not start an enforcing agent
    let postinst = std::fs::read_to_string(ctl.join("postinst")).unwrap_or_default();
    assert!(
        !postinst.contains("deb-systemd-invoke start") && !postinst.contains("systemctl start"),
        "{postinst}"
    );

    // the packaged binary runs and accepts the packaged config
    let x = dir.path().join("root");
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&x));
    run(Command::new(x.join("usr/bin/exfilguard"))
        .args(["config", "--check"])
        .arg(x.join("etc/exfilguard/exfilguard.toml")));
    let unit = std::fs::read_to_string(root().join("deploy/systemd/exfilguard.service")).unwrap();
    assert!(
        unit.contains("ExecStart=/usr/bin/exfilguard run --config /etc/exfilguard/exfilguard.toml")
    );
}

#[test]
fn container_definition_matches_the_repository() {
    let docker = std::fs::read_to_string(root().join("deploy/container/Dockerfile")).unwrap();
    // every COPY from the build context names a file that exists
    for line in docker.lines().filter(|l| l.starts_with("COPY ")) {
        if line.contains("--from=") {
            continue;
        }
        let src = line.split_whitespace().nth(1).unwrap();
        assert!(
            root().join(src).exists(),
            "Dockerfile copies a missing {src}"
        );
    }
    assert!(docker.contains(r#"CMD ["run", "--config", "/etc/exfilguard/exfilguard.toml"]"#));
    // the manifests deploy this version's image
    let version = env!("CARGO_PKG_VERSION");
    for m in ["deploy/k8s/daemonset.yaml", "deploy/k8s/guard-sidecar.yaml"] {
        let text = std::fs::read_to_string(root().join(m)).unwrap();
        assert!(
            text.contains(&format!("exfilguard:{version}")),
            "{m} does not deploy exfilguard:{version}"
        );
    }
    let chart = std::fs::read_to_string(root().join("deploy/helm/exfilguard/Chart.yaml")).unwrap();
    assert!(
        chart.contains(&format!("appVersion: \"{version}\""))
            || chart.contains(&format!("appVersion: {version}")),
        "Chart.yaml appVersion is not {version}:\n{chart}"
    );
}
