//! Relative paths in a config file name files beside the config file,
//! not in whatever directory a command happens to run from: the daemons,
//! `empathctl`, `mailq` and `sendmail` then agree wherever they start.

use std::path::{Path, PathBuf};

use super::model::Empath;
use super::values::Extension;

/// Makes every path key of `config` absolute against `base` (the config
/// file's directory). `local_delivery.home_mailbox` is not a path of
/// this host but one under each user's home, so it stays as written.
pub(super) fn resolve(config: &mut Empath, base: &Path) {
    let resolve = |path: &mut PathBuf| {
        if path.is_relative() && !path.as_os_str().is_empty() {
            *path = normalize(&base.join(&*path));
        }
    };
    let resolve_some = |path: &mut Option<PathBuf>| {
        if let Some(path) = path {
            resolve(path);
        }
    };
    resolve(&mut config.spool.path);
    resolve(&mut config.logging.syslog_socket);
    resolve_some(&mut config.control_socket);
    resolve_some(&mut config.daemon_directory);
    resolve_some(&mut config.smtpd.auth.users_file);
    for module in &mut config.modules {
        resolve(&mut module.name);
    }
    for listener in &mut config.smtp_controller.listeners {
        for extension in &mut listener.0.extensions {
            if let Extension::StartTls { key, certificate } = extension {
                resolve(key);
                resolve(certificate);
            }
        }
    }
    let local = &mut config.local_delivery;
    resolve(&mut local.mail_spool_directory);
    resolve_some(&mut local.mailbox_directory);
    for map in &mut local.alias_maps {
        resolve(map);
    }
    for file in &mut config.delivery.tls_ca_files {
        resolve(file);
    }
    resolve_some(&mut config.dns.trust_anchor);
}

/// The directory whose relative paths a config at `config_path` uses:
/// its own, made absolute against the working directory.
pub(super) fn base_of(config_path: &Path) -> PathBuf {
    let absolute = std::path::absolute(config_path).unwrap_or_else(|_| config_path.to_owned());
    absolute
        .parent()
        .map(Path::to_owned)
        .unwrap_or_else(|| PathBuf::from("/"))
}

/// Drops `.` components and folds `dir/..`, without touching the
/// filesystem (the path may not exist yet), so that logs and error
/// messages show `/srv/empath/var` rather than `/srv/empath/etc/../var`.
fn normalize(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            // `/..` is `/`; a relative `..` that cannot fold stays.
            Component::ParentDir => {
                if !out.pop() && !out.has_root() {
                    out.push(component);
                }
            }
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_and_dot_dot_are_folded() {
        assert_eq!(
            normalize(Path::new("/srv/etc/../var/./spool")),
            Path::new("/srv/var/spool")
        );
        assert_eq!(normalize(Path::new("/../x")), Path::new("/x"));
    }
}
