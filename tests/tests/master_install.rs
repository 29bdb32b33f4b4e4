//! Unix integration: the alert rules pass `promtool check rules`, and
//! `make install` lays out a tree whose master finds its daemons in
//! libexec, whose systemd unit passes `systemd-analyze verify`, whose
//! init.d script is valid shell, and whose empath.h and libempath.so build
//! a plugin module that loads.
//!
//! Build the binaries first: `cargo build --workspace --bins`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use empath_tests::modules::{build_module, libempath_dir};
use empath_tests::run::run_bounded;
use empath_tests::{DAEMONS, TestConfig, binary, procfs, test_dir};

const TIMEOUT: Duration = Duration::from_secs(120);

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn have(program: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {program}"))
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn promtool_accepts_the_alert_rules() {
    assert!(
        have("promtool"),
        "promtool is missing: install the Debian package `prometheus` (.ci/run does)"
    );
    let output = run_bounded(
        Command::new("promtool")
            .args(["check", "rules"])
            .arg(workspace().join("etc/prometheus-alerts.yml")),
        TIMEOUT,
    );
    assert!(output.status.success(), "{}", output.combined());
    assert!(output.stdout.contains("SUCCESS"), "{}", output.combined());
}

/// The rules' unit tests: a healthy idle server raises nothing, and each
/// alert fires on its case with the `instance` label kept.
#[test]
fn promtool_unit_tests_cover_every_alert() {
    let rules =
        std::fs::read_to_string(workspace().join("etc/prometheus-alerts.yml")).expect("the rules");
    let tests = std::fs::read_to_string(workspace().join("etc/prometheus-alerts.test.yml"))
        .expect("the rule tests");
    let runbooks =
        std::fs::read_to_string(workspace().join("docs/ALERT_RUNBOOKS.md")).expect("the runbooks");
    let alerts: Vec<&str> = rules
        .lines()
        .filter_map(|line| line.trim().strip_prefix("- alert: "))
        .collect();
    assert_eq!(alerts.len(), 12, "{alerts:?}");
    for alert in &alerts {
        // Once in the idle case, at least once firing.
        let firing = tests
            .split("alertname: ")
            .skip(1)
            .filter(|case| {
                case.starts_with(alert)
                    && !case.lines().next().unwrap_or("").contains("exp_alerts: []")
            })
            .count();
        assert!(
            firing >= 1,
            "{alert} has no firing case in prometheus-alerts.test.yml"
        );
        assert!(
            tests.contains(&format!("alertname: {alert}, exp_alerts: []")),
            "{alert} is not checked on the idle server"
        );
        let anchor = format!("#{}", alert.to_ascii_lowercase());
        assert!(
            rules.contains(&format!(
                "runbook_url: file:///usr/share/doc/empath/ALERT_RUNBOOKS.md{anchor}"
            )),
            "{alert}'s runbook_url"
        );
        assert!(
            runbooks.contains(&format!("### {alert}\n")),
            "no runbook for {alert}"
        );
    }
    let output = run_bounded(
        Command::new("promtool")
            .args(["test", "rules"])
            .arg(workspace().join("etc/prometheus-alerts.test.yml")),
        TIMEOUT,
    );
    assert!(
        output.status.success() && output.stdout.contains("SUCCESS"),
        "{}",
        output.combined()
    );
}

#[test]
fn make_install_lays_out_a_working_tree() {
    assert!(have("make"), "make is missing");
    let prefix = test_dir();
    let built = binary("empath").parent().expect("target dir").to_owned();
    let output = run_bounded(
        Command::new("make")
            .arg("-C")
            .arg(workspace())
            .arg("install")
            .arg(format!("PREFIX={}", prefix.path().display()))
            .arg(format!("BUILT={}", built.display()))
            // `cargo test` leaves libempath.so among the dependencies.
            .arg(format!(
                "LIBEMPATH={}",
                libempath_dir().join("libempath.so").display()
            ))
            // A test prefix is not the system's: no ldconfig.
            .arg("LDCONFIG=true"),
        TIMEOUT,
    );
    assert!(output.status.success(), "{}", output.combined());
    let root = prefix.path();
    for file in [
        "sbin/empath",
        "sbin/empathctl",
        "sbin/sendmail",
        "bin/mailq",
        "share/man/man8/empath.8",
        "share/man/man8/empath-anvil.8",
        "share/man/man5/empath.config.ron.5",
        "share/man/man1/mailq.1",
        "share/man/man3/empath-modules.3",
        "etc/empath/empath.config.ron",
        "etc/init.d/empath",
        "etc/logrotate.d/empath",
        "lib/systemd/system/empath.service",
        "share/empath/prometheus-alerts.yml",
        "share/empath/empath-dashboard.json",
        "lib/libempath.so",
        "include/empath.h",
        "share/doc/empath/ALERT_RUNBOOKS.md",
        "etc/fail2ban/filter.d/empath-auth.conf",
        "share/man/man8/empath-smtpd.8",
        "share/man/man8/empath-qmgr.8",
    ] {
        assert!(root.join(file).is_file(), "{file} was not installed");
    }
    // The names other programs call an MTA by.
    for (link, target) in [
        ("lib/sendmail", "sbin/sendmail"),
        ("bin/newaliases", "sbin/newaliases"),
    ] {
        let found = std::fs::read_link(root.join(link)).unwrap_or_else(|e| panic!("{link}: {e}"));
        assert_eq!(found, root.join(target), "{link}");
    }
    for daemon in DAEMONS {
        assert!(
            root.join("libexec/empath").join(daemon).is_file(),
            "{daemon}"
        );
    }

    // The installed config is valid, and the unit points at this tree.
    let check = run_bounded(
        Command::new(root.join("sbin/empath"))
            .arg("--config")
            .arg(root.join("etc/empath/empath.config.ron"))
            .arg("check-config"),
        TIMEOUT,
    );
    assert!(check.status.success(), "{}", check.combined());
    let unit =
        std::fs::read_to_string(root.join("lib/systemd/system/empath.service")).expect("unit");
    assert!(
        unit.contains(&format!("ExecStart={}/sbin/empath", root.display())),
        "{unit}"
    );
    // The unit may write where it says, and those directories exist.
    let writable = unit
        .lines()
        .find_map(|line| line.strip_prefix("ReadWritePaths="))
        .expect("ReadWritePaths=");
    for dir in writable.split_whitespace() {
        assert!(
            dir.starts_with(&*root.to_string_lossy()) && Path::new(dir).is_dir(),
            "ReadWritePaths= names {dir}, which make install did not create under {}",
            root.display()
        );
    }
    for line in ["SyslogFacility=mail", "Conflicts=postfix.service"] {
        assert!(unit.contains(line), "{line} missing:\n{unit}");
    }
    if have("systemd-analyze") {
        let verify = run_bounded(
            Command::new("systemd-analyze")
                .args(["verify", "--man=no"])
                .arg(root.join("lib/systemd/system/empath.service")),
            TIMEOUT,
        );
        assert!(
            verify.status.success() && verify.stderr.trim().is_empty(),
            "{}",
            verify.combined()
        );
    } else {
        eprintln!("systemd-analyze is missing: the unit was not verified");
    }
    let init = run_bounded(
        Command::new("sh")
            .arg("-n")
            .arg(root.join("etc/init.d/empath")),
        TIMEOUT,
    );
    assert!(init.status.success(), "{}", init.combined());
    let dashboard = std::fs::read_to_string(root.join("share/empath/empath-dashboard.json"))
        .expect("dashboard");
    let dashboard: serde_json::Value =
        serde_json::from_str(&dashboard).expect("the dashboard is JSON");
    assert!(dashboard["panels"].as_array().is_some_and(|p| p.len() >= 8));

    // The installed master finds its daemons in libexec/empath.
    started_from_libexec(root);
    module_built_against(root);
}

/// Builds an example module as its author would, against the installed
/// empath.h and libempath.so, and loads it as the daemons do.
fn module_built_against(root: &Path) {
    let build = test_dir();
    let library = build_module(
        &workspace().join("modules/examples/reject_domain.c"),
        &root.join("include"),
        &root.join("lib"),
        build.path(),
    );
    let modules =
        empath_modules::Modules::load([(library.as_path(), &["spam.test".to_owned()][..])])
            .unwrap_or_else(|e| panic!("{e}"));
    let mut context = empath_modules::ModuleContext {
        sender: "x@spam.test".to_owned(),
        ..Default::default()
    };
    let rejection = modules
        .validate(empath_modules::Validation::MailFrom, &mut context)
        .expect_err("reject_domain refuses spam.test");
    assert_eq!(
        (rejection.code, rejection.text.as_str()),
        (550, "5.7.1 Mail from spam.test is not accepted here")
    );
}

/// Starts the installed master on a test config and checks where its
/// daemons' executables are.
fn started_from_libexec(root: &Path) {
    let dir = test_dir();
    let config = TestConfig::new().write_to(dir.path());
    let mut master = Command::new(root.join("sbin/empath"))
        .arg("--config")
        .arg(&config)
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("empath.stderr")).expect("log"))
        .spawn()
        .expect("start the installed master");
    let pid = i32::try_from(master.id()).expect("pid");
    let found = empath_tests::poll(Duration::from_secs(30), || {
        let exes: Vec<PathBuf> = DAEMONS
            .iter()
            .filter_map(|name| procfs::live_children_named(pid, name).first().copied())
            .filter_map(|child| std::fs::read_link(format!("/proc/{child}/exe")).ok())
            .collect();
        if exes.len() == DAEMONS.len() {
            Ok(exes)
        } else {
            Err(format!("{exes:?}"))
        }
    });
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = empath_tests::poll(Duration::from_secs(15), || {
        master
            .try_wait()
            .ok()
            .flatten()
            .ok_or_else(|| "running".to_owned())
    });
    let _ = master.kill();
    let _ = master.wait();
    let log = std::fs::read_to_string(dir.path().join("empath.stderr")).unwrap_or_default();
    let exes = found
        .unwrap_or_else(|e| panic!("the installed master did not start every daemon: {e}\n{log}"));
    let libexec = root.join("libexec/empath").canonicalize().expect("libexec");
    for exe in exes {
        assert!(
            exe.starts_with(&libexec),
            "{} is not from {}",
            exe.display(),
            libexec.display()
        );
    }
}
