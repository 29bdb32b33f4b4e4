//! SMTP AUTH (RFC 4954) with the PLAIN and LOGIN mechanisms: the users and
//! their bcrypt hashes, checking a password, decoding the SASL responses,
//! and the per-client limit on failures, counted by empath-anvil across
//! every smtpd process (and by this process too, for when the anvil does
//! not answer).

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, LazyLock, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use empath_common::config::{SmtpdAuth, is_bcrypt_hash};

use crate::anvil::AnvilClient;

/// A bcrypt hash checked for unknown users, so that the time taken does
/// not tell which users exist.
static DUMMY_HASH: LazyLock<String> =
    LazyLock::new(|| bcrypt::hash("no user has this password", 10).unwrap_or_default());

/// User name -> bcrypt hash.
pub type Users = HashMap<String, String>;

/// The users and the failure counts, shared by the sessions of a process.
#[derive(Debug)]
pub struct AuthState {
    config: SmtpdAuth,
    users: RwLock<Arc<Users>>,
    /// This process's own failure counts: the fallback.
    failures: Mutex<HashMap<IpAddr, VecDeque<Instant>>>,
    /// The counts of every smtpd process.
    anvil: Option<Arc<AnvilClient>>,
}

impl AuthState {
    /// `None` when no users are configured: AUTH is then not offered.
    /// Failures are counted in this process only.
    pub fn new(config: &SmtpdAuth) -> Option<Arc<Self>> {
        Self::with_anvil(config, None)
    }

    /// As [`AuthState::new`], with failures counted by empath-anvil.
    pub fn with_anvil(config: &SmtpdAuth, anvil: Option<Arc<AnvilClient>>) -> Option<Arc<Self>> {
        if !config.enabled() {
            return None;
        }
        let state = Arc::new(Self {
            config: config.clone(),
            users: RwLock::new(Arc::new(Users::new())),
            failures: Mutex::new(HashMap::new()),
            anvil,
        });
        state.reload();
        Some(state)
    }

    pub fn allow_insecure(&self) -> bool {
        self.config.allow_insecure
    }

    /// Loads the users again (from the config and `users_file`). When the
    /// file cannot be read, the users from before stay, and it is logged.
    pub fn reload(&self) {
        match load_users(&self.config) {
            Ok(users) => {
                tracing::info!(users = users.len(), "AUTH users loaded");
                *self.users.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(users);
            }
            Err(error) => {
                tracing::error!(%error, "cannot load the AUTH users; keeping the old ones")
            }
        }
    }

    /// Checks a user's password. bcrypt is slow on purpose, so it runs on
    /// the blocking pool, not on the session's thread.
    pub async fn verify(&self, user: &str, password: &str) -> bool {
        let users = Arc::clone(&self.users.read().unwrap_or_else(PoisonError::into_inner));
        let hash = users.get(user).cloned();
        let password = password.to_owned();
        tokio::task::spawn_blocking(move || {
            let known = hash.is_some();
            let hash = hash.unwrap_or_else(|| DUMMY_HASH.clone());
            bcrypt::verify(password, &hash).unwrap_or(false) && known
        })
        .await
        .unwrap_or(false)
    }

    /// True when `ip` failed too often recently and may not try now:
    /// empath-anvil's verdict for the whole system, or this process's
    /// own when the anvil does not answer.
    pub async fn blocked(&self, ip: Option<IpAddr>) -> bool {
        let Some(ip) = ip else { return false };
        if let Some(anvil) = &self.anvil
            && let Some(blocked) = anvil.auth_blocked(ip).await
        {
            return blocked;
        }
        self.blocked_here(ip)
    }

    fn blocked_here(&self, ip: IpAddr) -> bool {
        let mut failures = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
        let window = Duration::from_secs(self.config.failure_window_secs);
        let Some(times) = failures.get_mut(&ip) else {
            return false;
        };
        while times.front().is_some_and(|t| t.elapsed() > window) {
            times.pop_front();
        }
        if times.is_empty() {
            failures.remove(&ip);
            return false;
        }
        times.len() >= self.config.max_failures as usize
    }

    /// Counts a failed attempt from `ip`, here and in empath-anvil.
    pub async fn record_failure(&self, ip: Option<IpAddr>) {
        let Some(ip) = ip else { return };
        self.record_failure_here(ip);
        if let Some(anvil) = &self.anvil {
            anvil.auth_failed(ip).await;
        }
    }

    fn record_failure_here(&self, ip: IpAddr) {
        let mut failures = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
        // Bound the memory a scan from many addresses can take.
        if failures.len() >= 100_000 {
            failures.clear();
        }
        let times = failures.entry(ip).or_default();
        times.push_back(Instant::now());
        while times.len() > self.config.max_failures as usize {
            times.pop_front();
        }
    }
}

/// The users of the config, plus those of `users_file`.
pub fn load_users(config: &SmtpdAuth) -> Result<Users, String> {
    let mut users: Users = config.users.clone().into_iter().collect();
    if let Some(path) = &config.users_file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        users.extend(parse_users_file(path, &text)?);
    }
    Ok(users)
}

/// `user:bcrypt-hash` lines; blank lines and `#` comments are skipped.
pub fn parse_users_file(path: &Path, text: &str) -> Result<Users, String> {
    let mut users = Users::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |what: &str| format!("{}:{}: {what}", path.display(), index + 1);
        let (user, hash) = line
            .split_once(':')
            .ok_or_else(|| bad("expected user:bcrypt-hash"))?;
        if user.is_empty() || !is_bcrypt_hash(hash) {
            return Err(bad("expected user:bcrypt-hash ($2b$...)"));
        }
        users.insert(user.to_owned(), hash.to_owned());
    }
    Ok(users)
}

/// The SASL mechanisms we offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    Plain,
    Login,
}

impl Mechanism {
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "PLAIN" => Some(Self::Plain),
            "LOGIN" => Some(Self::Login),
            _ => None,
        }
    }
}

/// A base64 response as UTF-8 text, `None` when it is not.
pub fn decode_text(response: &str) -> Option<String> {
    let bytes = BASE64.decode(response.trim()).ok()?;
    String::from_utf8(bytes).ok()
}

pub fn encode(text: &str) -> String {
    BASE64.encode(text)
}

/// A PLAIN response (RFC 4616): `authzid NUL authcid NUL password`, as
/// (user, password). We let no one act as somebody else, so the authzid
/// must be empty or the user itself.
pub fn decode_plain(response: &str) -> Option<(String, String)> {
    let bytes = BASE64.decode(response.trim()).ok()?;
    let mut parts = bytes.split(|&b| b == 0);
    let (authzid, user, password) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || user.is_empty() || !(authzid.is_empty() || authzid == user) {
        return None;
    }
    let user = String::from_utf8(user.to_vec()).ok()?;
    let password = String::from_utf8(password.to_vec()).ok()?;
    Some((user, password))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_responses() {
        assert_eq!(
            decode_plain(&encode("\0bob\0secret")),
            Some(("bob".into(), "secret".into()))
        );
        assert_eq!(
            decode_plain(&encode("bob\0bob\0secret")),
            Some(("bob".into(), "secret".into()))
        );
        assert_eq!(decode_plain(&encode("alice\0bob\0secret")), None);
        assert_eq!(decode_plain(&encode("\0\0secret")), None);
        assert_eq!(decode_plain(&encode("bob secret")), None);
        assert_eq!(decode_plain("not base64!"), None);
    }

    #[test]
    fn users_file_lines() {
        let hash = "$2b$04$EGdrhbKUv8Oc9vGiXX0HQOxSg445d458Muh7DAHskb6QbtCvdxcie";
        let text = format!("# users\n\nbob:{hash}\n");
        let users = parse_users_file(Path::new("users"), &text);
        assert_eq!(
            users.map(|u| u.get("bob").cloned()),
            Ok(Some(hash.to_owned()))
        );
        let bad = parse_users_file(Path::new("users"), "bob:plain\n");
        assert_eq!(
            bad,
            Err("users:1: expected user:bcrypt-hash ($2b$...)".to_owned())
        );
    }

    #[tokio::test]
    async fn passwords_and_failures() {
        let hash = bcrypt::hash("secret", 4).unwrap_or_default();
        let config = SmtpdAuth {
            users: [("bob".to_owned(), hash)].into(),
            max_failures: 2,
            ..SmtpdAuth::default()
        };
        let Some(state) = AuthState::new(&config) else {
            panic!("users are configured");
        };
        assert!(state.verify("bob", "secret").await);
        assert!(!state.verify("bob", "wrong").await);
        assert!(!state.verify("eve", "secret").await);
        let ip = "192.0.2.1".parse().ok();
        assert!(!state.blocked(ip).await);
        state.record_failure(ip).await;
        assert!(!state.blocked(ip).await);
        state.record_failure(ip).await;
        assert!(state.blocked(ip).await);
        assert!(!state.blocked("192.0.2.2".parse().ok()).await);
    }
}
