//! The Debian package: built with cargo-deb from the binaries the tests
//! run (`cargo deb --profile dev --no-build`), it installs what a Debian
//! MTA installs (/usr/sbin/sendmail, /usr/lib/sendmail, mailq,
//! newaliases, the init.d script, the systemd unit, a man page per
//! command and daemon) and lintian finds no error and no warning in it.
//!
//! Build the binaries first: `cargo build --workspace --bins`; cargo-deb
//! comes from `cargo install cargo-deb` (.ci/install-test-deps).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use empath_tests::modules::libempath_dir;
use empath_tests::{binary, run_bounded, test_dir};

/// Building and compressing the package takes minutes on a small machine.
const BUILD_TIMEOUT: Duration = Duration::from_secs(1200);
const LINT_TIMEOUT: Duration = Duration::from_secs(600);

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn cargo() -> Command {
    let mut command = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    command.current_dir(workspace());
    command
}

#[test]
fn the_deb_installs_a_debian_mta_and_is_lintian_clean() {
    // The binaries are the ones the tests run (`cargo build --workspace
    // --bins`). libempath.so is a library, which `--bins` does not build:
    // `cargo test` leaves it among the dependencies, and cargo-deb takes
    // it from the profile's directory.
    let profile_dir = binary("empath").parent().expect("target dir").to_owned();
    let library = profile_dir.join("libempath.so");
    if !library.is_file() {
        std::fs::copy(libempath_dir().join("libempath.so"), &library)
            .unwrap_or_else(|e| panic!("copy libempath.so to {}: {e}", library.display()));
    }
    let out = test_dir();
    let deb = run_bounded(
        cargo()
            .args([
                "deb",
                "-p",
                "empath-master",
                "--profile",
                "dev",
                "--no-build",
                "-o",
            ])
            .arg(out.path()),
        BUILD_TIMEOUT,
    );
    assert!(
        deb.status.success(),
        "cargo deb (cargo install --locked cargo-deb --version 3.8.0): {}",
        deb.combined()
    );
    let package = std::fs::read_dir(out.path())
        .expect("output dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .expect("a .deb");

    let listing = run_bounded(
        Command::new("dpkg-deb").arg("-c").arg(&package),
        LINT_TIMEOUT,
    );
    assert!(listing.status.success(), "{}", listing.combined());
    let has = |path: &str| listing.stdout.lines().any(|line| line.contains(path));
    for path in [
        "./usr/sbin/sendmail",
        "./usr/sbin/empath",
        "./usr/lib/empath/libempath.so",
        "./usr/include/empath.h",
        "./usr/sbin/newaliases",
        "./usr/bin/mailq",
        "./usr/lib/sendmail -> ../sbin/sendmail",
        "./usr/bin/newaliases -> ../sbin/newaliases",
        "./etc/init.d/empath",
        "./usr/lib/systemd/system/empath.service",
        "./usr/share/doc/empath/changelog.Debian.gz",
        "./usr/share/doc/empath/ALERT_RUNBOOKS.md",
        "./etc/fail2ban/filter.d/empath-auth.conf",
        "./usr/share/man/man8/empath-smtpd.8",
        "./usr/share/man/man8/empath-cleanup.8",
        "./usr/share/man/man8/empath-qmgr.8",
        "./usr/share/man/man8/empath-smtp-out.8",
        "./usr/share/man/man8/empath-bounce.8",
        "./usr/share/man/man8/empath-local.8",
    ] {
        assert!(
            has(path),
            "{path} is not in the package:\n{}",
            listing.stdout
        );
    }
    let control = run_bounded(
        Command::new("dpkg-deb").arg("-f").arg(&package),
        LINT_TIMEOUT,
    );
    for field in [
        "Provides: mail-transport-agent",
        "Conflicts: mail-transport-agent",
    ] {
        assert!(
            control.stdout.contains(field),
            "{field}:\n{}",
            control.stdout
        );
    }

    let lint = run_bounded(
        Command::new("lintian")
            .args(["--fail-on", "error,warning", "--tag-display-limit", "0"])
            .arg(&package),
        LINT_TIMEOUT,
    );
    let tags: Vec<&str> = lint
        .stdout
        .lines()
        .filter(|line| line.starts_with("E: ") || line.starts_with("W: "))
        .collect();
    assert!(
        lint.status.success() && tags.is_empty(),
        "lintian: {tags:#?}\n{}",
        lint.combined()
    );
}
