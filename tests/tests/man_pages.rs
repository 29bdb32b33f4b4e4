//! The manual: every command and daemon has its page, every page is
//! clean for `mandoc -Tlint`, and every config key has its entry in
//! empath.config.ron(5).
//!
//! Build the binaries first: `cargo build --workspace --bins`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use empath_tests::{DAEMONS, binary, run_bounded};

const TIMEOUT: Duration = Duration::from_secs(60);

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn pages() -> Vec<PathBuf> {
    let mut pages: Vec<PathBuf> = std::fs::read_dir(workspace().join("man"))
        .expect("man/")
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.is_file())
        .collect();
    pages.sort();
    pages
}

#[test]
fn every_page_is_clean_for_mandoc_lint() {
    let pages = pages();
    assert!(pages.len() >= 14, "{pages:?}");
    for page in pages {
        let output = run_bounded(Command::new("mandoc").arg("-Tlint").arg(&page), TIMEOUT);
        assert!(
            output.status.success()
                && output.stdout.trim().is_empty()
                && output.stderr.trim().is_empty(),
            "mandoc -Tlint {}:\n{}{}",
            page.display(),
            output.stdout,
            output.stderr
        );
    }
}

#[test]
fn every_command_and_daemon_has_a_page_and_a_version() {
    let commands = [
        ("empath", 8),
        ("empathctl", 8),
        ("newaliases", 8),
        ("sendmail", 1),
        ("mailq", 1),
    ];
    let daemons = DAEMONS.iter().map(|daemon| (*daemon, 8));
    for (name, section) in commands.into_iter().chain(daemons) {
        let page = workspace().join(format!("man/{name}.{section}"));
        assert!(page.is_file(), "{} is missing", page.display());
        let version = run_bounded(Command::new(binary(name)).arg("--version"), TIMEOUT);
        assert!(version.status.success(), "{name} --version: {version:?}");
        assert!(
            version.stdout.contains(name) && version.stdout.contains(env!("CARGO_PKG_VERSION")),
            "{name} --version: {version:?}"
        );
    }
}

/// The keys of the config: the fields of every struct in
/// common/src/config that serde reads (`#[derive(... Deserialize ...)]`),
/// under their serde names.
fn config_keys() -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    let dir = workspace().join("common/src/config");
    for entry in std::fs::read_dir(&dir).expect("common/src/config") {
        let path = entry.expect("entry").path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        // mod.rs holds the loaded Config and ConfigError, not keys.
        if name == "mod.rs" || name == "paths.rs" {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("source");
        let (mut derives, mut inside, mut rename) = (false, false, None);
        for line in text.lines() {
            if line.starts_with("#[derive(") {
                derives = line.contains("Deserialize");
            } else if line.starts_with("pub struct") && line.trim_end().ends_with('{') {
                inside = derives;
                derives = false;
            } else if line == "}" {
                inside = false;
            } else if inside {
                let trimmed = line.trim();
                if let Some(renamed) = trimmed
                    .strip_prefix("#[serde(rename = \"")
                    .and_then(|r| r.split('"').next())
                {
                    rename = Some(renamed.to_owned());
                } else if let Some(field) = trimmed
                    .strip_prefix("pub ")
                    .and_then(|rest| rest.split(':').next())
                    .filter(|f| {
                        f.chars()
                            .all(|c| c.is_ascii_lowercase() || c == '_' || c.is_ascii_digit())
                    })
                {
                    keys.insert(rename.take().unwrap_or_else(|| field.to_owned()));
                }
            }
        }
    }
    keys
}

/// Whether the page sets `key` in bold somewhere: a `.B`/`.BR`/`.BI`/...
/// line that names it as a whole word, or `\fBkey\f`.
fn documented(page: &str, key: &str) -> bool {
    let whole_word = |line: &str| {
        line.match_indices(key).any(|(at, _)| {
            let before = line[..at].chars().next_back();
            let after = line[at + key.len()..].chars().next();
            let word = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
            !word(before) && !word(after)
        })
    };
    page.lines().any(|line| {
        let bold = [".B ", ".BR ", ".RB ", ".BI ", ".IB "]
            .iter()
            .any(|macro_| line.starts_with(macro_));
        (bold && whole_word(line)) || line.contains(&format!("\\fB{key}\\f"))
    })
}

#[test]
fn every_config_key_has_an_entry_in_the_config_page() {
    let keys = config_keys();
    // The parser found the sections and their keys.
    for known in [
        "spool",
        "smtp_controller",
        "control_group",
        "max_attempts",
        "type",
        "syslog_socket",
    ] {
        assert!(keys.contains(known), "{known} not found among {keys:?}");
    }
    let page = std::fs::read_to_string(workspace().join("man/empath.config.ron.5"))
        .expect("empath.config.ron.5");
    let missing: Vec<&String> = keys.iter().filter(|key| !documented(&page, key)).collect();
    assert!(
        missing.is_empty(),
        "config keys without an entry in man/empath.config.ron.5: {missing:?}"
    );
}
