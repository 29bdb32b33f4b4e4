//! Running the binaries as an ordinary user: `nobody` (uid and gid 65534
//! on Debian), with no supplementary groups, through util-linux's
//! `setpriv`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::binary;

/// uid and gid of `nobody` / `nogroup` on Debian.
pub const NOBODY: u32 = 65534;

pub fn setpriv_available() -> bool {
    Command::new("setpriv")
        .arg("--version")
        .output()
        .is_ok_and(|output| output.status.success())
}

/// A command that runs `program` as nobody, with no groups.
pub fn as_nobody(program: &Path) -> Command {
    let mut command = Command::new("setpriv");
    command
        .env("NO_COLOR", "1")
        .arg(format!("--reuid={NOBODY}"))
        .arg(format!("--regid={NOBODY}"))
        .arg("--clear-groups")
        .arg(program);
    command
}

/// The built binary `name`, or a world-executable copy of it in
/// `dir/bin` if nobody cannot run the one in the target dir (a home
/// directory that is not world-searchable).
pub fn binary_for_nobody(name: &str, dir: &Path) -> PathBuf {
    let built = binary(name);
    let runnable = as_nobody(Path::new("test"))
        .arg("-x")
        .arg(&built)
        .status()
        .is_ok_and(|status| status.success());
    if runnable {
        return built;
    }
    let copy = dir.join("bin").join(name);
    std::fs::create_dir_all(copy.parent().expect("parent")).expect("create bin dir");
    std::fs::copy(&built, &copy).unwrap_or_else(|e| panic!("copy {name}: {e}"));
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755))
        .unwrap_or_else(|e| panic!("chmod {name}: {e}"));
    copy
}
