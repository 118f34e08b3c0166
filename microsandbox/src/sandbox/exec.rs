//! Running commands in a sandbox: collected ([`Sandbox::exec`],
//! [`Sandbox::exec_with`], [`Sandbox::shell`]) or streamed
//! ([`Sandbox::exec_stream`]).
//!
//! Every command runs on its own connection to the sandbox's agent, so many
//! commands at once never wait on each other, and a slow reader or writer
//! only slows its own command (output and stdin are flow-controlled).

use std::time::Duration;

use msb_core::agent::{ExecStart, StdinMode, TtySize};
use msb_core::sandbox::client::AgentConnection;
use msb_core::sandbox::exec::ExecSession;
use msb_core::sandbox::spec::AGENT_SOCKET;

pub use msb_core::agent::ExitStatus;
pub use msb_core::sandbox::exec::ExecEvent;

use super::Sandbox;
use crate::error::{MicrosandboxError, Result};

/// How long a timed-out command gets to report its death after SIGKILL.
const KILL_REPORT: Duration = Duration::from_secs(5);

/// What a finished command produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    /// How it ended.
    pub status: ExitStatus,
    /// Its standard output (with a tty: everything the tty printed).
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

/// Where a command's stdin comes from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Stdin {
    /// `/dev/null`.
    #[default]
    Null,
    /// These bytes, then EOF.
    Bytes(Vec<u8>),
    /// A pipe written through [`ExecHandle::stdin`] (streaming only).
    Pipe,
}

/// Options of one command; built in the closure given to
/// [`Sandbox::exec_with`] or [`Sandbox::exec_stream`].
///
/// ```no_run
/// # async fn run(sb: microsandbox::Sandbox) -> microsandbox::Result<()> {
/// use std::time::Duration;
///
/// let out = sb
///     .exec_with("sh", |o| {
///         o.args(["-c", "cat; pwd"])
///             .cwd("/tmp")
///             .env("LANG", "C")
///             .stdin_bytes(b"piped\n".to_vec())
///             .timeout(Duration::from_secs(5))
///     })
///     .await?;
/// assert_eq!(out.stdout_str(), "piped\n/tmp\n");
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct ExecOptions {
    args: Vec<String>,
    cwd: Option<String>,
    env: Vec<(String, String)>,
    user: Option<String>,
    timeout: Option<Duration>,
    stdin: Stdin,
    tty: Option<TtySize>,
}

impl ExecOptions {
    /// Appends one argument.
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Appends arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// The working directory (default: the sandbox's).
    pub fn cwd(mut self, dir: impl Into<String>) -> Self {
        self.cwd = Some(dir.into());
        self
    }

    /// Sets a variable on top of the sandbox's environment.
    pub fn env(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((name.into(), value.into()));
        self
    }

    /// Runs as this user: a name, `uid`, `uid:gid` or `name:group`.
    pub fn user(mut self, user: impl Into<String>) -> Self {
        self.user = Some(user.into());
        self
    }

    /// Kills the command (SIGKILL) after `timeout` and fails with
    /// [`MicrosandboxError::ExecTimeout`].
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Stdin from `/dev/null` (the default).
    pub fn stdin_null(mut self) -> Self {
        self.stdin = Stdin::Null;
        self
    }

    /// These bytes as stdin, then EOF.
    pub fn stdin_bytes(mut self, bytes: impl Into<Vec<u8>>) -> Self {
        self.stdin = Stdin::Bytes(bytes.into());
        self
    }

    /// A pipe, written through [`ExecHandle::stdin`].
    pub fn stdin_pipe(mut self) -> Self {
        self.stdin = Stdin::Pipe;
        self
    }

    /// Runs on a pseudo-terminal of `rows` × `cols`.
    pub fn tty(mut self, rows: u16, cols: u16) -> Self {
        self.tty = Some(TtySize { rows, cols });
        self
    }
}

/// A command running in a sandbox, streamed.
#[derive(Debug)]
pub struct ExecHandle {
    session: ExecSession,
    /// For the sandbox's first command: its output is also kept here.
    tee: Option<std::fs::File>,
    sandbox: String,
    command: String,
    timeout: Option<Duration>,
}

/// The write side of a streamed command's stdin. Clones share it.
#[derive(Debug, Clone)]
pub struct ExecStdin {
    inner: msb_core::sandbox::exec::ExecStdin,
    sandbox: String,
}

impl ExecStdin {
    /// Writes all of `data` (waiting while the command does not read).
    /// [`MicrosandboxError::StdinClosed`] once the command closed its stdin
    /// or ended; its output can still be read.
    pub async fn write_all(&self, data: &[u8]) -> Result<()> {
        self.inner.write_all(data).await.map_err(|e| match e {
            msb_core::Error::StdinClosed => MicrosandboxError::StdinClosed {
                name: self.sandbox.clone(),
            },
            e => MicrosandboxError::from_sandbox(&self.sandbox, e),
        })
    }

    /// Closes stdin: the command reads EOF.
    pub fn close(&self) {
        self.inner.close();
    }
}

impl ExecHandle {
    /// The next event: `Started`, then `Stdout`/`Stderr` as they come,
    /// then `Exited`; `None` after that. A command that cannot start gives
    /// [`MicrosandboxError::ExecFailed`].
    pub async fn next(&mut self) -> Option<Result<ExecEvent>> {
        let event = self.session.next_event().await?;
        if let (Some(file), Ok(ExecEvent::Stdout(data) | ExecEvent::Stderr(data))) =
            (&mut self.tee, &event)
        {
            use std::io::Write;
            if file.write_all(data).is_err() {
                self.tee = None;
            }
        }
        Some(event.map_err(|e| self.error(e)))
    }

    /// The stdin sink (for commands started with [`ExecOptions::stdin_pipe`]
    /// or a tty).
    pub fn stdin(&self) -> ExecStdin {
        ExecStdin {
            inner: self.session.stdin(),
            sandbox: self.sandbox.clone(),
        }
    }

    /// Sends `signal` (e.g. `libc::SIGTERM`) to the command.
    pub fn signal(&self, signal: i32) -> Result<()> {
        self.session.signal(signal).map_err(|e| self.error(e))
    }

    /// SIGKILLs the command and its process group.
    pub fn kill(&self) -> Result<()> {
        self.session.kill().map_err(|e| self.error(e))
    }

    /// Resizes the command's tty.
    pub fn resize(&self, rows: u16, cols: u16) -> Result<()> {
        self.session.resize(rows, cols).map_err(|e| self.error(e))
    }

    /// Waits for the command to end, discarding its output.
    pub async fn wait(mut self) -> Result<ExitStatus> {
        let mut sink = |_: &ExecEvent| {};
        self.drive(&mut sink).await
    }

    /// Waits for the command to end and collects its output.
    pub async fn output(mut self) -> Result<ExecOutput> {
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        let mut collect = |event: &ExecEvent| match event {
            ExecEvent::Stdout(data) => stdout.extend_from_slice(data),
            ExecEvent::Stderr(data) => stderr.extend_from_slice(data),
            _ => {}
        };
        let status = self.drive(&mut collect).await?;
        Ok(ExecOutput {
            status,
            stdout,
            stderr,
        })
    }

    /// Feeds every event to `f` until `Exited`, under the timeout.
    async fn drive(&mut self, f: &mut (dyn FnMut(&ExecEvent) + Send)) -> Result<ExitStatus> {
        let Some(timeout) = self.timeout else {
            return self.drain(f).await;
        };
        match tokio::time::timeout(timeout, self.drain(f)).await {
            Ok(result) => result,
            Err(_) => {
                let _ = self.session.kill();
                let mut ignore = |_: &ExecEvent| {};
                let _ = tokio::time::timeout(KILL_REPORT, self.drain(&mut ignore)).await;
                Err(MicrosandboxError::ExecTimeout {
                    name: self.sandbox.clone(),
                    command: self.command.clone(),
                    timeout,
                })
            }
        }
    }

    async fn drain(&mut self, f: &mut (dyn FnMut(&ExecEvent) + Send)) -> Result<ExitStatus> {
        while let Some(event) = self.next().await {
            let event = event?;
            f(&event);
            if let ExecEvent::Exited(status) = event {
                return Ok(status);
            }
        }
        Err(self.error(msb_core::Error::AgentIo {
            op: "read exec output",
            source: std::io::Error::from(std::io::ErrorKind::UnexpectedEof),
        }))
    }

    fn error(&self, e: msb_core::Error) -> MicrosandboxError {
        match e {
            msb_core::Error::AgentRefused { kind, message, .. } => MicrosandboxError::ExecFailed {
                name: self.sandbox.clone(),
                command: self.command.clone(),
                kind,
                message,
            },
            e => MicrosandboxError::from_sandbox(&self.sandbox, e),
        }
    }
}

impl Sandbox {
    /// Runs `command` with `args` (searched in `PATH` when it has no `/`),
    /// with the sandbox's environment and working directory and stdin from
    /// `/dev/null`, and collects its output.
    ///
    /// A command that cannot start is [`MicrosandboxError::ExecFailed`]
    /// (with the kind: not found, permission denied, not executable, bad
    /// cwd, no such user); a command that runs and fails is an `Ok` with its
    /// exit status. For large outputs use [`exec_stream`](Self::exec_stream).
    pub async fn exec<I, S>(&self, command: &str, args: I) -> Result<ExecOutput>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.exec_with(command, |o| o.args(args)).await
    }

    /// Runs `command` with the options set by `options` and collects its
    /// output; see [`ExecOptions`].
    pub async fn exec_with(
        &self,
        command: &str,
        options: impl FnOnce(ExecOptions) -> ExecOptions,
    ) -> Result<ExecOutput> {
        let options = options(ExecOptions::default());
        let bytes = match &options.stdin {
            Stdin::Bytes(bytes) => Some(bytes.clone()),
            _ => None,
        };
        let handle = self.start_exec(command, options).await?;
        if let Some(bytes) = bytes {
            let stdin = handle.stdin();
            tokio::spawn(async move {
                // A command that exits without reading is fine.
                let _ = stdin.write_all(&bytes).await;
                stdin.close();
            });
        }
        handle.output().await
    }

    /// Runs `script` with the sandbox's shell (`sh -c`).
    pub async fn shell(&self, script: &str) -> Result<ExecOutput> {
        self.exec("sh", ["-c", script]).await
    }

    /// Starts `command` and returns at once with a handle streaming its
    /// events, with stdin, signals and kill.
    ///
    /// ```no_run
    /// # async fn run(sb: microsandbox::Sandbox) -> microsandbox::Result<()> {
    /// use microsandbox::sandbox::ExecEvent;
    ///
    /// let mut cmd = sb.exec_stream("cat", |o| o.stdin_pipe()).await?;
    /// let stdin = cmd.stdin();
    /// stdin.write_all(b"hello\n").await?;
    /// stdin.close();
    /// while let Some(event) = cmd.next().await {
    ///     match event? {
    ///         ExecEvent::Stdout(bytes) => print!("{}", String::from_utf8_lossy(&bytes)),
    ///         ExecEvent::Exited(status) => println!("exited: {status:?}"),
    ///         _ => {}
    ///     }
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn exec_stream(
        &self,
        command: &str,
        options: impl FnOnce(ExecOptions) -> ExecOptions,
    ) -> Result<ExecHandle> {
        self.start_exec(command, options(ExecOptions::default()))
            .await
    }

    async fn start_exec(&self, command: &str, options: ExecOptions) -> Result<ExecHandle> {
        let mut argv = vec![command.to_owned()];
        argv.extend(options.args);
        let mut env = self.inner.env.clone();
        env.extend(options.env);
        let piped = options.stdin != Stdin::Null || options.tty.is_some();
        let request = ExecStart {
            argv,
            env,
            cwd: options.cwd.or_else(|| self.inner.workdir.clone()),
            user: options.user.or_else(|| self.inner.user.clone()),
            tty: options.tty,
            stdin: if piped {
                StdinMode::Pipe
            } else {
                StdinMode::Null
            },
        };
        // The handle must still name a live incarnation.
        self.info()?;
        let socket = self.state_dir().join(AGENT_SOCKET);
        let conn = AgentConnection::connect(&socket)
            .await
            .map_err(|e| self.error(e))?;
        let session = ExecSession::start(conn, request)
            .await
            .map_err(|e| self.error(e))?;
        // Only the first command gets to create the file.
        let tee = std::fs::OpenOptions::new()
            .append(true)
            .create_new(true)
            .open(
                self.state_dir()
                    .join(msb_core::sandbox::logs::FIRST_COMMAND_LOG),
            )
            .ok();
        Ok(ExecHandle {
            session,
            tee,
            sandbox: self.name().to_owned(),
            command: command.to_owned(),
            timeout: options.timeout,
        })
    }
}
