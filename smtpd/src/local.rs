//! This host's own recipients: unqualified addresses from trusted clients
//! get the origin domain (`MAIL FROM:<root>` from mynetworks), and a
//! recipient at a local domain that is neither a user nor an alias is
//! refused at RCPT time with 550 5.1.1, so nothing is queued for it and no
//! bounce goes to a forged sender.

use std::sync::Arc;

use empath_common::config::LocalDomains;
use empath_common::local_recipients::LocalRecipients;
use empath_common::smtp::Reply;

#[derive(Clone, Default)]
pub struct LocalPolicy {
    recipients: Option<Arc<LocalRecipients>>,
}

impl std::fmt::Debug for LocalPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalPolicy")
            .field("domains", &self.domains().map(LocalDomains::domains))
            .finish()
    }
}

impl LocalPolicy {
    pub fn new(recipients: LocalRecipients) -> Self {
        Self {
            recipients: Some(Arc::new(recipients)),
        }
    }

    fn domains(&self) -> Option<&LocalDomains> {
        self.recipients.as_deref().map(LocalRecipients::domains)
    }

    /// `root` as `root@ORIGIN`; `None` when there is no origin to add.
    pub fn qualify(&self, address: &str) -> Option<String> {
        self.domains().map(|domains| domains.qualify(address))
    }

    /// Whether RCPT of `address` needs [`LocalPolicy::verify`].
    pub fn is_local(&self, address: &str) -> bool {
        self.domains()
            .is_some_and(|domains| domains.is_local_address(address))
    }

    /// The refusal for a local recipient nobody receives mail for, or
    /// `None` to accept it. Blocking (the alias index, the user database).
    pub fn verify(&self, address: &str) -> Option<Reply> {
        let recipients = self.recipients.as_deref()?;
        if !recipients.domains().is_local_address(address) {
            return None;
        }
        match recipients.check(address) {
            Ok(Some(_)) => None,
            Ok(None) => Some(Reply::new(
                550,
                "5.1.1",
                format!(
                    "<{address}>: Recipient address rejected: User unknown in local recipient table"
                ),
            )),
            Err(error) => {
                tracing::warn!(recipient = %address, %error, "cannot verify a local recipient");
                Some(Reply::new(
                    451,
                    "4.3.0",
                    format!("<{address}>: Recipient address rejected: Temporary lookup failure"),
                ))
            }
        }
    }
}
