//! The host's side of an agent connection: connect to a sandbox's agent
//! socket, shake hands, and run commands.
//!
//! Each connection is independent (its own streams, its own flow-control
//! windows); the agent kills the processes a connection started when it
//! closes.

use std::path::Path;

use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

use crate::agent::{
    ExecStart, ExitStatus, Frame, FrameReader, FrameWriter, Message, Ready, RecvWindow,
    SUPPORTED_VERSIONS, host_handshake,
};
use crate::{Error, Result};

/// The software name this side sends in `Hello`.
const SOFTWARE: &str = concat!("msb-core/", env!("CARGO_PKG_VERSION"));

/// An open, handshaken connection to a sandbox's agent.
#[derive(Debug)]
pub struct AgentConnection {
    reader: FrameReader<OwnedReadHalf>,
    writer: FrameWriter<OwnedWriteHalf>,
    ready: Ready,
    next_stream: u32,
}

/// What a finished command produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecResult {
    /// Its pid inside the sandbox.
    pub pid: u32,
    /// How it ended.
    pub status: ExitStatus,
    /// Everything it wrote to stdout.
    pub stdout: Vec<u8>,
    /// Everything it wrote to stderr.
    pub stderr: Vec<u8>,
}

impl AgentConnection {
    /// Connects to the agent socket at `socket` and shakes hands.
    pub async fn connect(socket: &Path) -> Result<AgentConnection> {
        let stream = super::socket::connect(socket)
            .await
            .map_err(|source| Error::AgentIo {
                op: "connect",
                source,
            })?;
        let (r, w) = stream.into_split();
        let (mut reader, mut writer) = (FrameReader::new(r), FrameWriter::new(w));
        let ready = host_handshake(&mut reader, &mut writer, SUPPORTED_VERSIONS, SOFTWARE).await?;
        Ok(AgentConnection {
            reader,
            writer,
            ready,
            next_stream: 1,
        })
    }

    /// The agent's readiness report.
    pub fn ready(&self) -> &Ready {
        &self.ready
    }

    /// The connection's frame reader and writer, for a session that owns
    /// the connection (e.g. a streaming exec).
    pub(crate) fn into_parts(self) -> (FrameReader<OwnedReadHalf>, FrameWriter<OwnedWriteHalf>) {
        (self.reader, self.writer)
    }

    /// A fresh stream id for an operation on this connection (the file
    /// operations of [`files`](super::files)).
    pub(crate) fn new_stream_id(&mut self) -> u32 {
        let stream = self.next_stream;
        self.next_stream += 2;
        stream
    }

    /// The connection's reader and writer, for an operation on this
    /// connection (the file operations of [`files`](super::files)).
    pub(crate) fn io_mut(
        &mut self,
    ) -> (
        &mut FrameReader<OwnedReadHalf>,
        &mut FrameWriter<OwnedWriteHalf>,
    ) {
        (&mut self.reader, &mut self.writer)
    }

    /// Asks the agent to stop every process (SIGTERM, SIGKILL after
    /// `grace_ms`) and end the sandbox.
    pub async fn shutdown(&mut self, grace_ms: u32) -> Result<()> {
        self.writer
            .write_frame(&Frame::new(0, Message::Shutdown { grace_ms }))
            .await
    }

    /// Waits until the agent closes the connection (it shut down or died).
    /// Frames that arrive meanwhile are discarded.
    pub async fn closed(&mut self) {
        while let Ok(Some(_)) = self.reader.read_frame().await {}
    }

    /// Runs `request` to completion and collects its output.
    pub async fn exec(&mut self, request: ExecStart) -> Result<ExecResult> {
        let stream = self.next_stream;
        self.next_stream += 2;
        self.writer
            .write_frame(&Frame::new(stream, Message::ExecStart(request)))
            .await?;
        let mut window = RecvWindow::new();
        let mut result = ExecResult {
            pid: 0,
            status: ExitStatus::Code(-1),
            stdout: Vec::new(),
            stderr: Vec::new(),
        };
        loop {
            let frame = self.reader.expect_frame("exec output").await?;
            if frame.stream != stream {
                continue;
            }
            let data_len = frame.message.flow_len();
            match frame.message {
                Message::ExecStarted { pid } => result.pid = pid,
                Message::Stdout(data) => result.stdout.extend(data),
                Message::Stderr(data) => result.stderr.extend(data),
                Message::Exited(status) => {
                    result.status = status;
                    return Ok(result);
                }
                Message::Error(e) => {
                    return Err(Error::AgentRefused {
                        kind: e.kind,
                        errno: e.errno,
                        message: e.message,
                    });
                }
                _ => {}
            }
            if data_len > 0 {
                window.on_data(stream, data_len)?;
                if let Some(increment) = window.on_consumed(data_len) {
                    self.writer
                        .write_frame(&Frame::new(stream, Message::WindowUpdate { increment }))
                        .await?;
                }
            }
        }
    }
}
