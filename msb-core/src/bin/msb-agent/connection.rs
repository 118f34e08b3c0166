//! One host connection: its handshake, its stream ids, its writer, its
//! execs and file operations.
//!
//! Connections are independent: each has its own stream-id space and its
//! own writer task. When one ends (EOF or an error), the processes its execs
//! started are SIGKILLed (with their process groups) and the agent keeps
//! serving the others; in `MSB_AGENT_FD` mode its end is `Shutdown{0}`
//! instead. `Shutdown` on any connection shuts the whole agent down.

use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::time::Duration;

use msb_core::agent::{
    BootTiming, CONNECTION_STREAM, ErrorKind, FrameReader, FrameWriter, Message, RemoteError,
    SUPPORTED_VERSIONS, agent_handshake,
};
use tokio::sync::{mpsc, oneshot};

use crate::channel::{ChannelReader, ChannelWriter};
use crate::exec::{self, Control};
use crate::fs;
use crate::lifecycle::Agent;
use crate::writer::{self, Out};
use crate::{SOFTWARE, micros};

/// How long a connection may take to flush its last frames at shutdown.
const FLUSH: Duration = Duration::from_secs(1);

/// Why a connection's dispatch loop stopped.
#[derive(Debug)]
enum End {
    /// The host closed the connection or it failed.
    Closed,
    /// The host sent `Shutdown`.
    Shutdown(u32),
    /// Something else shut the agent down.
    Agent,
}

/// Serves connection `id` until it ends or the agent shuts down. `timings`
/// are the agent's boot milestones so far; `ready` is added at handshake.
pub async fn serve(
    id: u64,
    r: ChannelReader,
    w: ChannelWriter,
    mut timings: Vec<BootTiming>,
    agent: Rc<Agent>,
) {
    let mut reader = FrameReader::new(r);
    let mut frame_writer = FrameWriter::new(w);
    timings.push(BootTiming {
        phase: "ready".into(),
        micros: micros(agent.started.elapsed()),
    });
    let handshake = agent_handshake(
        &mut reader,
        &mut frame_writer,
        SUPPORTED_VERSIONS,
        SOFTWARE,
        timings,
    );
    let shook = tokio::select! {
        biased;
        _ = agent.shutdown_requested() => return,
        r = handshake => r,
    };
    if let Err(e) = shook {
        if agent.single {
            crate::fail(&format!("handshake failed: {e}"));
        }
        eprintln!("msb-agent: connection {id}: handshake failed: {e}");
        return;
    }
    let out = writer::start(frame_writer);

    let end = dispatch(id, &mut reader, &out, &agent).await;
    drop(reader);
    match end {
        End::Closed if !agent.single => {
            // This connection's processes die with it; the agent lives on.
            let n = agent.registry.borrow().signal_owner(id, libc::SIGKILL);
            if n > 0 {
                eprintln!("msb-agent: connection {id} ended; killed {n} of its processes");
            }
            return;
        }
        End::Closed => agent.request_shutdown(0),
        End::Shutdown(grace_ms) => agent.request_shutdown(grace_ms),
        End::Agent => {}
    }
    agent.all_reaped().await;
    // Let exec tasks queue their last frames, then flush them.
    tokio::task::yield_now().await;
    let (done, flushed) = oneshot::channel();
    if out.send(Out::Flush(done)).await.is_ok() {
        let _ = tokio::time::timeout(FLUSH, flushed).await;
    }
}

/// Reads and dispatches frames until the connection or the agent ends.
async fn dispatch(
    id: u64,
    reader: &mut FrameReader<ChannelReader>,
    out: &mpsc::Sender<Out>,
    agent: &Rc<Agent>,
) -> End {
    let mut used: HashSet<u32> = HashSet::new();
    let mut streams: HashMap<u32, mpsc::UnboundedSender<Control>> = HashMap::new();
    let mut fs_streams: HashMap<u32, mpsc::UnboundedSender<fs::Control>> = HashMap::new();
    loop {
        let read = tokio::select! {
            biased;
            _ = agent.shutdown_requested() => return End::Agent,
            read = reader.read_frame() => read,
        };
        let frame = match read {
            Ok(Some(frame)) => frame,
            Ok(None) => {
                eprintln!("msb-agent: connection {id}: the host closed the channel");
                return End::Closed;
            }
            Err(e) => {
                eprintln!("msb-agent: connection {id}: reading the channel failed: {e}");
                return End::Closed;
            }
        };
        let stream = frame.stream;
        let to_stream = |streams: &mut HashMap<u32, mpsc::UnboundedSender<Control>>, c| {
            if let Some(tx) = streams.get(&stream)
                && tx.send(c).is_err()
            {
                streams.remove(&stream);
            }
        };
        let to_fs = |fs_streams: &mut HashMap<u32, mpsc::UnboundedSender<fs::Control>>, c| {
            if let Some(tx) = fs_streams.get(&stream)
                && tx.send(c).is_err()
            {
                fs_streams.remove(&stream);
            }
        };
        match frame.message {
            Message::Shutdown { grace_ms } => return End::Shutdown(grace_ms),
            Message::Ping { nonce } => {
                let _ = out
                    .send(Out::Frame(CONNECTION_STREAM, Message::Pong { nonce }))
                    .await;
            }
            Message::ExecStart(req) => {
                if !claim(&mut used, stream, out).await {
                    continue;
                }
                let (tx, rx) = mpsc::unbounded_channel();
                streams.insert(stream, tx);
                tokio::task::spawn_local(exec::run(
                    id,
                    stream,
                    req,
                    agent.registry.clone(),
                    out.clone(),
                    rx,
                ));
            }
            Message::FsRequest(req) => {
                if !claim(&mut used, stream, out).await {
                    continue;
                }
                let (tx, rx) = mpsc::unbounded_channel();
                fs_streams.insert(stream, tx);
                tokio::task::spawn_local(fs::run(stream, req, out.clone(), rx));
            }
            Message::FileChunk(data) => to_fs(&mut fs_streams, fs::Control::Chunk(data)),
            Message::FileEnd => to_fs(&mut fs_streams, fs::Control::End),
            Message::WindowUpdate { increment } => {
                to_stream(&mut streams, Control::Window(increment));
                to_fs(&mut fs_streams, fs::Control::Window(increment));
            }
            Message::Signal { signal } => to_stream(&mut streams, Control::Signal(signal)),
            Message::Kill => to_stream(&mut streams, Control::Kill),
            Message::Reset => {
                to_stream(&mut streams, Control::Reset);
                streams.remove(&stream);
                to_fs(&mut fs_streams, fs::Control::Reset);
                fs_streams.remove(&stream);
            }
            Message::Stdin(data) => to_stream(&mut streams, Control::Stdin(data)),
            Message::StdinClose => to_stream(&mut streams, Control::StdinClose),
            Message::Resize(size) => to_stream(&mut streams, Control::Resize(size)),
            // Nothing else is meaningful from the host.
            _ => {}
        }
    }
}

/// Marks `stream` used; a stream id used before gets `Error{StreamInUse}`
/// and `false`.
async fn claim(used: &mut HashSet<u32>, stream: u32, out: &mpsc::Sender<Out>) -> bool {
    if used.insert(stream) {
        return true;
    }
    reply_error(
        out,
        stream,
        ErrorKind::StreamInUse,
        "stream id already used",
    )
    .await;
    false
}

async fn reply_error(out: &mpsc::Sender<Out>, stream: u32, kind: ErrorKind, message: &str) {
    let error = RemoteError {
        kind,
        errno: 0,
        message: message.to_owned(),
    };
    let _ = out.send(Out::Frame(stream, Message::Error(error))).await;
}
