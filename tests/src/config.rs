//! The config file the harness writes (RON, as `empath.config.ron`).
//!
//! Defaults are tuned for tests: ephemeral loopback listener, retries
//! after about a second, no rate limiting to speak of, no health listener
//! (it would need a fixed port).

use std::collections::BTreeMap;
use std::fmt::{Display, Write as _};
use std::path::{Path, PathBuf};

/// File name of the config inside a test directory.
pub const CONFIG_FILE: &str = "empath.config.ron";

/// A builder for the config of one test. Values are RON text, written as is.
#[derive(Debug, Clone)]
pub struct TestConfig {
    hostname: String,
    listeners: Vec<String>,
    /// More RON fields of every listener (`timeouts`, `extensions`, ...).
    listener_fields: Vec<String>,
    /// `delivery` keys other than `domains`.
    delivery: BTreeMap<String, String>,
    /// Domain -> (key -> RON value).
    domains: BTreeMap<String, BTreeMap<String, String>>,
    /// `local_delivery` keys. By default no alias files and a mail spool
    /// in the test dir (`mail/`, created mode 0755), so no test touches
    /// /etc/aliases or /var/mail.
    local_delivery: BTreeMap<String, String>,
    /// Top-level sections other than the ones above, e.g. `health`.
    sections: BTreeMap<String, String>,
    /// Extra top-level RON fields, written verbatim.
    raw: Vec<String>,
    /// Arguments for the master after `--config FILE`.
    master_args: Vec<String>,
    /// How the master is told where the config is.
    config_arg: ConfigArg,
    /// Environment variables for the master (and so its daemons).
    env: Vec<(String, String)>,
}

/// The forms of naming the config on the master's command line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ConfigArg {
    /// `empath --config FILE`.
    #[default]
    Flag,
    /// `empath FILE`, as the seeds' systemd unit starts it.
    Positional,
    /// `empath` alone, in the directory that holds `empath.config.ron`,
    /// as the seeds' containers start it.
    WorkingDirectory,
}

impl Default for TestConfig {
    fn default() -> Self {
        let delivery = [
            ("scan_interval_secs", "1"),
            ("process_interval_secs", "1"),
            ("base_retry_delay_secs", "1"),
            ("max_retry_delay_secs", "2"),
            ("retry_jitter_factor", "0.0"),
            // The default (10/s) would make 200 messages take 20 s.
            (
                "rate_limit",
                "(messages_per_second: 10000.0, burst_size: 10000)",
            ),
        ];
        Self {
            hostname: "mx.empath.test".to_owned(),
            listeners: vec!["127.0.0.1:0".to_owned()],
            listener_fields: Vec::new(),
            delivery: to_map(&delivery),
            domains: BTreeMap::new(),
            local_delivery: to_map(&[("alias_maps", "[]")]),
            // The tests run as root in CI: let the daemons stay root
            // unless a test names a `user` (see tests/tests/master_*.rs).
            // A short graceful stop keeps within the harness's 10 s.
            sections: to_map(&[
                ("health", "(enabled: false)"),
                ("allow_root", "true"),
                ("shutdown_timeout_secs", "5"),
            ]),
            raw: Vec::new(),
            master_args: Vec::new(),
            config_arg: ConfigArg::Flag,
            env: Vec::new(),
        }
    }
}

fn to_map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
        .collect()
}

/// A RON string literal.
fn ron_string(text: &str) -> String {
    format!("{text:?}")
}

impl TestConfig {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn hostname(mut self, hostname: &str) -> Self {
        self.hostname = hostname.to_owned();
        self
    }

    /// Replaces the listeners with these `IP:PORT` sockets.
    pub fn listeners<S: Display>(mut self, sockets: impl IntoIterator<Item = S>) -> Self {
        self.listeners = sockets.into_iter().map(|s| s.to_string()).collect();
        self
    }

    /// Delivers mail for `domain` to `host:port` instead of its MX.
    pub fn mx_override(self, domain: &str, destination: impl Display) -> Self {
        self.domain_key(domain, "mx_override", &ron_string(&destination.to_string()))
    }

    /// Sets a key of `delivery.domains."domain"` to a RON value.
    pub fn domain_key(mut self, domain: &str, key: &str, ron_value: &str) -> Self {
        self.domains
            .entry(domain.to_owned())
            .or_default()
            .insert(key.to_owned(), ron_value.to_owned());
        self
    }

    /// Sets a `delivery` key to a RON value, e.g. `("max_attempts", "3")`.
    pub fn delivery(mut self, key: &str, ron_value: &str) -> Self {
        self.delivery.insert(key.to_owned(), ron_value.to_owned());
        self
    }

    /// Sets a `local_delivery` key to a RON value, e.g.
    /// `("home_mailbox", "\"Maildir/\"")`.
    pub fn local_delivery(mut self, key: &str, ron_value: &str) -> Self {
        self.local_delivery
            .insert(key.to_owned(), ron_value.to_owned());
        self
    }

    /// Uses the alias file `aliases` in the test dir (see
    /// `Empath::set_aliases`).
    pub fn with_aliases(self) -> Self {
        self.local_delivery("alias_maps", "[\"__TEST_DIR__/aliases\"]")
    }

    /// Sets a top-level section to a RON value, e.g. `("dsn", "(enabled: false)")`.
    pub fn section(mut self, key: &str, ron_value: &str) -> Self {
        self.sections.insert(key.to_owned(), ron_value.to_owned());
        self
    }

    /// Appends top-level RON fields verbatim (without a trailing comma is fine).
    pub fn raw(mut self, ron_fields: &str) -> Self {
        self.raw.push(ron_fields.to_owned());
        self
    }

    /// Adds RON fields to every listener, e.g.
    /// `("timeouts", "(data_block_secs: 2)")`.
    pub fn listener_field(mut self, key: &str, ron_value: &str) -> Self {
        self.listener_fields.push(format!("{key}: {ron_value}"));
        self
    }

    /// Starts the master with `--log-format FORMAT` (human, json, syslog).
    pub fn log_format(mut self, format: &str) -> Self {
        self.master_args = vec!["--log-format".to_owned(), format.to_owned()];
        self
    }

    pub fn master_args(&self) -> &[String] {
        &self.master_args
    }

    /// Names the config on the master's command line in this form.
    pub fn config_arg(mut self, form: ConfigArg) -> Self {
        self.config_arg = form;
        self
    }

    pub fn config_form(&self) -> ConfigArg {
        self.config_arg
    }

    /// Starts the master (and so its daemons) with the environment
    /// variable `name` set, e.g. `("LOG_LEVEL", "warn")`.
    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.env.push((name.to_owned(), value.to_owned()));
        self
    }

    pub fn environment(&self) -> &[(String, String)] {
        &self.env
    }

    pub fn listener_count(&self) -> usize {
        self.listeners.len()
    }

    /// The config text, with the spool at `spool`.
    pub fn render(&self, spool: &Path) -> String {
        let mut out = String::from("Empath(\n");
        let _ = writeln!(out, "    hostname: {},", ron_string(&self.hostname));
        let listeners: Vec<String> = self
            .listeners
            .iter()
            .map(|socket| {
                let mut fields = vec![format!("socket: {}", ron_string(socket))];
                fields.extend(self.listener_fields.iter().cloned());
                format!("{{ {} }}", fields.join(", "))
            })
            .collect();
        let _ = writeln!(
            out,
            "    smtp_controller: (listeners: [{}]),",
            listeners.join(", ")
        );
        let _ = writeln!(
            out,
            "    spool: (path: {}),",
            ron_string(&spool.to_string_lossy())
        );
        out.push_str("    delivery: (\n");
        for (key, value) in &self.delivery {
            let _ = writeln!(out, "        {key}: {value},");
        }
        out.push_str("        domains: {\n");
        for (domain, keys) in &self.domains {
            let fields: Vec<String> = keys.iter().map(|(k, v)| format!("{k}: {v}")).collect();
            let _ = writeln!(
                out,
                "            {}: ({}),",
                ron_string(domain),
                fields.join(", ")
            );
        }
        out.push_str("        },\n    ),\n");
        let test_dir = spool
            .parent()
            .unwrap_or(spool)
            .to_string_lossy()
            .into_owned();
        let mut local = self.local_delivery.clone();
        local
            .entry("mail_spool_directory".to_owned())
            .or_insert_with(|| ron_string(&format!("{test_dir}/mail")));
        out.push_str("    local_delivery: (\n");
        for (key, value) in &local {
            let _ = writeln!(
                out,
                "        {key}: {},",
                value.replace("__TEST_DIR__", &test_dir)
            );
        }
        out.push_str("    ),\n");
        for (key, value) in &self.sections {
            let _ = writeln!(out, "    {key}: {value},");
        }
        for raw in &self.raw {
            let raw = raw.trim().trim_end_matches(',');
            let _ = writeln!(out, "    {raw},");
        }
        out.push_str(")\n");
        out
    }

    /// Writes the config into `dir` with the spool at `dir/spool`, and
    /// returns the config path.
    pub fn write_to(&self, dir: &Path) -> PathBuf {
        let path = dir.join(CONFIG_FILE);
        self.write(&path, &dir.join("spool"));
        path
    }

    /// Writes the config to `path` with the spool at `spool`.
    pub fn write(&self, path: &Path, spool: &Path) {
        std::fs::write(path, self.render(spool))
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        if let Some(dir) = spool.parent() {
            let mail = dir.join("mail");
            let _ = std::fs::create_dir_all(&mail);
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&mail, std::fs::Permissions::from_mode(0o755));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use empath_common::config::Config;

    /// The harness's configs must be valid for the real parser, or every
    /// system test would fail for the wrong reason.
    #[test]
    fn rendered_config_is_accepted_by_the_real_parser() {
        let config = TestConfig::new()
            .mx_override("sink.test", "127.0.0.1:45678")
            .delivery("max_attempts", "3")
            .section("dsn", "(enabled: false)")
            .raw("control_socket: None,");
        let text = config.render(Path::new("/tmp/empath-test/spool"));
        let parsed =
            Config::parse(Path::new(CONFIG_FILE), &text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(parsed.delivery.scan_interval_secs, 1);
        assert_eq!(parsed.delivery.max_attempts, 3);
        assert_eq!(parsed.delivery.retry_jitter_factor, 0.0);
        let sink = parsed.delivery.domains["sink.test"]
            .mx_override
            .as_ref()
            .expect("mx_override");
        assert_eq!(sink.to_string(), "127.0.0.1:45678");
        assert!(!parsed.health.enabled);
        assert_eq!(parsed.smtp_controller.listeners.len(), 1);
        assert_eq!(parsed.spool.path, Path::new("/tmp/empath-test/spool"));
    }

    #[test]
    fn several_listeners_are_rendered_in_order() {
        let config = TestConfig::new().listeners(["127.0.0.1:0", "[::1]:0"]);
        let text = config.render(Path::new("/spool"));
        let parsed =
            Config::parse(Path::new(CONFIG_FILE), &text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let sockets: Vec<String> = parsed
            .smtp_controller
            .listeners
            .iter()
            .map(|l| l.socket.0.to_string())
            .collect();
        assert_eq!(sockets, ["127.0.0.1:0", "[::1]:0"]);
    }
}
