//! The config examples in the user's documents (EMPATH_GUIDE.md and
//! DEPLOYMENT.md) must load unchanged. Full documents are loaded as they are;
//! section fragments are placed where they belong in a minimal document.

use std::path::{Path, PathBuf};

use empath_common::config::{Config, Extension};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn load(name: &str) -> Config {
    let path = fixtures().join(name);
    Config::load(&path).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn guide_example_loads_with_every_section() {
    let config = load("guide.ron");
    let listener = &config.smtp_controller.listeners[0];
    assert_eq!(listener.socket.0.port(), 1025);
    assert_eq!(
        listener.context.get("service").map(String::as_str),
        Some("smtp")
    );
    assert_eq!(listener.timeouts.data_block_secs, 180);
    assert!(listener.extensions.contains(&Extension::Size(10000)));
    assert_eq!(config.modules[0].arguments, ["arg1", "arg2"]);
    let domain = &config.delivery.domains["test.example.com"];
    assert_eq!(
        domain
            .mx_override
            .as_ref()
            .map(ToString::to_string)
            .as_deref(),
        Some("localhost:1025")
    );
    assert_eq!(domain.accept_invalid_certs, Some(true));
    assert_eq!(
        config.delivery.rate_limit.domain_limits["gmail.com"].burst_size,
        100
    );
    assert!(config.control_auth.enabled);
    assert_eq!(config.metrics.max_domain_cardinality, 1000);
    assert_eq!(config.health.max_queue_size, 10000);
    assert_eq!(
        config.dsn.reporting_mta.as_deref(),
        Some("mail.example.com")
    );
}

#[test]
fn deployment_examples_load() {
    let production = load("deployment-production.ron");
    assert_eq!(production.delivery.max_retry_delay_secs, 86400);
    assert_eq!(production.delivery.smtp_timeouts.quit_secs, 10);
    assert_eq!(
        production.smtp_controller.listeners[0].context["environment"],
        "production"
    );
    let kubernetes = load("deployment-kubernetes.ron");
    assert!(
        kubernetes.smtp_controller.listeners[0]
            .extensions
            .contains(&Extension::Size(25_000_000))
    );
}

#[test]
fn every_documented_fragment_loads_in_its_section() {
    let mut checked = 0;
    for entry in std::fs::read_dir(fixtures()).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if !name.starts_with("fragment-") {
            continue;
        }
        let fragment = std::fs::read_to_string(&path).unwrap();
        let (listener, delivery, top) = if name.ends_with("-listener.ron") {
            (fragment.as_str(), "", "")
        } else if name.ends_with("-delivery.ron") {
            ("", fragment.as_str(), "")
        } else {
            ("", "", fragment.as_str())
        };
        let delivery = if delivery.is_empty() {
            String::new()
        } else {
            format!("delivery: (\n{delivery}\n),\n")
        };
        let document = format!(
            "Empath(\n smtp_controller: (listeners: [{{ socket: \"127.0.0.1:2525\",\n{listener}\n }}]),\n spool: (path: \"/tmp/x\"),\n{delivery}{top}\n)"
        );
        Config::parse(&path, &document).unwrap_or_else(|e| panic!("{name}: {e}\n{document}"));
        checked += 1;
    }
    assert!(checked >= 10, "only {checked} fragments found");
}
