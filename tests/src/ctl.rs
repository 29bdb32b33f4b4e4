//! Running `empathctl` against a test instance's control socket.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::run::{RunOutput, run_bounded};
use crate::{Empath, binary};

const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

impl Empath {
    /// The master's control socket.
    pub fn control_socket(&self) -> PathBuf {
        self.spool().join("public/control.sock")
    }

    /// Runs `empathctl --control-socket <socket> ARGS`, without a token
    /// from the environment.
    pub fn empathctl(&self, args: &[&str]) -> RunOutput {
        let mut command = Command::new(binary("empathctl"));
        command
            .arg("--control-socket")
            .arg(self.control_socket())
            .args(args);
        command.env_remove("EMPATH_TOKEN");
        run_bounded(&mut command, COMMAND_TIMEOUT)
    }

    /// Runs `empathctl ARGS`, insists on success, and returns its output.
    pub fn empathctl_ok(&self, args: &[&str]) -> String {
        let output = self.empathctl(args);
        assert!(
            output.status.success(),
            "empathctl {args:?} failed: {}\n{}",
            output.combined(),
            self.log_tail()
        );
        output.stdout
    }
}
