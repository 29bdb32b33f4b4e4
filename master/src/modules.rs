//! The master's check of the configured plugin modules. It never loads
//! them (it runs as root, and module code belongs in the daemons that use
//! it), but a module file that is missing or unreadable is caught here,
//! at start-up and by `empath check-config`, with the config key that
//! names it, rather than as a crash loop of smtpd and qmgr.

use std::path::Path;

use empath_common::config::Config;

/// Checks that every module path names a readable regular file. Bare file
/// names (no `/`) are left to the dynamic loader, which searches the
/// library path for them when smtpd and qmgr load the module.
pub fn check(config: &Config) -> Result<(), String> {
    for (index, module) in config.modules.iter().enumerate() {
        check_one(&module.name).map_err(|problem| {
            format!(
                "{}: modules[{index}].name: module {} {problem}",
                config.path.display(),
                module.name.display()
            )
        })?;
    }
    Ok(())
}

fn check_one(path: &Path) -> Result<(), String> {
    if path.as_os_str().is_empty() {
        return Err("is an empty path".to_owned());
    }
    if path.components().count() == 1 && !path.is_absolute() {
        return Ok(());
    }
    let metadata = std::fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => "does not exist".to_owned(),
        _ => format!("cannot be read: {e}"),
    })?;
    if !metadata.is_file() {
        return Err("is not a regular file".to_owned());
    }
    std::fs::File::open(path)
        .map(drop)
        .map_err(|e| format!("cannot be read: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_files_and_directories_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let library = dir.path().join("libok.so");
        std::fs::write(&library, b"\x7fELF").unwrap();
        assert_eq!(check_one(&library), Ok(()));
        assert_eq!(
            check_one(&dir.path().join("libmissing.so")),
            Err("does not exist".to_owned())
        );
        assert_eq!(
            check_one(dir.path()),
            Err("is not a regular file".to_owned())
        );
        assert_eq!(check_one(Path::new("libsearched.so")), Ok(()));
    }
}
