//! Checks of incoming mail: SPF for the HELO name and for the MAIL FROM
//! domain (RFC 7208), DKIM (RFC 6376), optionally ARC (RFC 8617), and
//! DMARC (RFC 9989) with the policy of the `From:` domain, written as one
//! `Authentication-Results:` field (RFC 8601).

use std::net::IpAddr;
use std::time::Duration;

use empath_common::config::{AuthChecks, Dns};
use mail_auth::dmarc::Policy;
use mail_auth::dmarc::verify::DmarcParameters;
use mail_auth::hickory_resolver::config::{ResolveHosts, ResolverConfig, ResolverOpts};
use mail_auth::spf::verify::SpfParameters;
use mail_auth::{
    AuthenticatedMessage, AuthenticationResults, DkimResult, DmarcResult, MessageAuthenticator,
    SpfResult,
};

/// What the checks need to know about the message and its sender.
#[derive(Debug, Clone, Copy)]
pub struct CheckInput<'a> {
    pub client_ip: IpAddr,
    /// The EHLO/HELO name.
    pub helo: &'a str,
    /// The reverse path; empty for `<>`.
    pub mail_from: &'a str,
    /// The message as received.
    pub message: &'a [u8],
}

/// The outcome of the checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckOutcome {
    /// The value of the `Authentication-Results:` field, after the colon:
    /// `authserv-id; spf=... ; dkim=... ; dmarc=...`.
    pub header_value: String,
    /// The `From:` domain, when DMARC failed under a `p=reject` policy
    /// and the configuration says to refuse such mail.
    pub dmarc_reject: Option<String>,
    /// One line for the log: `spf=pass dkim=none dmarc=fail`.
    pub summary: String,
}

/// The checks, with their resolver.
pub struct InboundChecks {
    authenticator: MessageAuthenticator,
    authserv_id: String,
    hostname: String,
    arc: bool,
    reject_dmarc_failures: bool,
    timeout: Duration,
}

/// A resolver for the checks, from the `dns` section (the system's
/// nameservers when it names none). EDNS0 is on: DKIM keys make answers
/// longer than 512 bytes.
pub fn authenticator(dns: &Dns) -> Result<MessageAuthenticator, String> {
    let (config, mut options) = match dns.name_servers() {
        None => mail_auth::hickory_resolver::system_conf::read_system_conf()
            .map_err(|e| format!("cannot read the system resolver configuration: {e}"))?,
        Some(servers) => (
            ResolverConfig::from_name_servers(servers),
            ResolverOpts::default(),
        ),
    };
    options.timeout = Duration::from_secs(dns.timeout_secs);
    options.attempts = dns.attempts;
    options.edns0 = true;
    options.use_hosts_file = ResolveHosts::Never;
    options.cache_size = u64::try_from(dns.cache_size).unwrap_or(u64::MAX);
    MessageAuthenticator::new(config, options)
        .map_err(|e| format!("cannot build the DNS resolver: {e}"))
}

impl InboundChecks {
    /// `hostname` is ours (the SPF `r` macro, and the default authserv-id).
    pub fn new(config: &AuthChecks, dns: &Dns, hostname: &str) -> Result<Self, String> {
        Ok(Self {
            authenticator: authenticator(dns)?,
            authserv_id: config
                .authserv_id
                .clone()
                .unwrap_or_else(|| hostname.to_owned()),
            hostname: hostname.to_owned(),
            arc: config.arc,
            reject_dmarc_failures: config.reject_dmarc_failures,
            timeout: Duration::from_secs(config.timeout_secs),
        })
    }

    pub fn authserv_id(&self) -> &str {
        &self.authserv_id
    }

    /// Runs every check; DNS trouble shows as `temperror`, and checks that
    /// take longer than `timeout_secs` in all as `none` with a comment.
    pub async fn check(&self, input: CheckInput<'_>) -> CheckOutcome {
        match tokio::time::timeout(self.timeout, self.run(input)).await {
            Ok(outcome) => outcome,
            Err(_) => CheckOutcome {
                header_value: format!("{}; none (the checks timed out)", self.authserv_id),
                dmarc_reject: None,
                summary: "timed out".to_owned(),
            },
        }
    }

    async fn run(&self, input: CheckInput<'_>) -> CheckOutcome {
        let helo = input.helo.trim_start_matches('[').trim_end_matches(']');
        let helo_params = SpfParameters::verify_ehlo(input.client_ip, helo, &self.hostname);
        let mail_params =
            SpfParameters::verify_mail_from(input.client_ip, helo, &self.hostname, input.mail_from);
        let message = AuthenticatedMessage::parse(input.message);
        let (spf_helo, spf_mail) = tokio::join!(
            self.authenticator.verify_spf(helo_params),
            self.authenticator.verify_spf(mail_params),
        );
        let mut results = AuthenticationResults::new(&self.authserv_id)
            .with_spf_ehlo_result(&spf_helo, input.client_ip, helo)
            .with_spf_mailfrom_result(&spf_mail, input.client_ip, input.mail_from, helo);
        let mut summary = format!(
            "spf-helo={} spf-mailfrom={}",
            spf_helo.result(),
            spf_mail.result()
        );
        let Some(message) = message else {
            // Nothing that parses as a message: nothing more to check.
            return CheckOutcome {
                header_value: format!("{results};\r\n\tdkim=none;\r\n\tdmarc=none"),
                dmarc_reject: None,
                summary,
            };
        };
        let dkim = self.authenticator.verify_dkim(&message).await;
        let from = message.from.first().cloned().unwrap_or_default();
        results = results.with_dkim_results(&dkim, &from);
        let dkim_summary = dkim
            .iter()
            .map(|output| dkim_word(output.result()))
            .collect::<Vec<_>>()
            .join(",");
        summary.push_str(&format!(
            " dkim={}",
            if dkim.is_empty() {
                "none"
            } else {
                &dkim_summary
            }
        ));
        if self.arc {
            let arc = self.authenticator.verify_arc(&message).await;
            summary.push_str(&format!(" arc={}", dkim_word(arc.result())));
            results = results.with_arc_result(&arc, input.client_ip);
        }
        let mail_from_domain = input
            .mail_from
            .rsplit_once('@')
            .map_or(helo, |(_, domain)| domain);
        let dmarc = self
            .authenticator
            .verify_dmarc(DmarcParameters::new(
                &message,
                &dkim,
                mail_from_domain,
                &spf_mail,
            ))
            .await;
        let result = dmarc.result();
        let rejected = matches!(result, DmarcResult::Fail(_)) && dmarc.policy() == Policy::Reject;
        summary.push_str(&format!(" dmarc={result}"));
        let mut header_value = results.with_dmarc_result(&dmarc).to_string();
        if dkim.is_empty() {
            header_value.push_str(";\r\n\tdkim=none");
        }
        CheckOutcome {
            header_value,
            dmarc_reject: (rejected && self.reject_dmarc_failures)
                .then(|| dmarc.domain().to_owned()),
            summary,
        }
    }
}

fn dkim_word(result: &DkimResult) -> &'static str {
    match result {
        DkimResult::Pass => "pass",
        DkimResult::Neutral(_) => "neutral",
        DkimResult::Fail(_) => "fail",
        DkimResult::PermError(_) => "permerror",
        DkimResult::TempError(_) => "temperror",
        DkimResult::None => "none",
    }
}

/// For the log: SPF's own words.
pub fn spf_word(result: SpfResult) -> String {
    result.to_string()
}
