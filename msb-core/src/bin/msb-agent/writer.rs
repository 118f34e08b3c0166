//! The single writer of the channel: every task queues frames here, so
//! frames never interleave and no write is ever cancelled midway.

use msb_core::agent::Frame;
use msb_core::agent::{FrameWriter, Message, MessageKind};
use tokio::sync::{mpsc, oneshot};

use crate::channel::ChannelWriter;

/// Something to write.
#[derive(Debug)]
pub enum Out {
    /// A message on a stream.
    Frame(u32, Message),
    /// A data frame (`Stdout`, `Stderr`), written without re-encoding.
    Data(MessageKind, u32, Vec<u8>),
    /// Answered once everything queued before it has been written.
    Flush(oneshot::Sender<()>),
}

/// Queue depth; data is bounded per stream by its window on top of this.
pub const QUEUE: usize = 64;

/// Starts the writer task; it ends when every sender is gone or a write fails.
pub fn start(mut writer: FrameWriter<ChannelWriter>) -> mpsc::Sender<Out> {
    let (tx, mut rx) = mpsc::channel::<Out>(QUEUE);
    tokio::task::spawn_local(async move {
        while let Some(item) = rx.recv().await {
            let result = match item {
                Out::Frame(stream, message) => {
                    writer.write_frame(&Frame::new(stream, message)).await
                }
                Out::Data(kind, stream, data) => writer.write_data(kind, stream, &data).await,
                Out::Flush(done) => {
                    let _ = done.send(());
                    Ok(())
                }
            };
            if let Err(e) = result {
                eprintln!("msb-agent: writing to the channel failed: {e}");
                // Drain so that senders never block on a dead channel.
                while let Some(item) = rx.recv().await {
                    if let Out::Flush(done) = item {
                        let _ = done.send(());
                    }
                }
                return;
            }
        }
    });
    tx
}
