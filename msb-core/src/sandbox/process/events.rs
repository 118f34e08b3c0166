//! The boot report: what the sandbox process tells its creator on its
//! standard output, one JSON object per line, until the sandbox is ready or
//! has failed. The creator stops reading after `ready` or `failed`.

use std::io::Write;

use serde::{Deserialize, Serialize};

/// One line of the boot report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum BootEvent {
    /// microVM only: libkrun accepted the configuration and the VM is about
    /// to start (`krun_start_enter`).
    VmStarting,
    /// The agent answered the handshake.
    Ready {
        /// The agent's software version.
        agent: String,
        /// The agent's boot timings, `(phase, microseconds)`.
        timings: Vec<(String, u64)>,
        /// Microseconds from the sandbox process's start to the handshake.
        boot_micros: u64,
    },
    /// Booting failed at `stage`.
    Failed {
        /// Where, e.g. `"rootfs"`, `"spawn"`, `"agent handshake"`.
        stage: String,
        /// Why.
        reason: String,
    },
}

/// Writes boot events to the sandbox process's standard output.
#[derive(Debug, Default)]
pub struct Reporter {
    closed: bool,
}

impl Reporter {
    /// Sends `event`. After `ready` or `failed` nothing more is sent (the
    /// creator has stopped reading). Errors (the creator went away) are
    /// logged, not fatal: the sandbox's fate is decided elsewhere.
    pub fn send(&mut self, event: &BootEvent) {
        if self.closed {
            return;
        }
        if matches!(event, BootEvent::Ready { .. } | BootEvent::Failed { .. }) {
            self.closed = true;
        }
        let mut line = serde_json::to_vec(event).expect("an event serializes");
        line.push(b'\n');
        let mut out = std::io::stdout().lock();
        if let Err(e) = out.write_all(&line).and_then(|()| out.flush()) {
            tracing::warn!(error = %e, "cannot write the boot report");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip_as_tagged_json() {
        let ready = BootEvent::Ready {
            agent: "msb-agent/0.1.0".into(),
            timings: vec![("ready".into(), 1200)],
            boot_micros: 5000,
        };
        let text = serde_json::to_string(&ready).unwrap();
        assert!(text.starts_with(r#"{"event":"ready""#), "{text}");
        assert_eq!(serde_json::from_str::<BootEvent>(&text).unwrap(), ready);
        let text = serde_json::to_string(&BootEvent::VmStarting).unwrap();
        assert_eq!(text, r#"{"event":"vm_starting"}"#);
    }
}
