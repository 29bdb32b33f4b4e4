//! `empathctl dkim keygen`: a new DKIM key pair, the private key written
//! to a file only its owner can read, and what to publish and configure.
//! No daemon is involved.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use empath_auth::keys::{self, Algorithm};

/// What `keygen` made.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Generated {
    pub domain: String,
    pub selector: String,
    pub algorithm: &'static str,
    pub private_key: PathBuf,
    /// `SELECTOR._domainkey.DOMAIN`.
    pub record_name: String,
    /// The TXT record's text.
    pub txt: String,
}

fn is_label_list(text: &str) -> bool {
    !text.is_empty()
        && text.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        })
}

/// Makes a key pair for `domain` and `selector`, and writes the private
/// key to `DIR/DOMAIN.SELECTOR.pem` (mode 0600); an existing file is kept
/// unless `overwrite`.
pub fn keygen(
    domain: &str,
    selector: &str,
    algorithm: Algorithm,
    dir: &Path,
    overwrite: bool,
) -> Result<Generated, String> {
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    if !is_label_list(&domain) || !domain.contains('.') {
        return Err(format!("{domain:?} is not a domain name"));
    }
    if !is_label_list(selector) {
        return Err(format!(
            "{selector:?} is not a selector (letters, digits, '-', '_' and dots)"
        ));
    }
    let generated = keys::generate(algorithm).map_err(|e| e.to_string())?;
    let path = dir.join(format!("{domain}.{selector}.pem"));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).mode(0o600);
    if overwrite {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    let mut file = options.open(&path).map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => format!(
            "{} exists already; remove it or pass --force",
            path.display()
        ),
        _ => format!("cannot create {}: {e}", path.display()),
    })?;
    file.write_all(generated.private_pem.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(Generated {
        record_name: format!("{selector}._domainkey.{domain}"),
        domain,
        selector: selector.to_owned(),
        algorithm: match algorithm {
            Algorithm::Rsa { .. } => "rsa-sha256",
            Algorithm::Ed25519 => "ed25519-sha256",
        },
        private_key: std::path::absolute(&path).unwrap_or(path),
        txt: generated.txt_record,
    })
}

/// What an operator reads: where the key is, the record for the zone
/// file, and the config entry.
pub fn render(generated: &Generated) -> String {
    format!(
        "Private key ({}) written to {}\n\
         \n\
         Publish this DNS record:\n\
         {}. IN TXT ( {} )\n\
         \n\
         and sign with it in the config:\n\
         dkim: (keys: [(domain: {:?}, selector: {:?}, private_key: {:?})]),\n",
        generated.algorithm,
        generated.private_key.display(),
        generated.record_name,
        keys::zone_file_strings(&generated.txt),
        generated.domain,
        generated.selector,
        generated.private_key.display().to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keygen_writes_a_private_file_and_refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let made = keygen("Example.ORG.", "s1", Algorithm::Ed25519, dir.path(), false).unwrap();
        assert_eq!(made.record_name, "s1._domainkey.example.org");
        assert!(made.txt.starts_with("v=DKIM1; k=ed25519; p="));
        let path = dir.path().join("example.org.s1.pem");
        let mode = std::fs::metadata(&path).unwrap();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
            0o600
        );
        let error = keygen("example.org", "s1", Algorithm::Ed25519, dir.path(), false).unwrap_err();
        assert!(error.contains("exists already"), "{error}");
        assert!(keygen("example.org", "s1", Algorithm::Ed25519, dir.path(), true).is_ok());
        let text = render(&made);
        assert!(
            text.contains("s1._domainkey.example.org. IN TXT ( \"v=DKIM1; k=ed25519; p="),
            "{text}"
        );
    }

    #[test]
    fn bad_names_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert!(keygen("localhost", "s", Algorithm::Ed25519, dir.path(), false).is_err());
        assert!(keygen("example.org", "a b", Algorithm::Ed25519, dir.path(), false).is_err());
    }
}
