//! What cleanup does to a message before sealing it, besides the trace
//! headers: the milters of local submission (`non_smtpd_milters`; smtpd
//! runs its own and sends their changes), and DKIM signing of mail from
//! our side, last, so that the signature covers the message as queued.

use std::sync::Arc;

use empath_auth::sign::{DkimSigning, Signed};
use empath_common::config::{Config, Extension, Network};
use empath_common::edits::Edit;
use empath_common::protocol::Submission;
use empath_common::queue::QueueId;
use empath_common::smtp::Reply;
use empath_milter::{Client, Macros, MilterSettings, Milters, Verdict};

pub struct MailFilters {
    signing: Option<DkimSigning>,
    mynetworks: Vec<Network>,
    local_milters: Vec<Arc<MilterSettings>>,
    /// smtpd runs milters or checks, and may send changes.
    smtpd_edits: bool,
    hostname: String,
    /// The largest message a listener accepts: a held message may not
    /// grow beyond it in memory.
    size_limit: u64,
}

/// What the milters of a local submission decided.
#[derive(Debug)]
pub enum LocalVerdict {
    Continue(Vec<Edit>),
    Reject(Reply),
    Discard,
}

impl MailFilters {
    /// Loads the signing keys; a key that does not load is a config error.
    pub fn load(config: &Config) -> Result<Self, String> {
        let signing = if config.dkim.keys.is_empty() {
            None
        } else {
            Some(DkimSigning::load(&config.dkim).map_err(|e| format!("dkim: {e}"))?)
        };
        Ok(Self {
            signing,
            mynetworks: config.smtpd.mynetworks.clone(),
            local_milters: config
                .non_smtpd_milters
                .iter()
                .map(|m| Arc::new(MilterSettings::from(&m.0)))
                .collect(),
            smtpd_edits: !config.smtpd_milters.is_empty() || config.auth.enabled,
            hostname: config.hostname(),
            size_limit: config
                .smtp_controller
                .listeners
                .iter()
                .flat_map(|listener| listener.extensions.iter())
                .filter_map(|extension| match extension {
                    Extension::Size(size) => Some(*size),
                    Extension::StartTls { .. } => None,
                })
                .fold(config.smtpd.max_message_size, u64::max),
        })
    }

    /// Whether a message must be held whole until its end, because it may
    /// still change (signed, or edited by milters or checks), and then how
    /// large it may be.
    pub fn hold_limit(&self, local: bool) -> Option<u64> {
        let hold = self.signing.is_some()
            || if local {
                !self.local_milters.is_empty()
            } else {
                self.smtpd_edits
            };
        hold.then_some(self.size_limit)
    }

    pub fn has_local_milters(&self) -> bool {
        !self.local_milters.is_empty()
    }

    /// `DKIM-Signature:` fields for a message from our side whose `From:`
    /// domain has a key; nothing otherwise. A failure to sign is logged and
    /// the message goes unsigned: it is better delivered unsigned than not
    /// at all.
    pub fn signatures(&self, message: &[u8], submission: &Submission) -> Vec<u8> {
        let Some(signing) = &self.signing else {
            return Vec::new();
        };
        if !empath_auth::is_internal(&submission.client, &self.mynetworks) {
            return Vec::new();
        }
        match signing.sign(message) {
            Ok(Signed::Signatures(fields)) => fields,
            Ok(Signed::NoKey) => Vec::new(),
            Err(error) => {
                tracing::error!(%error, "DKIM signing failed; the message goes unsigned");
                Vec::new()
            }
        }
    }

    /// Runs the local-submission milters over a whole message, as Postfix
    /// does for `sendmail` mail: connect from localhost, HELO localhost,
    /// MAIL, each RCPT, DATA, then the content.
    pub async fn run_local_milters(
        &self,
        id: QueueId,
        submission: &Submission,
        content: &[u8],
    ) -> LocalVerdict {
        let mut milters = Milters::new(&self.local_milters);
        let mut macros = Macros::new();
        macros.set("j", self.hostname.clone());
        macros.set("{daemon_name}", self.hostname.clone());
        macros.set("v", format!("Empath {}", env!("CARGO_PKG_VERSION")));
        macros.set("_", "localhost [127.0.0.1]");
        macros.set("{client_addr}", "127.0.0.1");
        macros.set("{client_name}", "localhost");
        macros.set("i", id.to_string());
        let verdict = self
            .local_events(&mut milters, &mut macros, submission, content)
            .await;
        milters.quit().await;
        verdict
    }

    async fn local_events(
        &self,
        milters: &mut Milters,
        macros: &mut Macros,
        submission: &Submission,
        content: &[u8],
    ) -> LocalVerdict {
        let refused = |verdict: Verdict| match verdict {
            Verdict::Continue => None,
            Verdict::Reject(reply) | Verdict::Disconnect(reply) => {
                Some(LocalVerdict::Reject(reply))
            }
            Verdict::Discard => Some(LocalVerdict::Discard),
        };
        if let Some(verdict) = refused(milters.connect(&Client::local(), macros).await) {
            return verdict;
        }
        if let Some(verdict) = refused(milters.helo("localhost", macros).await) {
            return verdict;
        }
        macros.set("{mail_addr}", submission.sender.clone());
        macros.set("{mail_mailer}", "local");
        let mail = vec![format!("<{}>", submission.sender)];
        if let Some(verdict) = refused(milters.mail(&mail, macros).await) {
            return verdict;
        }
        for recipient in &submission.recipients {
            macros.set("{rcpt_addr}", recipient.address.clone());
            macros.set("{rcpt_mailer}", "smtp");
            let rcpt = vec![format!("<{}>", recipient.address)];
            match milters.rcpt(&rcpt, macros).await {
                Verdict::Continue => {}
                // There is no SMTP client to refuse one recipient to:
                // the whole message waits, as Postfix does.
                Verdict::Reject(reply) | Verdict::Disconnect(reply) => {
                    tracing::warn!(recipient = %recipient.address, %reply, "a milter refused a recipient of local mail; the message is deferred");
                    return LocalVerdict::Reject(Reply::new(
                        451,
                        "4.3.5",
                        "Server configuration error",
                    ));
                }
                Verdict::Discard => return LocalVerdict::Discard,
            }
        }
        macros.remove("{rcpt_addr}");
        if let Some(verdict) = refused(milters.data(macros).await) {
            return verdict;
        }
        match milters.message(content, macros).await {
            (Verdict::Continue, edits) => LocalVerdict::Continue(edits),
            (verdict, _) => refused(verdict).unwrap_or(LocalVerdict::Continue(Vec::new())),
        }
    }
}
