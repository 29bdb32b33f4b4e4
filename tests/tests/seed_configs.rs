//! Every config block of the seed documents, taken from the documents
//! themselves (```` ```ron ```` blocks and the config embedded in the
//! Kubernetes ConfigMap), must load: whole documents as they are, and
//! fragments in the section where the seeds put them. A block that does
//! not load must be listed in `DIFFERS` with the reason, which
//! empath.config.ron(5) documents.

use std::path::Path;

use empath_common::config::Config;
use empath_tests::seeds::{self, Block};

/// Blocks that are known not to load, by origin, and why. None today.
const DIFFERS: [(&str, &str); 0] = [];

/// Keys that the seeds write inside a listener, `delivery` or `metrics`
/// rather than at the top of the document.
const LISTENER_KEYS: [&str; 4] = ["socket", "context", "timeouts", "extensions"];
const DELIVERY_KEYS: [&str; 3] = ["smtp_timeouts", "rate_limit", "domains"];
const METRICS_KEYS: [&str; 2] = ["api_key", "endpoint"];

/// Lines such as `# In empath.config.ron` are the documents' shell-style
/// remarks, not RON.
fn without_remarks(text: &str) -> String {
    text.lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Splits a fragment into its top-level `key: value` items (a new item
/// starts where a line begins with `key:` outside any bracket, string or
/// comment).
fn items(text: &str) -> Vec<(String, String)> {
    let mut items: Vec<(String, String)> = Vec::new();
    let mut depth = 0i32;
    let mut in_string = false;
    for line in text.lines() {
        let trimmed = line.trim_start();
        let key: String = trimmed
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        let starts_item = depth == 0
            && !in_string
            && !key.is_empty()
            && trimmed[key.len()..].trim_start().starts_with(':');
        if starts_item {
            items.push((key, String::new()));
        }
        if let Some((_, item)) = items.last_mut() {
            item.push_str(line);
            item.push('\n');
        }
        let mut chars = line.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '\\' if in_string => {
                    chars.next();
                }
                '"' => in_string = !in_string,
                '/' if !in_string && chars.peek() == Some(&'/') => break,
                '(' | '[' | '{' if !in_string => depth += 1,
                ')' | ']' | '}' if !in_string => depth -= 1,
                _ => {}
            }
        }
    }
    items
        .into_iter()
        .map(|(key, item)| {
            let item = item.trim_end().trim_end_matches(',').to_owned();
            (key, item)
        })
        .collect()
}

/// A whole document, or the fragment placed in a minimal document.
fn document(block: &Block) -> Option<String> {
    let text = without_remarks(&block.text);
    if text.trim_start().starts_with("Empath") {
        return Some(text);
    }
    let items = items(&text);
    if items.is_empty() {
        return None;
    }
    let (mut listener, mut delivery, mut metrics, mut top) = (vec![], vec![], vec![], vec![]);
    for (key, item) in items {
        let place = if LISTENER_KEYS.contains(&key.as_str()) {
            &mut listener
        } else if DELIVERY_KEYS.contains(&key.as_str()) {
            &mut delivery
        } else if METRICS_KEYS.contains(&key.as_str()) {
            &mut metrics
        } else {
            &mut top
        };
        place.push(item);
    }
    let join = |items: &[String]| {
        items
            .iter()
            .map(|item| format!("{item},\n"))
            .collect::<String>()
    };
    let mut document = format!(
        "Empath(\nsmtp_controller: (listeners: [{{ socket: \"127.0.0.1:2525\",\n{}}}]),\nspool: (path: \"/tmp/seed-spool\"),\n",
        join(&listener)
    );
    if !delivery.is_empty() {
        document.push_str(&format!("delivery: (\n{}),\n", join(&delivery)));
    }
    if !metrics.is_empty() {
        document.push_str(&format!("metrics: (\n{}),\n", join(&metrics)));
    }
    document.push_str(&join(&top));
    document.push_str(")\n");
    Some(document)
}

#[test]
fn every_config_block_of_the_seeds_loads() {
    let mut blocks = seeds::fenced_blocks("ron");
    blocks.extend(seeds::yaml_embedded_configs());
    assert!(
        blocks.len() >= 20,
        "only {} config blocks found in the seeds",
        blocks.len()
    );
    let (mut loaded, mut no_config, mut failed) = (Vec::new(), Vec::new(), Vec::new());
    for block in &blocks {
        let Some(document) = document(block) else {
            no_config.push(block.origin());
            continue;
        };
        match Config::parse(Path::new(&block.origin()), &document) {
            Ok(config) => loaded.push((block.origin(), config)),
            Err(error) => failed.push(format!("{error}\n{document}")),
        }
    }
    let expected_failures: Vec<&str> = DIFFERS.iter().map(|(origin, _)| *origin).collect();
    let unexpected: Vec<&String> = failed
        .iter()
        .filter(|f| !expected_failures.iter().any(|origin| f.starts_with(origin)))
        .collect();
    assert!(
        unexpected.is_empty(),
        "seed config blocks that do not load:\n{}",
        unexpected
            .iter()
            .map(|f| f.as_str())
            .collect::<Vec<_>>()
            .join("\n---\n")
    );
    eprintln!(
        "{} seed config blocks load; without config: {no_config:?}",
        loaded.len()
    );
    // Only comments ("# Review retry backoff in config").
    assert!(no_config.len() <= 1, "{no_config:?}");

    // The runbook's rate limits, which leave out burst_size.
    let runbook: Vec<&Config> = loaded
        .iter()
        .filter(|(origin, _)| origin.starts_with("ALERT_RUNBOOKS.md"))
        .map(|(_, config)| config)
        .collect();
    assert_eq!(runbook.len(), 3, "the runbook's three config blocks");
    let slow = runbook
        .iter()
        .find_map(|c| c.delivery.rate_limit.domain_limits.get("slow-domain.com"))
        .expect("slow-domain.com is in the runbook");
    assert_eq!(slow.messages_per_second, 5.0);
    assert_eq!(
        slow.burst_size, 10,
        "twice the rate when burst_size is left out"
    );
    assert!(
        runbook
            .iter()
            .any(|c| c.delivery.max_concurrent_deliveries == 16)
    );

    // The Kubernetes ConfigMap's config.
    let kubernetes = loaded
        .iter()
        .find(|(_, c)| {
            c.control_socket.as_deref() == Some(Path::new("/var/run/empath.sock"))
                && c.metrics.endpoint.as_deref() == Some("http://otel-collector:4318/v1/metrics")
        })
        .expect("the ConfigMap's config loads");
    assert_eq!(
        kubernetes.1.smtp_controller.listeners[0].socket.0.port(),
        25
    );

    // `api_key: "$ENV:METRICS_API_KEY"`, the guide's "future enhancement",
    // loads (and is read from the environment when pushing).
    assert!(
        loaded
            .iter()
            .any(|(_, c)| c.metrics.api_key.as_deref() == Some("$ENV:METRICS_API_KEY"))
    );
}

#[test]
fn fragments_are_split_into_their_top_level_items() {
    let text = "extensions: [\n    { \"size\": 1 },  // a: b\n],\n\nsmtp_timeouts: (\n    data_secs: 300,\n)\nhealth: (\n  max_queue_size: 5,\n)";
    let keys: Vec<String> = items(text).into_iter().map(|(k, _)| k).collect();
    assert_eq!(keys, ["extensions", "smtp_timeouts", "health"]);
    assert_eq!(
        items("metrics: (\n  endpoint: \"http://x:1\",\n)")[0].1,
        "metrics: (\n  endpoint: \"http://x:1\",\n)"
    );
}
