//! Process identity from `/proc`: a pid plus its start time, so that a pid
//! the kernel has since given to another process is not taken for ours.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// A process, identified by its pid and its start time.
///
/// The start time is field 22 of `/proc/<pid>/stat`: clock ticks after boot
/// at which the process started. A pid that is reused by the kernel gets a
/// different start time, so the pair names one process for the life of the
/// host's boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ProcessIdentity {
    /// The process id (in the state home's pid namespace).
    pub pid: u32,
    /// Start time in clock ticks after boot (`/proc/<pid>/stat` field 22).
    pub start_time: u64,
}

impl ProcessIdentity {
    /// The identity of the live process `pid`, or `None` when no such
    /// process exists or it has already exited (a zombie waiting to be
    /// reaped counts as exited).
    pub fn of(pid: u32) -> Option<Self> {
        let stat = read_stat(Path::new("/proc"), pid)?;
        (!stat.is_exited()).then_some(Self {
            pid,
            start_time: stat.start_time,
        })
    }

    /// The identity of the calling process.
    pub fn current() -> Option<Self> {
        Self::of(std::process::id())
    }

    /// Whether this exact process (same pid, same start time) is alive.
    pub fn is_alive(&self) -> bool {
        Self::of(self.pid).is_some_and(|now| now.start_time == self.start_time)
    }
}

/// The fields of `/proc/<pid>/stat` this module uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProcStat {
    /// Field 3, the one-letter state (`R`, `S`, `D`, `Z`, `X`, ...).
    pub(crate) state: char,
    /// Field 22, the start time in clock ticks after boot.
    pub(crate) start_time: u64,
}

impl ProcStat {
    /// Zombie (`Z`) or dead (`X`, `x`): the process has exited.
    pub(crate) fn is_exited(&self) -> bool {
        matches!(self.state, 'Z' | 'X' | 'x')
    }
}

/// Reads and parses `<proc>/<pid>/stat`; `None` if it is missing or
/// unparsable. Pid 0 is never a process.
fn read_stat(proc: &Path, pid: u32) -> Option<ProcStat> {
    if pid == 0 {
        return None;
    }
    let text = std::fs::read(proc.join(pid.to_string()).join("stat")).ok()?;
    parse_stat(&text)
}

/// Parses the contents of `/proc/<pid>/stat`.
///
/// Field 2 (`comm`) is the executable name in parentheses and may itself
/// contain spaces, parentheses and non-UTF-8 bytes, so the fields are read
/// after the *last* `)`: field 3 is the first of those.
pub(crate) fn parse_stat(text: &[u8]) -> Option<ProcStat> {
    let close = text.iter().rposition(|&b| b == b')')?;
    let rest = std::str::from_utf8(&text[close + 1..]).ok()?;
    let mut fields = rest.split_ascii_whitespace();
    let state = fields.next()?;
    let mut state_chars = state.chars();
    let state_char = state_chars.next()?;
    if state_chars.next().is_some() {
        return None;
    }
    // Field 3 has been consumed; field 22 is 19 fields further on.
    let start_time = fields.nth(22 - 4)?.parse().ok()?;
    Some(ProcStat {
        state: state_char,
        start_time,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(comm: &str, state: char, start: u64) -> Vec<u8> {
        // Fields 4..=21 are filler; field 22 is the start time.
        let filler: Vec<String> = (4..=21).map(|i| i.to_string()).collect();
        format!(
            "4242 ({comm}) {state} {} {start} 1000 2000 3000\n",
            filler.join(" ")
        )
        .into_bytes()
    }

    #[test]
    fn sandbox_parse_stat_plain_and_tricky_comm() {
        for comm in ["sleep", "a b", "x) S 1 2 (y", "))", "(", ""] {
            let got = parse_stat(&line(comm, 'S', 123_456)).unwrap();
            assert_eq!(
                got,
                ProcStat {
                    state: 'S',
                    start_time: 123_456
                },
                "comm {comm:?}"
            );
        }
        let z = parse_stat(&line("zz", 'Z', 7)).unwrap();
        assert!(z.is_exited());
    }

    #[test]
    fn sandbox_parse_stat_rejects_garbage() {
        assert_eq!(parse_stat(b""), None);
        assert_eq!(parse_stat(b"12 (x) S 1 2 3"), None);
        assert_eq!(parse_stat(b"12 no parens at all"), None);
        let mut bad = line("x", 'S', 1);
        bad.truncate(bad.len() - 20);
        assert_eq!(parse_stat(&bad), None);
    }

    #[test]
    fn sandbox_parse_stat_non_utf8_comm() {
        let mut text = b"99 (\xff\xfe) ".to_vec();
        text.extend_from_slice(&line("", 'R', 55)[b"4242 () ".len()..]);
        assert_eq!(parse_stat(&text).unwrap().start_time, 55);
    }

    #[test]
    fn sandbox_current_process_identity() {
        let me = ProcessIdentity::current().unwrap();
        assert_eq!(me.pid, std::process::id());
        assert!(me.is_alive());
        let other = ProcessIdentity {
            start_time: me.start_time + 1,
            ..me
        };
        assert!(!other.is_alive());
        assert_eq!(ProcessIdentity::of(0), None);
    }
}
