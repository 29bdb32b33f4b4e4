//! The master's check of the DKIM signing keys: each key file must hold a
//! key cleanup can sign with, so that a broken key is reported at start-up
//! and by `empath check-config`, with the config key that names it, not
//! found later as a crash loop of cleanup.

use empath_auth::keys::SharedKey;
use empath_common::config::Config;

pub fn check(config: &Config) -> Result<(), String> {
    for (index, key) in config.dkim.keys.iter().enumerate() {
        SharedKey::load(&key.private_key).map_err(|error| {
            format!(
                "{}: dkim.keys[{index}].private_key ({} {}): {error}",
                config.path.display(),
                key.domain,
                key.selector
            )
        })?;
    }
    Ok(())
}
