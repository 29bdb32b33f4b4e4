//! Starting and checking Empath the way the seed documents do: the
//! systemd unit's `ExecStart` (a positional config file), the containers'
//! start-up (no argument, the config in the working directory), the
//! troubleshooting guide's `--dry-run`, and `empath check-config` on the
//! shipped `examples/config/production.ron`, TLS files included.
//!
//! Build the binaries first: `cargo build --workspace --bins`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use empath_tests::run::{RunOutput, run_bounded};
use empath_tests::{ConfigArg, Empath, Sink, SmtpSend, TestConfig, binary, mail, seeds, test_dir};

const SENDER: &str = "ops@client.test";
const TIMEOUT: Duration = Duration::from_secs(60);

/// The words of a command line from the seeds (no quoting in them).
fn words(line: &str) -> Vec<String> {
    line.split_whitespace().map(str::to_owned).collect()
}

/// Runs `empath` with `args` in `dir`.
fn empath_in(dir: &Path, args: &[&str]) -> RunOutput {
    let mut command = Command::new(binary("empath"));
    command.args(args).current_dir(dir).env("NO_COLOR", "1");
    run_bounded(&mut command, TIMEOUT)
}

/// Sends a message through `empath` and waits for `sink` to have it.
fn mail_flows(empath: &Empath, sink: &Sink) {
    let to = "user@sink.test";
    let messages = mail::generate(1, SENDER, &[to]);
    let outbox = mail::write_eml_files(&empath.dir().join("outbox"), &messages);
    SmtpSend::new(empath.smtp_addr(), SENDER, &[to], &outbox)
        .run()
        .assert_all_accepted(1, || empath.log_tail());
    if let Err(got) = sink.wait_for_messages(1, TIMEOUT) {
        panic!("the sink got {got} messages\n{}", empath.log_tail());
    }
}

#[test]
fn the_seeds_systemd_exec_start_runs_empath_with_a_positional_config() {
    // ExecStart=/usr/local/bin/empath /etc/empath/empath.config.ron
    let exec_start = seeds::line_containing("DEPLOYMENT.md", "ExecStart=");
    let command = words(exec_start.trim_start_matches("ExecStart="));
    assert_eq!(command.len(), 2, "{exec_start}");
    assert!(command[0].ends_with("/empath"), "{exec_start}");
    assert_eq!(command[1], "/etc/empath/empath.config.ron");

    // The same command line, with our binary and the test's config file.
    let sink = Sink::start();
    let empath = Empath::start(
        TestConfig::new()
            .mx_override("sink.test", sink.addr())
            .config_arg(ConfigArg::Positional),
    );
    mail_flows(&empath, &sink);
}

#[test]
fn the_seeds_dry_run_checks_the_config_and_names_a_bad_line() {
    // /usr/local/bin/empath /etc/empath/empath.config.ron --dry-run
    let line = seeds::line_containing("DEPLOYMENT.md", "empath.config.ron --dry-run");
    let seed_words = words(&line);
    assert_eq!(seed_words.len(), 3, "{line}");
    assert_eq!(seed_words[2], "--dry-run");

    let dir = test_dir();
    let config = TestConfig::new().write_to(dir.path());
    let path = config.display().to_string();
    let ok = empath_in(dir.path(), &[&path, "--dry-run"]);
    assert!(ok.status.success(), "{}", ok.combined());
    assert!(ok.stdout.contains("config OK"), "{}", ok.combined());
    assert!(
        !dir.path().join("spool").exists(),
        "--dry-run must not start anything"
    );

    let text = std::fs::read_to_string(&config).expect("read the config");
    std::fs::write(&config, text.replace("hostname:", "hostnmae:")).expect("break the config");
    let bad = empath_in(dir.path(), &[&path, "--dry-run"]);
    assert_eq!(bad.status.code(), Some(78), "{}", bad.combined());
    assert!(
        bad.stderr.contains("hostnmae") && bad.stderr.contains(&format!("{path}:2:")),
        "{}",
        bad.combined()
    );
    // The other spellings of the same check.
    for args in [
        vec!["check-config", path.as_str()],
        vec!["--config", path.as_str(), "check-config"],
        vec!["--config", path.as_str(), "--dry-run"],
    ] {
        let out = empath_in(dir.path(), &args);
        assert_eq!(out.status.code(), Some(78), "{args:?}: {}", out.combined());
    }
    let twice = empath_in(dir.path(), &[&path, "--config", &path]);
    assert_eq!(twice.status.code(), Some(2), "{}", twice.combined());
}

#[test]
fn the_seeds_containers_start_empath_without_arguments_in_the_config_directory() {
    // The compose file and the Kubernetes Deployment mount the config at
    // /app/empath.config.ron and pass no argument.
    let mount = seeds::line_containing("DEPLOYMENT.md", ":/app/empath.config.ron");
    assert!(mount.ends_with(":/app/empath.config.ron:ro"), "{mount}");
    let k8s = seeds::line_containing("DEPLOYMENT.md", "mountPath: /app/empath.config.ron");
    assert!(!k8s.is_empty());

    let sink = Sink::start();
    let empath = Empath::start(
        TestConfig::new()
            .mx_override("sink.test", sink.addr())
            .config_arg(ConfigArg::WorkingDirectory),
    );
    mail_flows(&empath, &sink);
}

#[test]
fn without_a_config_anywhere_empath_names_where_it_looked() {
    let fallback = Path::new("/etc/empath/empath.config.ron");
    let dir = test_dir();
    let out = empath_in(dir.path(), &["--dry-run"]);
    if fallback.exists() {
        // This machine has a system config: that is what was checked.
        assert!(
            out.combined()
                .contains(fallback.to_str().unwrap_or_default())
        );
        return;
    }
    assert_eq!(out.status.code(), Some(78), "{}", out.combined());
    assert!(
        out.stderr.contains("./empath.config.ron")
            && out.stderr.contains(&fallback.display().to_string()),
        "{}",
        out.combined()
    );
}

/// A certificate and key for `mail.example.com`, written into `dir`.
fn write_certificate(dir: &Path) -> (PathBuf, PathBuf) {
    let certified = rcgen::generate_simple_self_signed(vec!["mail.example.com".to_owned()])
        .expect("make a test certificate");
    std::fs::create_dir_all(dir).expect("create the TLS dir");
    let (key, certificate) = (dir.join("private.key"), dir.join("certificate.crt"));
    std::fs::write(&key, certified.signing_key.serialize_pem()).expect("write the key");
    std::fs::write(&certificate, certified.cert.pem()).expect("write the certificate");
    (key, certificate)
}

#[test]
fn check_config_loads_the_starttls_certificate_and_key() {
    let dir = test_dir();
    let tls = dir.path().join("tls");
    let (key, certificate) = write_certificate(&tls);
    let with_tls = |key: &Path, certificate: &Path| {
        let value = format!(
            "[{{\"starttls\": {{\"key\": {:?}, \"certificate\": {:?}}}}}]",
            key.display().to_string(),
            certificate.display().to_string()
        );
        TestConfig::new()
            .listener_field("extensions", &value)
            .write_to(dir.path())
            .display()
            .to_string()
    };
    let check = |config: &str| empath_in(dir.path(), &["check-config", config]);

    let good = check(&with_tls(&key, &certificate));
    assert!(good.status.success(), "{}", good.combined());

    let missing = tls.join("missing.crt");
    let out = check(&with_tls(&key, &missing));
    assert_eq!(out.status.code(), Some(78), "{}", out.combined());
    assert!(
        out.stderr
            .contains("smtp_controller.listeners[0].extensions.starttls")
            && out.stderr.contains(&missing.display().to_string()),
        "{}",
        out.combined()
    );
    // --dry-run is the same check.
    let dry = empath_in(dir.path(), &[&with_tls(&key, &missing), "--dry-run"]);
    assert_eq!(dry.status.code(), Some(78), "{}", dry.combined());

    let garbage = tls.join("garbage.crt");
    std::fs::write(&garbage, "-----BEGIN CERTIFICATE-----\nnot base64\n").expect("write");
    let out = check(&with_tls(&key, &garbage));
    assert_eq!(out.status.code(), Some(78), "{}", out.combined());
    assert!(out.stderr.contains("garbage.crt"), "{}", out.combined());

    // A key that is not the certificate's.
    let other = write_certificate(&dir.path().join("other")).0;
    let out = check(&with_tls(&other, &certificate));
    assert_eq!(out.status.code(), Some(78), "{}", out.combined());
    assert!(
        out.stderr.contains("private.key") && out.stderr.contains("certificate.crt"),
        "{}",
        out.combined()
    );

    let no_key = check(&with_tls(&tls.join("none.key"), &certificate));
    assert_eq!(no_key.status.code(), Some(78), "{}", no_key.combined());
    assert!(no_key.stderr.contains("none.key"), "{}", no_key.combined());
}

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the repository")
        .to_owned()
}

#[test]
fn the_production_example_the_seeds_copy_passes_check_config() {
    // sudo cp examples/config/production.ron /etc/empath/empath.config.ron
    let copy = seeds::line_containing("DEPLOYMENT.md", "cp examples/config/production.ron");
    assert!(copy.ends_with("/etc/empath/empath.config.ron"), "{copy}");
    let example = repository().join("examples/config/production.ron");
    let text = std::fs::read_to_string(&example).expect("examples/config/production.ron");

    // Installed as the guide says, with the certificate the TLS set-up
    // makes in /etc/empath/tls (here in a temp dir).
    let dir = test_dir();
    let tls = dir.path().join("tls");
    write_certificate(&tls);
    assert!(text.contains("\"/etc/empath/tls/private.key\""), "{text}");
    let installed = dir.path().join("empath.config.ron");
    std::fs::write(
        &installed,
        text.replace("/etc/empath/tls", &tls.display().to_string()),
    )
    .expect("install the example");
    let installed = installed.display().to_string();
    for args in [
        vec!["check-config", installed.as_str()],
        vec![installed.as_str(), "--dry-run"],
    ] {
        let out = empath_in(dir.path(), &args);
        assert!(out.status.success(), "{args:?}: {}", out.combined());
        assert!(out.stdout.contains("config OK"), "{}", out.combined());
    }
    // Before the certificate is there, the check says so.
    std::fs::remove_file(tls.join("certificate.crt")).expect("remove the certificate");
    let out = empath_in(dir.path(), &["check-config", &installed]);
    assert_eq!(out.status.code(), Some(78), "{}", out.combined());
}

#[test]
fn security_md_says_how_to_report_and_what_runs_as_root() {
    // DEPLOYMENT.md: "SECURITY.md: Security features, threat model, and best practices"
    seeds::line_containing("DEPLOYMENT.md", "SECURITY.md");
    let text = std::fs::read_to_string(repository().join("SECURITY.md")).expect("SECURITY.md");
    for needle in [
        "Reporting a vulnerability",
        "empath-local",
        "root",
        "empath-smtpd",
        "setresuid",
    ] {
        assert!(
            text.contains(needle),
            "SECURITY.md does not mention {needle:?}"
        );
    }
}
