//! Asking an operator to confirm a destructive command, as the seeds'
//! `empathctl queue delete` does. Only a terminal is asked: a script
//! (no terminal on stdin) must say `--yes`, so that it never hangs on a
//! question nobody sees, nor deletes anything by accident.

use std::io::{self, BufRead, IsTerminal, Write};

/// Asks `question` on the terminal; true for `y` or `yes`. Without a
/// terminal on stdin, an error that says to use `--yes`.
pub fn ask(question: &str) -> Result<bool, String> {
    let stdin = io::stdin();
    if !stdin.is_terminal() {
        return Err("not a terminal, so not asking: add --yes to confirm".to_owned());
    }
    let mut stderr = io::stderr();
    write!(stderr, "{question} [y/N] ").map_err(|e| format!("cannot ask: {e}"))?;
    stderr.flush().map_err(|e| format!("cannot ask: {e}"))?;
    let mut answer = String::new();
    stdin
        .lock()
        .read_line(&mut answer)
        .map_err(|e| format!("no answer: {e}"))?;
    Ok(is_yes(&answer))
}

fn is_yes(answer: &str) -> bool {
    matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_yes_confirms() {
        for yes in ["y\n", "Y\n", "yes\n", " YES \r\n"] {
            assert!(is_yes(yes), "{yes:?}");
        }
        for no in ["", "\n", "n\n", "no\n", "yess\n", "sure\n"] {
            assert!(!is_yes(no), "{no:?}");
        }
    }
}
