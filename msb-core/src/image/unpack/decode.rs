//! Decompressing a layer on a thread of its own.
//!
//! Inflating a gzip layer and creating its files cost about the same (a
//! Debian base layer: ~0.2 s each on one core), and neither waits for the
//! other: the decoder thread fills fixed-size chunks and hands them over a
//! bounded channel to the thread applying the tar stream, which gives the
//! emptied chunks back. At most [`DEPTH`] chunks are in flight, so memory
//! stays bounded whatever the layer's size.
//!
//! ```text
//!  compressed ──▶ [decoder thread] ──chunks──▶ [applier] ──▶ files
//!  reader              ▲                          │
//!                      └──────── empty chunks ────┘
//! ```

use std::io::{self, Read};
use std::sync::mpsc::{Receiver, Sender, SyncSender, channel, sync_channel};

use super::Compression;

/// Bytes per chunk handed from the decoder to the applier.
const CHUNK: usize = 512 * 1024;
/// Chunks in flight (filled and waiting) at most.
const DEPTH: usize = 8;

/// Runs `apply` on the decompressed stream of `reader`. Compressed streams
/// are decoded on a second thread while `apply` runs; an uncompressed one
/// is read directly.
///
/// Decoder errors reach `apply` as read errors, at the point of the stream
/// where they happened. When `apply` returns early (an error), the decoder
/// thread stops at its next chunk.
pub(super) fn decompressed<R, T>(
    reader: R,
    compression: Compression,
    apply: impl FnOnce(&mut dyn Read) -> T,
) -> T
where
    R: Read + Send,
{
    if compression == Compression::None {
        let mut reader = reader;
        return apply(&mut reader);
    }
    let (filled_tx, filled_rx) = sync_channel(DEPTH);
    let (empty_tx, empty_rx) = channel();
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("msb-decompress".into())
            .spawn_scoped(scope, move || {
                decode(reader, compression, filled_tx, empty_rx)
            })
            .expect("spawning the decompression thread");
        let mut chunks = Chunks {
            filled: filled_rx,
            empty: empty_tx,
            current: Vec::new(),
            pos: 0,
        };
        apply(&mut chunks)
        // `chunks` drops here, before the scope joins the decoder: a decoder
        // blocked on a full channel sees it closed and stops.
    })
}

/// The decoder thread: fills chunks from the decoder until the end of the
/// stream, an error (sent on as the last item), or the applier going away.
fn decode<R: Read>(
    reader: R,
    compression: Compression,
    filled: SyncSender<io::Result<Vec<u8>>>,
    empty: Receiver<Vec<u8>>,
) {
    let mut decoder: Box<dyn Read> = match compression {
        Compression::None => Box::new(reader),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(reader)),
        Compression::Zstd => match zstd::stream::read::Decoder::new(reader) {
            Ok(decoder) => Box::new(decoder),
            Err(e) => {
                let _ = filled.send(Err(e));
                return;
            }
        },
    };
    loop {
        let mut chunk = empty.try_recv().unwrap_or_else(|_| vec![0; CHUNK]);
        chunk.resize(CHUNK, 0);
        let mut len = 0;
        let result = loop {
            match decoder.read(&mut chunk[len..]) {
                Ok(0) => break Ok(()),
                Ok(n) => {
                    len += n;
                    if len == CHUNK {
                        break Ok(());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
        };
        chunk.truncate(len);
        if len > 0 && filled.send(Ok(chunk)).is_err() {
            return;
        }
        match result {
            Err(e) => {
                let _ = filled.send(Err(e));
                return;
            }
            Ok(()) if len < CHUNK => return,
            Ok(()) => {}
        }
    }
}

/// The applier's side: the decoded stream, one chunk at a time.
struct Chunks {
    filled: Receiver<io::Result<Vec<u8>>>,
    empty: Sender<Vec<u8>>,
    current: Vec<u8>,
    pos: usize,
}

impl Read for Chunks {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.current.len() {
            match self.filled.recv() {
                Ok(Ok(chunk)) => {
                    let done = std::mem::replace(&mut self.current, chunk);
                    self.pos = 0;
                    if done.capacity() > 0 {
                        // The decoder may be gone already: the chunk is freed.
                        let _ = self.empty.send(done);
                    }
                }
                Ok(Err(e)) => return Err(e),
                // The decoder finished (or stopped after an error it sent).
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len() - self.pos);
        buf[..n].copy_from_slice(&self.current[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(data).unwrap();
        encoder.finish().unwrap()
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 1000) as u8).collect()
    }

    #[test]
    fn streams_arrive_whole_across_many_chunks() {
        for len in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 5 * CHUNK + 123, 3 << 20] {
            let data = pattern(len);
            let zstd = zstd::encode_all(&data[..], 1).unwrap();
            for (compression, bytes) in [
                (Compression::None, data.clone()),
                (Compression::Gzip, gzip(&data)),
                (Compression::Zstd, zstd),
            ] {
                let out = decompressed(&bytes[..], compression, |r| {
                    let mut out = Vec::new();
                    r.read_to_end(&mut out).map(|_| out)
                })
                .unwrap();
                assert!(out == data, "{compression:?}, {len} bytes");
            }
        }
    }

    #[test]
    fn a_corrupt_stream_is_a_read_error_after_the_good_part() {
        let data = pattern(4 * CHUNK);
        let mut bytes = gzip(&data);
        let at = bytes.len() - 20;
        bytes[at] ^= 0xff;
        let mut got = 0;
        let err = decompressed(&bytes[..], Compression::Gzip, |r| {
            let mut buf = vec![0; 64 * 1024];
            loop {
                match r.read(&mut buf) {
                    Ok(0) => return None,
                    Ok(n) => got += n,
                    Err(e) => return Some(e),
                }
            }
        });
        assert!(err.is_some(), "corruption went unnoticed");
        assert!(got < data.len(), "{got}");
    }

    #[test]
    fn an_applier_that_stops_early_stops_the_decoder() {
        // 64 MiB of zeros: far more than the channel holds. Returning after
        // one read must not hang the scope waiting for the decoder.
        let bytes = gzip(&vec![0; 64 << 20]);
        let first = decompressed(&bytes[..], Compression::Gzip, |r| {
            let mut buf = [0; 16];
            r.read(&mut buf).unwrap()
        });
        assert_eq!(first, 16);
    }
}
