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

/// Queues one item in `writer` (a flush request flushes and answers).
async fn queue(writer: &mut FrameWriter<ChannelWriter>, item: Out) -> msb_core::Result<()> {
    match item {
        Out::Frame(stream, message) => writer.feed(&Frame::new(stream, message)).await,
        Out::Data(kind, stream, data) => writer.feed_data(kind, stream, &data).await,
        Out::Flush(done) => {
            let result = writer.flush().await;
            let _ = done.send(());
            result
        }
    }
}

/// Queue depth; data is bounded per stream by its window on top of this.
pub const QUEUE: usize = 64;

/// Starts the writer task; it ends when every sender is gone or a write fails.
pub fn start(mut writer: FrameWriter<ChannelWriter>) -> mpsc::Sender<Out> {
    let (tx, mut rx) = mpsc::channel::<Out>(QUEUE);
    tokio::task::spawn_local(async move {
        while let Some(first) = rx.recv().await {
            // Queue what is already waiting behind the first item, then
            // write the batch with one flush.
            let mut result = queue(&mut writer, first).await;
            while result.is_ok() {
                let Ok(item) = rx.try_recv() else { break };
                result = queue(&mut writer, item).await;
            }
            if result.is_ok() {
                result = writer.flush().await;
            }
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
