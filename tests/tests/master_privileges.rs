//! Privilege separation. Started as root, the master binds port 25 and
//! prepares the queue, then every daemon runs as the configured
//! unprivileged user and group, without supplementary groups. It refuses
//! to run them as root unless `allow_root: true`.
//!
//! These tests need root (CI runs as root); elsewhere they say so and pass.
//! The port-25 test runs the master in its own network namespace
//! (`unshare --net`), so it never meets a real MTA or a parallel test.
//!
//! Build the binaries first: `cargo build --workspace --bins`.

use std::fs::File;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use empath_tests::procfs;
use empath_tests::run::run_bounded;
use empath_tests::{DAEMONS, TestConfig, binary, empath_command, poll, test_dir};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// `nobody` / `nogroup` on Debian.
const UNPRIVILEGED: u32 = 65_534;
const TIMEOUT: Duration = Duration::from_secs(30);

fn running_as_root() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    eprintln!("skipped: privilege separation is only testable as root");
    false
}

/// The master in its own network namespace; killed on drop.
struct Namespaced {
    child: Child,
}

impl Drop for Namespaced {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `Uid:`, `Gid:` and `Groups:` lines of /proc/PID/status.
fn credentials(pid: i32) -> (String, String, String) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc status");
    let line = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .map(|rest| rest.split_whitespace().collect::<Vec<_>>().join(" "))
            .unwrap_or_default()
    };
    (line("Uid:"), line("Gid:"), line("Groups:"))
}

fn log(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("empath.stderr")).unwrap_or_default()
}

#[test]
fn started_as_root_on_port_25_every_daemon_runs_as_the_unprivileged_user() {
    if !running_as_root() {
        return;
    }
    let dir = test_dir();
    let config = TestConfig::new()
        .listeners(["127.0.0.1:25"])
        .section("allow_root", "false")
        .section("user", "\"nobody\"")
        .section("group", "\"nogroup\"")
        .write_to(dir.path());
    let spool = dir.path().join("spool");
    let mut master = Namespaced {
        child: Command::new("unshare")
            .args([
                "--net",
                "--",
                "sh",
                "-c",
                "ip link set lo up && exec \"$0\" --config \"$1\"",
            ])
            .arg(binary("empath"))
            .arg(&config)
            .env("NO_COLOR", "1")
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(File::create(dir.path().join("empath.stdout")).expect("stdout file"))
            .stderr(File::create(dir.path().join("empath.stderr")).expect("stderr file"))
            .spawn()
            .expect("run unshare"),
    };
    let pid = i32::try_from(master.child.id()).expect("pid");
    let listeners = poll(TIMEOUT, || {
        if let Ok(Some(status)) = master.child.try_wait() {
            panic!("the master exited ({status})\n{}", log(dir.path()));
        }
        std::fs::read_to_string(spool.join("listeners")).map_err(|e| e.to_string())
    })
    .unwrap_or_else(|e| panic!("no listeners file: {e}\n{}", log(dir.path())));
    assert_eq!(listeners.trim(), "127.0.0.1:25");

    let pids: Vec<(&str, i32)> = poll(TIMEOUT, || {
        let found: Vec<(&str, i32)> = DAEMONS
            .iter()
            .filter_map(|&name| {
                procfs::live_children_named(pid, name)
                    .first()
                    .map(|&p| (name, p))
            })
            .collect();
        if found.len() == DAEMONS.len() {
            Ok(found)
        } else {
            Err(format!("{found:?}"))
        }
    })
    .unwrap_or_else(|e| panic!("not every daemon runs: {e}\n{}", log(dir.path())));
    let (master_uid, _, _) = credentials(pid);
    assert_eq!(master_uid, "0 0 0 0", "the master itself stays root");
    let id = UNPRIVILEGED.to_string();
    let all_four = [id.as_str(); 4].join(" ");
    for (name, daemon) in pids {
        let (uid, gid, groups) = credentials(daemon);
        if name == empath_tests::LOCAL {
            // The one daemon that keeps root, to deliver as each user.
            assert_eq!(uid, "0 0 0 0", "{name} ({daemon}) stays root");
            continue;
        }
        assert_eq!(
            uid, all_four,
            "{name} ({daemon}) real/effective/saved/fs uid"
        );
        assert_eq!(gid, all_four, "{name} ({daemon}) gids");
        assert_eq!(groups, "", "{name} ({daemon}) keeps supplementary groups");
    }

    // The queue belongs to the daemons; private/ is theirs alone; the
    // control socket is 0660.
    for entry in ["incoming", "active", "deferred", "private", "tmp"] {
        let metadata = std::fs::metadata(spool.join(entry)).expect("queue dir");
        assert_eq!(
            (metadata.uid(), metadata.gid()),
            (UNPRIVILEGED, UNPRIVILEGED),
            "{entry}"
        );
    }
    let private = std::fs::metadata(spool.join("private")).expect("private/");
    assert_eq!(private.permissions().mode() & 0o7777, 0o700);
    let control = std::fs::metadata(spool.join("public/control.sock")).expect("control socket");
    assert_eq!(control.permissions().mode() & 0o777, 0o660);
    assert_eq!(control.gid(), UNPRIVILEGED, "the control socket's group");

    // The unprivileged smtpd really serves port 25 inside the namespace.
    let probe = run_bounded(
        Command::new("nsenter")
            .arg(format!("--net=/proc/{pid}/ns/net"))
            .args(["python3", "-c", "import smtplib; s = smtplib.SMTP('127.0.0.1', 25, timeout=20); print(s.noop()[0]); s.quit()"]),
        TIMEOUT,
    );
    assert_eq!(
        probe.stdout.trim(),
        "250",
        "{}\n{}",
        probe.combined(),
        log(dir.path())
    );

    kill(Pid::from_raw(pid), Signal::SIGTERM).expect("SIGTERM the master");
    let status = poll(TIMEOUT, || {
        master
            .child
            .try_wait()
            .ok()
            .flatten()
            .ok_or_else(|| "running".to_owned())
    })
    .unwrap_or_else(|_| panic!("the master did not stop\n{}", log(dir.path())));
    assert!(status.success(), "{status}\n{}", log(dir.path()));
}

/// Runs the master as root with `sections` added and returns its output;
/// it must refuse to start.
fn refused_start(sections: &[(&str, &str)]) -> String {
    let dir = test_dir();
    let mut config = TestConfig::new();
    for (key, value) in sections {
        config = config.section(key, value);
    }
    let path = config.write_to(dir.path());
    let output = run_bounded(empath_command().arg("--config").arg(&path), TIMEOUT);
    assert_eq!(
        output.status.code(),
        Some(78),
        "expected EX_CONFIG\n{}",
        output.combined()
    );
    output.stderr
}

#[test]
fn root_daemons_are_refused_unless_allowed_and_a_missing_user_is_named() {
    if !running_as_root() {
        return;
    }
    let stderr = refused_start(&[("allow_root", "false"), ("user", "\"root\"")]);
    assert!(
        stderr.contains("refusing to run the daemons as root"),
        "{stderr}"
    );
    assert!(stderr.contains("allow_root"), "{stderr}");

    let stderr = refused_start(&[("allow_root", "false"), ("user", "\"no-such-user-empath\"")]);
    assert!(
        stderr.contains("user: the daemons' user \"no-such-user-empath\" does not exist"),
        "{stderr}"
    );

    let stderr = refused_start(&[
        ("user", "\"nobody\""),
        ("group", "\"no-such-group-empath\""),
    ]);
    assert!(
        stderr.contains("group: the daemons' group \"no-such-group-empath\" does not exist"),
        "{stderr}"
    );
}
