//! Just enough of /proc to find the master's children by name.

use std::fs;

/// A process as `/proc/PID/stat` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcInfo {
    pub pid: i32,
    /// The executable name, cut to 15 bytes by the kernel.
    pub comm: String,
    /// `R`, `S`, `Z`, ...
    pub state: char,
    pub ppid: i32,
    /// Start time in clock ticks after boot: with the pid, it names a
    /// process uniquely even if the pid is reused.
    pub start_time: u64,
}

impl ProcInfo {
    pub fn is_zombie(&self) -> bool {
        matches!(self.state, 'Z' | 'X')
    }

    /// Same pid and start time: the same process, whatever its state now.
    pub fn is_same_process(&self, other: &ProcInfo) -> bool {
        self.pid == other.pid && self.start_time == other.start_time
    }
}

/// Reads `/proc/PID/stat`; `None` if the process is gone.
pub fn process(pid: i32) -> Option<ProcInfo> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&stat)
}

/// Parses a stat line. The comm is in parentheses and may itself contain
/// spaces and parentheses, so the fields after it are found from the last `)`.
fn parse_stat(stat: &str) -> Option<ProcInfo> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let pid = stat[..open].trim().parse().ok()?;
    let comm = stat.get(open + 1..close)?.to_owned();
    let fields: Vec<&str> = stat.get(close + 1..)?.split_whitespace().collect();
    // After the comm: state(3) ppid(4) ... starttime(22), numbered as in proc(5).
    Some(ProcInfo {
        pid,
        comm,
        state: fields.first()?.chars().next()?,
        ppid: fields.get(1)?.parse().ok()?,
        start_time: fields.get(19)?.parse().ok()?,
    })
}

/// Every process whose parent is `ppid`, zombies included.
pub fn children_of(ppid: i32) -> Vec<ProcInfo> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(process)
        .filter(|info| info.ppid == ppid)
        .collect()
}

/// Live (not zombie) children of `ppid` called `comm`, lowest pid first.
pub fn live_children_named(ppid: i32, comm: &str) -> Vec<i32> {
    let mut pids: Vec<i32> = children_of(ppid)
        .into_iter()
        .filter(|info| info.comm == comm && !info.is_zombie())
        .map(|info| info.pid)
        .collect();
    pids.sort_unstable();
    pids
}

/// True while `info` still names a running process (not reaped, not
/// replaced by another one with the same pid).
pub fn still_running(info: &ProcInfo) -> bool {
    process(info.pid).is_some_and(|now| now.is_same_process(info) && !now.is_zombie())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_odd_comm_is_parsed() {
        let stat = "4242 (empath-smtp-out) S 4000 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 3 0 987654 1000 10 18446744073709551615";
        let info = parse_stat(stat).expect("parses");
        assert_eq!(info.pid, 4242);
        assert_eq!(info.comm, "empath-smtp-out");
        assert_eq!(info.state, 'S');
        assert_eq!(info.ppid, 4000);
        assert_eq!(info.start_time, 987654);

        let odd = "7 (a) b (c) Z 1 7 7 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 55 0 0";
        let info = parse_stat(odd).expect("parses");
        assert_eq!(info.comm, "a) b (c");
        assert!(info.is_zombie());
        assert_eq!(info.start_time, 55);
    }

    #[test]
    fn this_process_is_found() {
        let me = process(std::process::id() as i32).expect("own stat");
        assert!(!me.is_zombie());
        assert!(still_running(&me));
    }
}
