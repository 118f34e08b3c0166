//! Running a command in a sandbox and collecting its output.

use msb_core::agent::{ExecStart, StdinMode};
use msb_core::sandbox::client::AgentConnection;
use msb_core::sandbox::spec::AGENT_SOCKET;

pub use msb_core::agent::ExitStatus;

use super::Sandbox;
use crate::error::{MicrosandboxError, Result};

/// What a finished command produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    /// How it ended.
    pub status: ExitStatus,
    /// Its standard output.
    pub stdout: Vec<u8>,
    /// Its standard error.
    pub stderr: Vec<u8>,
}

impl ExecOutput {
    /// The exit code, or `None` when a signal ended it.
    pub fn code(&self) -> Option<i32> {
        match self.status {
            ExitStatus::Code(code) => Some(code),
            _ => None,
        }
    }

    /// Exited with code 0.
    pub fn success(&self) -> bool {
        self.code() == Some(0)
    }

    /// Standard output as text (invalid UTF-8 replaced).
    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// Standard error as text (invalid UTF-8 replaced).
    pub fn stderr_str(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

impl Sandbox {
    /// Runs `command` with `args` in the sandbox (searched in `PATH` when it
    /// has no `/`), with the sandbox's environment and working directory and
    /// stdin from `/dev/null`, and waits for it.
    ///
    /// A command that cannot start is [`MicrosandboxError::ExecFailed`];
    /// a command that runs and fails is an `Ok` with its exit status.
    pub async fn exec<I, S>(&self, command: &str, args: I) -> Result<ExecOutput>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut argv = vec![command.to_owned()];
        argv.extend(args.into_iter().map(Into::into));
        let request = ExecStart {
            argv,
            env: self.inner.env.clone(),
            cwd: self.inner.workdir.clone(),
            user: None,
            tty: None,
            stdin: StdinMode::Null,
        };
        // Checks the handle still names a live incarnation.
        self.info()?;
        let socket = self.state_dir().join(AGENT_SOCKET);
        let mut conn = AgentConnection::connect(&socket)
            .await
            .map_err(|e| self.error(e))?;
        match conn.exec(request).await {
            Ok(result) => Ok(ExecOutput {
                status: result.status,
                stdout: result.stdout,
                stderr: result.stderr,
            }),
            Err(msb_core::Error::AgentRefused { kind, message, .. }) => {
                Err(MicrosandboxError::ExecFailed {
                    name: self.name().to_owned(),
                    command: command.to_owned(),
                    kind,
                    message,
                })
            }
            Err(e) => Err(self.error(e)),
        }
    }
}
