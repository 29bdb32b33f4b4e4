//! Human output of empathctl: aligned tables and `key: value` lines. The
//! queue listing keeps `id: ` and `domain: ` cells so that the runbooks'
//! grep pipelines work on it.

use std::fmt::Write;

use empath_common::control::{
    DnsCacheEntry, MessageView, QueueEntry, QueueStats, SystemStatus, TlsPolicyView,
};
use empath_common::time::{rfc5322_date, unix_now};

/// Pads every column to its widest cell; the last column is not padded.
pub fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|cell| cell.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (index, cell) in row.iter().enumerate() {
            if index + 1 == row.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<width$}  ", width = widths[index]);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `3d 4h 5m`, `2h 0m`, `45s`.
pub fn duration(secs: u64) -> String {
    let (days, hours, minutes) = (secs / 86_400, (secs / 3600) % 24, (secs / 60) % 60);
    if days > 0 {
        format!("{days}d {hours}h {minutes}m")
    } else if hours > 0 {
        format!("{hours}h {minutes}m")
    } else if minutes > 0 {
        format!("{minutes}m {}s", secs % 60)
    } else {
        format!("{secs}s")
    }
}

fn next_retry(entry: &QueueEntry, now: u64) -> String {
    match entry.next_retry {
        Some(at) if at > now => format!("in {}", duration(at - now)),
        Some(_) => "due".to_owned(),
        None => "-".to_owned(),
    }
}

pub fn queue_list(entries: &[QueueEntry]) -> String {
    if entries.is_empty() {
        return "Queue is empty\n".to_owned();
    }
    let now = unix_now();
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|e| {
            vec![
                format!("id: {}", e.id),
                format!("status: {}", e.status.name()),
                format!("domain: {},", e.domains.join(" ")),
                format!(
                    "from: {},",
                    if e.sender.is_empty() { "<>" } else { &e.sender }
                ),
                format!("rcpts: {},", e.recipients),
                format!("size: {},", e.size),
                format!("age: {},", duration(now.saturating_sub(e.arrival))),
                format!("attempts: {},", e.attempts),
                format!("next: {}", next_retry(e, now)),
            ]
        })
        .collect();
    let mut out = table(&rows);
    let _ = writeln!(out, "{} message(s)", entries.len());
    out
}

pub fn message(view: &MessageView) -> String {
    let entry = &view.entry;
    let now = unix_now();
    let mut out = String::new();
    let _ = writeln!(out, "=== Message {} ===\n", entry.id);
    let rows = vec![
        vec!["Status:".into(), entry.status.name().into()],
        vec![
            "From:".into(),
            if entry.sender.is_empty() {
                "<>".into()
            } else {
                entry.sender.clone()
            },
        ],
        vec!["Size:".into(), format!("{} bytes", entry.size)],
        vec!["Arrived:".into(), rfc5322_date(entry.arrival)],
        vec!["Attempts:".into(), entry.attempts.to_string()],
        vec!["Next retry:".into(), next_retry(entry, now)],
        vec!["Client:".into(), view.client.clone()],
        vec![
            "Last error:".into(),
            entry.last_error.clone().unwrap_or_else(|| "-".into()),
        ],
    ];
    out.push_str(&table(&rows));
    out.push_str("\nRecipients:\n");
    let recipients: Vec<Vec<String>> = view
        .recipients
        .iter()
        .map(|r| {
            vec![
                format!("  {}", r.address),
                r.status.clone(),
                r.remote.clone().unwrap_or_default(),
                r.reply.clone().unwrap_or_default(),
            ]
        })
        .collect();
    out.push_str(&table(&recipients));
    if !view.metadata.is_empty() {
        out.push_str("\nMetadata:\n");
        for (key, value) in &view.metadata {
            let _ = writeln!(out, "  {key} = {value}");
        }
    }
    let _ = write!(out, "\nHeaders:\n{}\n", view.headers.trim_end());
    let _ = write!(out, "\nBody preview:\n{}\n", view.body_preview.trim_end());
    out
}

pub fn stats(stats: &QueueStats) -> String {
    let mut out = String::from("=== Queue Statistics ===\n\n");
    let mut rows = vec![vec!["Total:".to_owned(), stats.total.to_string()]];
    rows.push(vec![
        "Oldest:".to_owned(),
        stats
            .oldest_age_secs
            .map(duration)
            .unwrap_or_else(|| "-".into()),
    ]);
    rows.push(vec![
        "Delivery:".to_owned(),
        if stats.frozen { "frozen" } else { "running" }.to_owned(),
    ]);
    out.push_str(&table(&rows));
    out.push_str("\nBy status:\n");
    let by_status: Vec<Vec<String>> = stats
        .by_status
        .iter()
        .map(|(s, n)| vec![format!("  {s}"), n.to_string()])
        .collect();
    out.push_str(&table(&by_status));
    if !stats.by_domain.is_empty() {
        out.push_str("\nBy domain:\n");
        let by_domain: Vec<Vec<String>> = stats
            .by_domain
            .iter()
            .map(|(d, n)| vec![format!("  {d}"), n.to_string()])
            .collect();
        out.push_str(&table(&by_domain));
    }
    out
}

pub fn status(status: &SystemStatus) -> String {
    let mut out = String::from("=== Empath MTA Status ===\n\n");
    let rows = vec![
        vec!["Version:".to_owned(), status.version.clone()],
        vec!["Uptime:".to_owned(), duration(status.uptime_secs)],
        vec![
            "Queue size:".to_owned(),
            format!("{} message(s)", status.queue_size),
        ],
        vec![
            "DNS cache entries:".to_owned(),
            status
                .dns_cache_entries
                .map_or_else(|| "unknown".into(), |n| n.to_string()),
        ],
        vec![
            "Delivery:".to_owned(),
            match status.frozen {
                Some(true) => "frozen",
                Some(false) => "running",
                None => "unknown",
            }
            .to_owned(),
        ],
    ];
    out.push_str(&table(&rows));
    out.push_str("\nProcesses:\n");
    let mut processes = vec![vec![
        "  NAME".to_owned(),
        "PID".to_owned(),
        "STATE".to_owned(),
        "RESTARTS".to_owned(),
    ]];
    for process in &status.processes {
        processes.push(vec![
            format!("  {}", process.name),
            process.pid.map_or_else(|| "-".into(), |p| p.to_string()),
            if process.running { "running" } else { "down" }.to_owned(),
            process.restarts.to_string(),
        ]);
    }
    out.push_str(&table(&processes));
    out
}

pub fn dns_cache(entries: &[DnsCacheEntry]) -> String {
    let mut out = format!("=== DNS Cache ({} entries) ===\n", entries.len());
    for entry in entries {
        let _ = write!(out, "\nDomain: {}\n", entry.domain);
        for (host, port, priority) in &entry.hosts {
            let _ = writeln!(
                out,
                "  \u{2192} {host}:{port} (priority: {priority}, TTL: {}s)",
                entry.ttl_remaining_secs
            );
        }
    }
    out
}

pub fn overrides(overrides: &[(String, String)]) -> String {
    if overrides.is_empty() {
        return "No MX overrides configured\n".to_owned();
    }
    let mut rows = vec![vec!["DOMAIN".to_owned(), "MX OVERRIDE".to_owned()]];
    rows.extend(overrides.iter().map(|(d, t)| vec![d.clone(), t.clone()]));
    table(&rows)
}

/// `tls policy DOMAIN`: the domain's settings, then each MX host's policy.
pub fn tls_policy(view: &TlsPolicyView) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "domain:           {}", view.domain);
    let _ = writeln!(out, "configured level: {}", view.configured_level);
    if let Some(target) = &view.mx_override {
        let _ = writeln!(out, "mx_override:      {target} (no DANE or MTA-STS)");
    }
    let _ = writeln!(
        out,
        "DNSSEC:           {}",
        if view.dnssec {
            "validating (DANE applies to secure MX hosts)"
        } else {
            "off (no DANE)"
        }
    );
    let _ = writeln!(out, "MTA-STS:          {}", view.mta_sts);
    if let Some(error) = &view.error {
        let _ = writeln!(out, "no MX hosts:      {error}");
    }
    for host in &view.hosts {
        let _ = writeln!(
            out,
            "  {}{}: {}\n      because: {}",
            host.host,
            if host.dnssec { " (DNSSEC)" } else { "" },
            host.policy,
            host.source
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns() {
        let rows = vec![
            vec!["a".into(), "bb".into(), "c".into()],
            vec!["aaa".into(), "b".into(), "cc".into()],
        ];
        assert_eq!(table(&rows), "a    bb  c\naaa  b   cc\n");
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(duration(45), "45s");
        assert_eq!(duration(125), "2m 5s");
        assert_eq!(duration(7260), "2h 1m");
        assert_eq!(duration(2 * 86_400 + 14 * 3600 + 32 * 60), "2d 14h 32m");
    }
}
