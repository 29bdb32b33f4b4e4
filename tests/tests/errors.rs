//! Start-up errors: each must be a clear message and a non-zero exit,
//! never a panic or a hang.
//!
//! Build the binaries first: `cargo build --workspace --bins`.

use std::fs;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use empath_tests::config::CONFIG_FILE;
use empath_tests::nobody::{as_nobody, binary_for_nobody, setpriv_available};
use empath_tests::{RunOutput, TestConfig, empath_command, run_bounded, test_dir};

/// A failing start must be quick: config, queue and bind come first.
const EXIT_TIMEOUT: Duration = Duration::from_secs(10);
/// sysexits EX_CONFIG, which `empath check-config` uses for a bad config.
const EX_CONFIG: i32 = 78;
fn check_config(config: &Path) -> RunOutput {
    run_bounded(
        empath_command()
            .arg("check-config")
            .arg("--config")
            .arg(config),
        EXIT_TIMEOUT,
    )
}

fn run_master(config: &Path) -> RunOutput {
    run_bounded(empath_command().arg("--config").arg(config), EXIT_TIMEOUT)
}

/// A non-zero exit of its own (not a signal), and no panic.
fn assert_clean_failure(output: &RunOutput) {
    let all = output.combined();
    assert!(!output.status.success(), "expected a failure\n{all}");
    assert!(
        output.status.code().is_some(),
        "killed by a signal, not a clean exit\n{all}"
    );
    assert!(!all.contains("panicked"), "panicked\n{all}");
}

fn assert_mentions(output: &RunOutput, expected: &str) {
    let all = output.combined();
    assert!(
        all.contains(expected),
        "expected {expected:?} in the output\n{all}"
    );
}

/// The 1-based line of the first line of `text` containing `needle`.
fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|line| line.contains(needle))
        .map(|index| index + 1)
        .unwrap_or_else(|| panic!("{needle:?} not in\n{text}"))
}

#[test]
fn the_shipped_configs_pass_check_config() {
    let etc = Path::new(env!("CARGO_MANIFEST_DIR")).join("../etc");
    for name in ["empath.dev.ron", "empath.config.ron"] {
        let output = check_config(&etc.join(name));
        assert!(output.status.success(), "{name}: {}", output.combined());
    }
}

#[test]
fn valid_config_passes_check_config() {
    let dir = test_dir();
    let config = TestConfig::new()
        .mx_override("sink.test", "127.0.0.1:2525")
        .write_to(dir.path());

    let output = check_config(&config);

    assert!(output.status.success(), "{}", output.combined());
    assert!(
        output.combined().to_lowercase().contains("ok"),
        "{}",
        output.combined()
    );
}

#[test]
fn garbage_config_is_an_error_with_file_and_line() {
    let dir = test_dir();
    let config = dir.path().join(CONFIG_FILE);
    let text = "Empath(\n    hostname: \"mx.empath.test\",\n    %%% garbage ]]]\n)\n";
    fs::write(&config, text).expect("write config");
    let location = format!("{}:{}:", config.display(), line_of(text, "garbage"));

    for output in [check_config(&config), run_master(&config)] {
        assert_clean_failure(&output);
        assert_mentions(&output, &location);
    }
    let output = check_config(&config);
    assert_eq!(
        output.status.code(),
        Some(EX_CONFIG),
        "{}",
        output.combined()
    );
}

#[test]
fn unknown_key_is_named_with_its_line() {
    let dir = test_dir();
    let config = TestConfig::new()
        .delivery("scan_intervall_secs", "1")
        .write_to(dir.path());
    let text = fs::read_to_string(&config).expect("read config");
    let location = format!(
        "{}:{}:",
        config.display(),
        line_of(&text, "scan_intervall_secs")
    );

    for output in [check_config(&config), run_master(&config)] {
        assert_clean_failure(&output);
        assert_mentions(&output, "scan_intervall_secs");
        assert_mentions(&output, &location);
    }
}

#[test]
fn port_in_use_is_an_error_naming_the_address() {
    // Held for the whole test, so the port stays taken.
    let busy = TcpListener::bind("127.0.0.1:0").expect("bind a port");
    let addr = busy.local_addr().expect("address");
    let dir = test_dir();
    let config = TestConfig::new().listeners([addr]).write_to(dir.path());

    let output = run_master(&config);

    assert_clean_failure(&output);
    assert_mentions(&output, &addr.to_string());
    assert!(
        output.combined().to_lowercase().contains("in use"),
        "expected an 'address in use' error\n{}",
        output.combined()
    );
}

#[test]
fn unwritable_queue_dir_is_an_error_naming_the_spool() {
    let dir = test_dir();
    // The spool is to be created inside a directory the master may not write.
    let locked = dir.path().join("locked");
    fs::create_dir(&locked).expect("create dir");
    let spool = locked.join("spool");
    let config = dir.path().join(CONFIG_FILE);
    TestConfig::new().write(&config, &spool);
    // Readable by the unprivileged user below, whatever the umask.
    fs::set_permissions(&config, fs::Permissions::from_mode(0o644)).expect("chmod config");

    let mut command = if nix::unistd::Uid::effective().is_root() {
        // Root bypasses permission checks, so run as an unprivileged user
        // against a root-owned 0700 directory.
        if !setpriv_available() {
            println!("note: skipped: running as root and setpriv (util-linux) is missing");
            return;
        }
        fs::set_permissions(&locked, fs::Permissions::from_mode(0o700)).expect("chmod");
        as_nobody(&binary_for_nobody("empath", dir.path()))
    } else {
        fs::set_permissions(&locked, fs::Permissions::from_mode(0o500)).expect("chmod");
        empath_command()
    };
    command.arg("--config").arg(&config).current_dir(dir.path());

    let output = run_bounded(&mut command, EXIT_TIMEOUT);

    assert_clean_failure(&output);
    assert_mentions(&output, &spool.display().to_string());
    assert!(!spool.exists(), "the spool was created anyway");
}
