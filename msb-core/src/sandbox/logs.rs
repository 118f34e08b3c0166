//! A sandbox's logs, kept in its state directory until it is removed:
//! the guest console ([`CONSOLE_LOG`]: the agent's output for namespace
//! sandboxes, the virtual console for microVMs), the sandbox process's own
//! log ([`RUNTIME_LOG`]) and the output of the first command run in it
//! ([`FIRST_COMMAND_LOG`], stdout and stderr interleaved as they came).

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use super::spec::{CONSOLE_LOG, RUNTIME_LOG};

/// The first command's output, in the sandbox directory.
pub const FIRST_COMMAND_LOG: &str = "first-command.log";
use crate::{Error, Result};

/// Which log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LogSource {
    /// The guest console.
    Console,
    /// The sandbox process's log.
    Runtime,
    /// The output of the first command run in the sandbox.
    FirstCommand,
}

impl LogSource {
    /// Every log, console first.
    pub const ALL: [LogSource; 3] = [
        LogSource::Console,
        LogSource::Runtime,
        LogSource::FirstCommand,
    ];

    /// The log's file in sandbox directory `dir`.
    pub fn path(self, dir: &Path) -> PathBuf {
        dir.join(match self {
            LogSource::Console => CONSOLE_LOG,
            LogSource::Runtime => RUNTIME_LOG,
            LogSource::FirstCommand => FIRST_COMMAND_LOG,
        })
    }

    /// `console` or `runtime`.
    pub fn name(self) -> &'static str {
        match self {
            LogSource::Console => "console",
            LogSource::Runtime => "runtime",
            LogSource::FirstCommand => "first-command",
        }
    }
}

/// One line of a log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// Where it comes from.
    pub source: LogSource,
    /// The line, without its newline (invalid UTF-8 replaced).
    pub text: String,
}

/// The lines of `source` in `dir`, the last `tail` of them when set. Reads
/// at most the last 8 MiB of a file. A log that does not exist (yet) is
/// empty.
pub fn read(dir: &Path, source: LogSource, tail: Option<usize>) -> Result<Vec<LogLine>> {
    const WINDOW: u64 = 8 << 20;
    let path = source.path(dir);
    let mut file = match std::fs::File::open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(Error::Io {
                op: "open log",
                path,
                source,
            });
        }
    };
    let io = |source| Error::Io {
        op: "read log",
        path: path.clone(),
        source,
    };
    let len = file.metadata().map_err(io)?.len();
    file.seek(SeekFrom::Start(len.saturating_sub(WINDOW)))
        .map_err(io)?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).map_err(io)?;
    let text = String::from_utf8_lossy(&bytes);
    let mut lines: Vec<LogLine> = text
        .lines()
        .map(|l| LogLine {
            source,
            text: l.to_owned(),
        })
        .collect();
    if let Some(tail) = tail {
        let skip = lines.len().saturating_sub(tail);
        lines.drain(..skip);
    }
    Ok(lines)
}

/// Follows a log: yields what is appended to it after `offset`.
#[derive(Debug)]
pub struct LogFollower {
    path: PathBuf,
    offset: u64,
    partial: Vec<u8>,
    source: LogSource,
}

impl LogFollower {
    /// Follows `source` in `dir` from its current end.
    pub fn from_end(dir: &Path, source: LogSource) -> LogFollower {
        let path = source.path(dir);
        let offset = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        LogFollower {
            path,
            offset,
            partial: Vec::new(),
            source,
        }
    }

    /// The complete lines appended since the last call.
    pub fn poll(&mut self) -> Result<Vec<LogLine>> {
        let mut file = match std::fs::File::open(&self.path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(Error::Io {
                    op: "open log",
                    path: self.path.clone(),
                    source,
                });
            }
        };
        let io = |source| Error::Io {
            op: "read log",
            path: self.path.clone(),
            source,
        };
        let len = file.metadata().map_err(io)?.len();
        if len < self.offset {
            // Truncated or replaced: start over.
            self.offset = 0;
            self.partial.clear();
        }
        file.seek(SeekFrom::Start(self.offset)).map_err(io)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(io)?;
        self.offset += bytes.len() as u64;
        self.partial.extend_from_slice(&bytes);
        let Some(last_newline) = self.partial.iter().rposition(|&b| b == b'\n') else {
            return Ok(Vec::new());
        };
        let complete: Vec<u8> = self.partial.drain(..=last_newline).collect();
        Ok(String::from_utf8_lossy(&complete)
            .lines()
            .map(|l| LogLine {
                source: self.source,
                text: l.to_owned(),
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_and_follow() {
        let dir = tempfile::tempdir().unwrap();
        let path = LogSource::Console.path(dir.path());
        assert!(
            read(dir.path(), LogSource::Console, None)
                .unwrap()
                .is_empty()
        );
        std::fs::write(&path, "a\nb\nc\n").unwrap();
        let lines = read(dir.path(), LogSource::Console, Some(2)).unwrap();
        let texts: Vec<_> = lines.iter().map(|l| l.text.as_str()).collect();
        assert_eq!(texts, ["b", "c"]);

        let mut follower = LogFollower::from_end(dir.path(), LogSource::Console);
        assert!(follower.poll().unwrap().is_empty());
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        let mut texts = || -> Vec<String> {
            follower
                .poll()
                .unwrap()
                .into_iter()
                .map(|l| l.text)
                .collect()
        };
        f.write_all(b"d\ne").unwrap();
        assert_eq!(texts(), ["d"]);
        f.write_all(b"!\n").unwrap();
        assert_eq!(texts(), ["e!"]);
    }
}
