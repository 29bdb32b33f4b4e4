//! The deployment templates (deploy/): the Kubernetes manifests pass a
//! strict JSON-schema check and the cross-checks of
//! tests/clients/check_deploy.py, which catch a misspelt field; the YAML
//! is lint-clean; the configs they ship pass `empath check-config`; the
//! Dockerfile builds in one stage and runs unprivileged in another; the
//! compose file's Prometheus config passes `promtool check config`.
//!
//! Build the binaries first: `cargo build --workspace --bins`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use empath_tests::{binary, run_bounded, test_dir};

const TIMEOUT: Duration = Duration::from_secs(120);

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .expect("the workspace")
}

fn check_deploy(root: &Path) -> empath_tests::RunOutput {
    run_bounded(
        Command::new("python3")
            .arg(workspace().join("tests/clients/check_deploy.py"))
            .arg(root),
        TIMEOUT,
    )
}

#[test]
fn the_kubernetes_manifests_pass_the_schema_and_cross_checks() {
    let output = check_deploy(&workspace());
    assert!(output.status.success(), "{}", output.combined());
    assert!(
        output.stdout.contains(" passed, 0 failed"),
        "{}",
        output.stdout
    );

    // The checks can fail: a misspelt field and a wrong probe path in a copy.
    let copy = test_dir();
    for dir in [
        "deploy/k8s",
        "deploy/docker/grafana/provisioning/datasources",
        "deploy/docker/grafana/provisioning/dashboards",
        "tests/fixtures/k8s-schemas",
    ] {
        std::fs::create_dir_all(copy.path().join(dir)).expect("mkdir");
    }
    for dir in ["deploy/k8s", "tests/fixtures/k8s-schemas"] {
        for entry in std::fs::read_dir(workspace().join(dir)).expect("read") {
            let path = entry.expect("entry").path();
            let name = path.file_name().expect("name").to_owned();
            std::fs::copy(&path, copy.path().join(dir).join(name)).expect("copy");
        }
    }
    for file in ["deploy/docker/compose.yml", "deploy/docker/prometheus.yml"] {
        std::fs::copy(workspace().join(file), copy.path().join(file)).expect("copy");
    }
    let statefulset = copy.path().join("deploy/k8s/statefulset.yaml");
    let text = std::fs::read_to_string(&statefulset).expect("read");
    let broken = text
        .replace("readinessProbe:", "readinesProbe:")
        .replace("path: /health/live", "path: /healthz");
    std::fs::write(&statefulset, broken).expect("write");
    let output = check_deploy(copy.path());
    assert!(!output.status.success(), "{}", output.stdout);
    assert!(output.stdout.contains("readinesProbe"), "{}", output.stdout);
    assert!(
        output
            .stdout
            .contains("FAILED: livenessProbe asks /health/live"),
        "{}",
        output.stdout
    );
}

#[test]
fn the_yaml_is_lint_clean() {
    let output = run_bounded(
        Command::new("yamllint")
            .arg("--strict")
            .args(["-c"])
            .arg(workspace().join("deploy/yamllint.yml"))
            .arg(workspace().join("deploy"))
            .arg(workspace().join("etc/prometheus-alerts.yml"))
            .arg(workspace().join("etc/prometheus-alerts.test.yml")),
        TIMEOUT,
    );
    assert!(output.status.success(), "{}", output.combined());
}

/// The config the container image ships, and the one in the ConfigMap,
/// are valid for this Empath.
#[test]
fn the_shipped_container_configs_pass_check_config() {
    let docker = workspace().join("deploy/docker/empath.config.ron");
    let configmap = std::fs::read_to_string(workspace().join("deploy/k8s/configmap.yaml"))
        .expect("configmap.yaml");
    let embedded: String = configmap
        .split("empath.config.ron: |\n")
        .nth(1)
        .expect("the embedded config")
        .lines()
        .map(|line| line.strip_prefix("    ").unwrap_or(line))
        .collect::<Vec<_>>()
        .join("\n");
    let dir = test_dir();
    let from_configmap = dir.path().join("configmap.ron");
    std::fs::write(&from_configmap, &embedded).expect("write");
    assert_eq!(
        embedded.trim(),
        std::fs::read_to_string(&docker)
            .expect("docker config")
            .trim(),
        "the ConfigMap holds deploy/docker/empath.config.ron"
    );
    for config in [docker, from_configmap] {
        let output = run_bounded(
            Command::new(binary("empath"))
                .arg("--config")
                .arg(&config)
                .arg("check-config"),
            TIMEOUT,
        );
        assert!(
            output.status.success(),
            "{}: {}",
            config.display(),
            output.combined()
        );
    }
}

#[test]
fn the_dockerfile_builds_in_one_stage_and_runs_unprivileged_in_another() {
    let dockerfile =
        std::fs::read_to_string(workspace().join("deploy/docker/Dockerfile")).expect("Dockerfile");
    let instructions: Vec<&str> = dockerfile
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .collect();
    let stages = instructions
        .iter()
        .filter(|l| l.starts_with("FROM "))
        .count();
    assert!(stages >= 2, "multi-stage: {stages} FROM");
    assert!(
        instructions
            .iter()
            .any(|l| l.starts_with("FROM ") && l.contains(" AS build"))
    );
    let user = instructions
        .iter()
        .rev()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("a USER instruction");
    assert!(
        !user.starts_with("root") && !user.starts_with('0'),
        "USER {user}"
    );
    assert!(instructions.iter().any(|l| l.starts_with("HEALTHCHECK")));
    // Every daemon the master starts is copied into the image.
    for daemon in empath_tests::DAEMONS {
        assert!(
            dockerfile.contains(&format!("/src/target/release/{daemon}")),
            "{daemon} is not in the image"
        );
    }
    let exposed = instructions
        .iter()
        .find_map(|l| l.strip_prefix("EXPOSE "))
        .expect("EXPOSE");
    let config = std::fs::read_to_string(workspace().join("deploy/docker/empath.config.ron"))
        .expect("config");
    for port in exposed.split_whitespace() {
        assert!(
            config.contains(&format!(":{port}\"")),
            "port {port} is not in the config"
        );
    }
}

#[test]
fn the_compose_prometheus_config_passes_promtool() {
    let dir = test_dir();
    let config = std::fs::read_to_string(workspace().join("deploy/docker/prometheus.yml"))
        .expect("prometheus.yml")
        .replace(
            "/etc/prometheus/empath-alerts.yml",
            &workspace()
                .join("etc/prometheus-alerts.yml")
                .display()
                .to_string(),
        );
    let path = dir.path().join("prometheus.yml");
    std::fs::write(&path, config).expect("write");
    let output = run_bounded(
        Command::new("promtool")
            .args(["check", "config"])
            .arg(&path),
        TIMEOUT,
    );
    assert!(output.status.success(), "{}", output.combined());
}
