//! The per-sandbox record stored in `state.json`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::SandboxName;
use super::process::ProcessIdentity;

/// The version of the `state.json` format written by this code.
pub const RECORD_VERSION: u32 = 1;

/// The isolation backend a sandbox runs under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Backend {
    /// A libkrun microVM (the default).
    Microvm,
    /// Linux namespaces (weaker isolation, for hosts without usable KVM).
    Namespace,
}

/// A sandbox's status.
///
/// In a stored record this is what was last *written*; the live status
/// ([`SandboxRecord::live_status`]) also checks that the recorded process
/// still exists, so a dead sandbox is never reported as running.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum SandboxStatus {
    /// The name is reserved and the sandbox is being set up; the recorded
    /// process is the creator's.
    Creating,
    /// The sandbox process is running.
    Running,
    /// The sandbox was stopped in an orderly way.
    Stopped,
    /// The sandbox's process (or its creator) died without recording a stop.
    Crashed,
}

impl SandboxStatus {
    /// `Creating` or `Running`: a process is expected to be alive.
    pub fn expects_process(self) -> bool {
        matches!(self, Self::Creating | Self::Running)
    }
}

/// What `state.json` holds for one sandbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SandboxRecord {
    /// Format version ([`RECORD_VERSION`]).
    pub version: u32,
    /// The sandbox's name (equal to its directory's name).
    pub name: SandboxName,
    /// Identifies this incarnation of the name: a sandbox removed and
    /// created again under the same name gets a new one, so a holder of an
    /// old record can tell that "its" sandbox is gone.
    pub instance_id: String,
    /// The sandbox configuration, opaque to the store.
    pub config: serde_json::Value,
    /// The status last written (see [`SandboxRecord::live_status`]).
    pub status: SandboxStatus,
    /// The process the status refers to: the creator while `Creating`, the
    /// sandbox process while `Running`, the last one otherwise (if any).
    pub pid: Option<u32>,
    /// That process' start time (`/proc/<pid>/stat` field 22), to detect
    /// pid reuse. `None` when it could not be read.
    pub start_time: Option<u64>,
    /// When the record was created, in milliseconds since the Unix epoch.
    #[serde(with = "unix_millis")]
    pub created_at: SystemTime,
    /// When the record was last written, in milliseconds since the Unix epoch.
    #[serde(with = "unix_millis")]
    pub updated_at: SystemTime,
    /// The isolation backend.
    pub backend: Backend,
}

impl SandboxRecord {
    /// The recorded process, if a pid and start time are both known.
    pub fn process(&self) -> Option<ProcessIdentity> {
        Some(ProcessIdentity {
            pid: self.pid?,
            start_time: self.start_time?,
        })
    }

    /// The live status: the recorded status, except that a `Creating` or
    /// `Running` record whose process is gone, is a zombie, or whose pid now
    /// belongs to a process with another start time (pid reuse) is
    /// [`SandboxStatus::Crashed`]. Never `Running` for a dead process.
    pub fn live_status(&self) -> SandboxStatus {
        if self.status.expects_process() && !self.process().is_some_and(|p| p.is_alive()) {
            SandboxStatus::Crashed
        } else {
            self.status
        }
    }

    /// The recorded process if the record expects one and it is alive.
    pub fn live_process(&self) -> Option<ProcessIdentity> {
        self.process()
            .filter(|p| self.status.expects_process() && p.is_alive())
    }
}

/// `SystemTime` as whole milliseconds since the Unix epoch (times before the
/// epoch are stored as 0).
mod unix_millis {
    use super::*;

    pub(super) fn serialize<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        let ms = t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis();
        s.serialize_u64(u64::try_from(ms).unwrap_or(u64::MAX))
    }

    pub(super) fn deserialize<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<SystemTime, D::Error> {
        let ms = u64::deserialize(d)?;
        UNIX_EPOCH
            .checked_add(Duration::from_millis(ms))
            .ok_or_else(|| serde::de::Error::custom("timestamp out of range"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(status: SandboxStatus, process: Option<ProcessIdentity>) -> SandboxRecord {
        let now = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        SandboxRecord {
            version: RECORD_VERSION,
            name: SandboxName::new("rec").unwrap(),
            instance_id: "i".into(),
            config: serde_json::json!({"image": "alpine"}),
            status,
            pid: process.map(|p| p.pid),
            start_time: process.map(|p| p.start_time),
            created_at: now,
            updated_at: now,
            backend: Backend::Namespace,
        }
    }

    #[test]
    fn sandbox_record_json_round_trip() {
        let r = record(SandboxStatus::Stopped, None);
        let text = serde_json::to_string(&r).unwrap();
        assert!(text.contains("\"backend\":\"namespace\""), "{text}");
        assert!(text.contains("\"status\":\"stopped\""), "{text}");
        assert!(text.contains("\"created_at\":1700000000123"), "{text}");
        assert_eq!(serde_json::from_str::<SandboxRecord>(&text).unwrap(), r);
    }

    #[test]
    fn sandbox_live_status_rules() {
        let me = ProcessIdentity::current().unwrap();
        let reused = ProcessIdentity {
            start_time: me.start_time.wrapping_add(1),
            ..me
        };
        use SandboxStatus::*;
        assert_eq!(record(Running, Some(me)).live_status(), Running);
        assert_eq!(record(Creating, Some(me)).live_status(), Creating);
        assert_eq!(record(Running, Some(reused)).live_status(), Crashed);
        assert_eq!(record(Running, None).live_status(), Crashed);
        assert_eq!(record(Stopped, None).live_status(), Stopped);
        assert_eq!(record(Stopped, Some(me)).live_status(), Stopped);
        assert_eq!(record(Crashed, Some(me)).live_status(), Crashed);
        assert_eq!(record(Running, Some(me)).live_process(), Some(me));
        assert_eq!(record(Stopped, Some(me)).live_process(), None);
    }
}
