//! The root master parses nothing that a network client or an
//! unprivileged daemon sends. After SMTP sessions, HTTP scrapes and
//! empathctl commands, the only sockets it holds are the listeners it
//! bound for its children (SMTP for smtpd, the health listener for
//! empath-anvil, never accepted on) and its control socket, plus the
//! wake-up socket pairs of its own async runtime, which connect it to
//! itself. No anvil socket, no accepted HTTP or SMTP connection, no
//! connection to a daemon. Checked from /proc/<pid>/fd, /proc/net/* and
//! `ss -xa` (for the peers of Unix sockets).
//!
//! Build the binaries first: `cargo build --workspace --bins`.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use empath_tests::master::http_get;
use empath_tests::sockets::{self, TCP_LISTEN};
use empath_tests::{ANVIL, Empath, SMTPD, Sink, SmtpSend, TestConfig, mail};

const SENDER: &str = "sender@client.test";
const RECIPIENT: &str = "user@sink.test";

#[test]
fn the_master_holds_only_the_listeners_it_binds_and_its_control_socket() {
    let sink = Sink::start();
    let mut config = TestConfig::new()
        .with_health()
        .mx_override("sink.test", sink.addr())
        .listeners(["127.0.0.1:0", "[::1]:0"])
        .section("smtpd", "(processes: 2)");
    let as_root = nix::unistd::geteuid().is_root();
    if as_root {
        // The real set-up: a root master, its daemons as `nobody`.
        config = config
            .section("allow_root", "false")
            .section("user", "\"nobody\"")
            .section("group", "\"nogroup\"");
    }
    let empath = Empath::start(config);
    let health = empath.health_addr();
    // empath-anvil, unprivileged, reads what the root master publishes.
    empath.wait_until(
        "/health/ready to answer 200",
        Duration::from_secs(30),
        || match empath.readiness() {
            (200, _) => Ok(()),
            (status, json) => Err(format!("{status}: {json}")),
        },
    );

    // Traffic of every kind the system handles: SMTP on both listeners,
    // HTTP, and control commands (which the master routes to qmgr).
    for (index, addr) in empath.smtp_addrs().iter().enumerate() {
        let messages = mail::generate(3, SENDER, &[RECIPIENT]);
        let outbox =
            mail::write_eml_files(&empath.dir().join(format!("outbox-{index}")), &messages);
        SmtpSend::new(*addr, SENDER, &[RECIPIENT], &outbox)
            .run()
            .assert_all_accepted(3, || empath.log_tail());
    }
    if let Err(got) = sink.wait_for_messages(6, Duration::from_secs(60)) {
        panic!("the sink got {got} of 6\n{}", empath.log_tail());
    }
    for path in ["/metrics", "/health/ready", "/health/live", "/nothing"] {
        let (status, body) = http_get(health, path);
        assert!(status < 500, "{path}: {status} {body}");
    }
    empath.empathctl_ok(&["system", "status"]);
    empath.empathctl_ok(&["queue", "stats"]);
    // Some connections still open while we look: the master holds none.
    let idle_smtp = std::net::TcpStream::connect(empath.smtp_addr()).expect("connect");
    let idle_http = std::net::TcpStream::connect(health).expect("connect");

    let master = empath.master_pid();
    let held = sockets::socket_inodes(master);
    let inet = sockets::inet_sockets();
    let unix = sockets::unix_sockets();
    let peers = sockets::unix_peers();
    let control = empath.control_socket().to_string_lossy().into_owned();
    let mut expected_listeners: BTreeSet<SocketAddr> =
        empath.smtp_addrs().iter().copied().collect();
    expected_listeners.insert(health);

    let mut listeners = BTreeSet::new();
    let mut control_held = false;
    let mut self_pairs = 0;
    for inode in &held {
        if let Some(socket) = inet.iter().find(|s| s.inode == *inode) {
            assert!(
                socket.table.starts_with("tcp") && socket.state == TCP_LISTEN,
                "the master holds an inet socket that is not a listener: {socket:?}"
            );
            assert!(
                expected_listeners.contains(&socket.local),
                "the master holds a listener it was not configured to bind: {socket:?} (expected {expected_listeners:?})"
            );
            listeners.insert(socket.local);
        } else if let Some(socket) = unix.iter().find(|s| s.inode == *inode) {
            if socket.listening {
                assert_eq!(
                    socket.path.as_deref(),
                    Some(control.as_str()),
                    "the master listens on a Unix socket other than its control socket"
                );
                control_held = true;
            } else {
                let peer = peers.get(inode);
                assert!(
                    peer.is_some_and(|peer| held.contains(peer)),
                    "the master holds a Unix connection to another process: {socket:?}, peer {peer:?}"
                );
                self_pairs += 1;
            }
        } else {
            panic!("the master holds socket {inode}, neither TCP, UDP nor Unix (netlink?)");
        }
    }
    assert_eq!(listeners, expected_listeners, "listeners the master holds");
    assert!(control_held, "the master does not hold its control socket");
    println!(
        "master {master}: {} listeners, the control socket, {self_pairs} runtime wake-up sockets",
        listeners.len()
    );

    // The accounting socket and the HTTP connections belong to the
    // unprivileged empath-anvil; SMTP sessions to smtpd.
    let anvil = empath.wait_child(ANVIL, Duration::from_secs(10));
    if as_root {
        let status = std::fs::read_to_string(format!("/proc/{anvil}/status")).expect("status");
        let uid = status.lines().find(|l| l.starts_with("Uid:")).unwrap_or("");
        assert_eq!(
            uid.split_whitespace().collect::<Vec<_>>(),
            ["Uid:", "65534", "65534", "65534", "65534"],
            "empath-anvil runs as nobody"
        );
    }
    let anvil_socket = empath.spool().join("private/anvil.sock");
    let anvil_listener = unix
        .iter()
        .find(|s| s.listening && s.path.as_deref() == anvil_socket.to_str())
        .expect("private/anvil.sock is listening");
    assert_eq!(
        sockets::holder(anvil_listener.inode, &[master, anvil]),
        Some(anvil)
    );
    let smtpds = empath.child_pids(SMTPD);
    for (client, servers) in [(&idle_smtp, smtpds.clone()), (&idle_http, vec![anvil])] {
        let local = client.local_addr().expect("local address");
        let served = empath.wait_until(
            "the server side of a connection",
            Duration::from_secs(10),
            || {
                sockets::inet_sockets()
                    .into_iter()
                    .find(|s| s.remote == local && s.state != TCP_LISTEN)
                    .ok_or_else(|| format!("no server socket for {local}"))
            },
        );
        let mut candidates = servers.clone();
        candidates.push(master);
        assert!(
            sockets::holder(served.inode, &candidates).is_some_and(|pid| servers.contains(&pid)),
            "the connection from {local} is not held by {servers:?}"
        );
    }
}
