//! A sandbox's logs: its guest console and its sandbox process's log, kept
//! in its state directory until it is removed.

pub use msb_core::sandbox::logs::{LogFollower, LogLine, LogSource};

use super::Sandbox;
use crate::error::Result;

/// Which logs to read, and how much.
#[derive(Debug, Clone)]
#[must_use]
pub struct LogOptions {
    sources: Vec<LogSource>,
    tail: Option<usize>,
}

impl Default for LogOptions {
    /// Both logs, whole.
    fn default() -> Self {
        LogOptions {
            sources: LogSource::ALL.to_vec(),
            tail: None,
        }
    }
}

impl LogOptions {
    /// Only the last `lines` lines of each log.
    pub fn tail(mut self, lines: usize) -> Self {
        self.tail = Some(lines);
        self
    }

    /// Only these logs.
    pub fn sources(mut self, sources: impl IntoIterator<Item = LogSource>) -> Self {
        self.sources = sources.into_iter().collect();
        self
    }
}

impl Sandbox {
    /// The sandbox's log lines, log by log (console first).
    ///
    /// ```no_run
    /// # fn run(sb: microsandbox::Sandbox) -> microsandbox::Result<()> {
    /// use microsandbox::sandbox::{LogOptions, LogSource};
    ///
    /// for line in sb.logs(LogOptions::default().tail(20).sources([LogSource::Console]))? {
    ///     println!("{}", line.text);
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn logs(&self, options: LogOptions) -> Result<Vec<LogLine>> {
        self.info()?;
        let dir = self.state_dir();
        let mut out = Vec::new();
        for source in options.sources {
            out.extend(
                msb_core::sandbox::logs::read(&dir, source, options.tail)
                    .map_err(|e| self.error(e))?,
            );
        }
        Ok(out)
    }

    /// Followers of the given logs from their current ends: poll them for
    /// the lines appended since.
    pub fn follow_logs(&self, sources: &[LogSource]) -> Result<Vec<LogFollower>> {
        self.info()?;
        let dir = self.state_dir();
        Ok(sources
            .iter()
            .map(|s| LogFollower::from_end(&dir, *s))
            .collect())
    }
}
