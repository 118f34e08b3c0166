//! Decompressing layers on threads of their own.
//!
//! Inflating a gzip layer and creating its files cost about the same (a
//! Debian base layer: ~0.15 s each on one core), and neither waits for the
//! other: a decoder thread fills fixed-size chunks and hands them over a
//! bounded channel to the thread applying the tar stream, which gives the
//! emptied chunks back. At most [`DEPTH`] chunks are in flight per layer,
//! so memory stays bounded whatever the layer's size.
//!
//! ```text
//!  compressed ──▶ [decoder thread] ──chunks──▶ [applier] ──▶ files
//!  reader              ▲                          │
//!                      └──────── empty chunks ────┘
//! ```
//!
//! [`decompressed_layers`] also decodes the next layer while the current
//! one is applied: a small layer full of small files (a base image's `/etc`
//! and `/var`) takes the applier a while, and the next layer's decoder
//! would otherwise sit idle through it.

use std::cell::RefCell;
use std::io::{self, BufRead, BufReader, Read};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender, SyncSender, channel, sync_channel};

use super::affinity::{AvoidFront, FrontCpu};
use super::gzip::GzipReader;
use super::{Compression, LayerStream, halves};

/// Bytes per chunk handed from the decoder to the applier.
pub(super) const CHUNK: usize = 512 * 1024;
/// Chunks in flight (filled and waiting) at most, per layer: 16 MiB, so
/// that the next layer's decoder can run well ahead while the applier is
/// still busy with the current one. On the Debian bench image (a 1 MB
/// layer of ~1000 small files, then the 47 MB one) 4 MiB stalled the big
/// layer's decoder, the pull's critical path, for 7-20 ms: 16 MiB saved a
/// median 4 ms a pull, 32 MiB 5-7 ms (paired runs). At most two layers are
/// in flight, so this bounds decoded data in memory to 32 MiB, plus what a
/// large layer's back thread decodes ahead (`halves::BACK_DEPTH`, 32 MiB).
const DEPTH: usize = 32;

/// Bytes of an uncompressed layer read at a time.
const UNCOMPRESSED_BUF: usize = 256 * 1024;

/// Compressed bytes read at a time by the gzip reader.
pub(super) const GZIP_INPUT_BUF: usize = 128 * 1024;

/// Runs `apply` on the decompressed stream of each layer in turn, until it
/// returns `false`, while the next layer decodes ahead. Compressed layers
/// are decoded on threads of their own; uncompressed ones are read directly.
///
/// Decoder errors reach `apply` as read errors, at the point of the stream
/// where they happened. Decoders of layers never applied (after `apply`
/// stopped) stop at their next chunk. gzip's CRC-32 is checked only if
/// `gzip_crc` (see [`super::UnpackOptions::gzip_crc`]).
pub(super) fn decompressed_layers<'r>(
    layers: Vec<LayerStream<'r>>,
    gzip_crc: bool,
    mut apply: impl FnMut(&mut dyn BufRead, &AtomicBool) -> bool,
) {
    std::thread::scope(|scope| {
        let mut layers = layers.into_iter();
        let start =
            |layer: Option<LayerStream<'r>>| -> Option<(Box<dyn BufRead + 'r>, Arc<AtomicBool>)> {
                let LayerStream {
                    reader,
                    compression,
                    source,
                } = layer?;
                if compression == Compression::None {
                    let reader = BufReader::with_capacity(UNCOMPRESSED_BUF, reader);
                    return Some((Box::new(reader), Arc::new(AtomicBool::new(true))));
                }
                let decoded = Arc::new(AtomicBool::new(false));
                let decoder_decoded = Arc::clone(&decoded);
                let front_cpu = Arc::new(FrontCpu::default());
                let decoder_front_cpu = Arc::clone(&front_cpu);
                let (filled_tx, filled_rx) = sync_channel(DEPTH);
                let (empty_tx, empty_rx) = channel();
                let pool = Pool::new(empty_rx);
                std::thread::Builder::new()
                    .name("msb-decompress".into())
                    .spawn_scoped(scope, move || {
                        match source {
                            // Without the CRC: the back half's bytes are not
                            // seen in order.
                            Some(source) if compression == Compression::Gzip && !gzip_crc => {
                                halves::decode(
                                    reader,
                                    &*source,
                                    filled_tx,
                                    &pool,
                                    &decoder_front_cpu,
                                );
                            }
                            _ => decode(reader, compression, gzip_crc, filled_tx, &pool),
                        }
                        decoder_decoded.store(true, Ordering::Release);
                        // The chunks come back until the applier reaches the
                        // stream's end: freed here, not on the applier's
                        // thread. Freeing gives memory back to the kernel
                        // (glibc trims the heap): ~2 ms of `madvise` at the
                        // end of the Debian bench pull, which the applier
                        // would otherwise spend there while a CPU idles.
                        pool.drain();
                    })
                    .expect("spawning the decompression thread");
                Some((
                    Box::new(Chunks {
                        filled: filled_rx,
                        empty: Some(empty_tx),
                        current: Vec::new(),
                        pos: 0,
                        front_cpu,
                        avoid: AvoidFront::default(),
                    }),
                    decoded,
                ))
            };
        let mut next = start(layers.next());
        while let Some((mut current, decoded)) = next.take() {
            next = start(layers.next());
            if !apply(&mut current, &decoded) {
                break;
            }
        }
        // The streams not applied drop here, before the scope joins their
        // decoders: a decoder blocked on a full channel sees it closed and
        // stops.
    })
}

/// The decompressed stream of `reader` (see [`super::decompress`]).
pub(super) fn decoder<'r>(
    reader: impl Read + Send + 'r,
    compression: Compression,
    gzip_crc: bool,
) -> io::Result<Box<dyn Read + Send + 'r>> {
    Ok(match compression {
        Compression::None => Box::new(reader),
        Compression::Gzip => Box::new(GzipReader::new(reader, GZIP_INPUT_BUF, gzip_crc)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(reader)?),
    })
}

/// The decoder thread: fills chunks from the decoder until the end of the
/// stream, an error (sent on as the last item), or the applier going away.
fn decode<R: Read + Send>(
    reader: R,
    compression: Compression,
    gzip_crc: bool,
    filled: SyncSender<io::Result<Vec<u8>>>,
    pool: &Pool,
) {
    let mut decoder = match decoder(reader, compression, gzip_crc) {
        Ok(decoder) => decoder,
        Err(e) => {
            let _ = filled.send(Err(e));
            return;
        }
    };
    while send_chunk(&mut decoder, &filled, pool) {}
}

/// Decodes a chunk from `decoder` into a chunk from `pool` and sends it on
/// `filled`, an error after the bytes before it. `true` while the stream
/// goes on; `false` once it ended (or stopped), failed, or the applier is
/// gone.
pub(super) fn send_chunk(
    decoder: &mut impl Read,
    filled: &SyncSender<io::Result<Vec<u8>>>,
    pool: &Pool,
) -> bool {
    let mut chunk = pool.take();
    let result = fill(decoder, &mut chunk);
    let len = chunk.len();
    if len > 0 && filled.send(Ok(chunk)).is_err() {
        return false;
    }
    match result {
        Err(e) => {
            let _ = filled.send(Err(e));
            false
        }
        Ok(()) => len == CHUNK,
    }
}

/// The decoder thread's chunks to fill: those the applier gave back, the
/// last one given back first, or new ones.
///
/// The last chunk given back is the one most likely still in a cache:
/// decoding into chunks taken in the order they came back would go round
/// every chunk the layer ever needed (up to [`DEPTH`], 16 MiB, after the
/// applier fell behind once), each written from memory. Decoding the bench
/// layer into 32 chunks in turn instead of one takes 11% longer.
pub(super) struct Pool {
    given_back: Receiver<Vec<u8>>,
    /// Chunks given back and not taken yet, the last given back on top.
    idle: RefCell<Vec<Vec<u8>>>,
}

impl Pool {
    fn new(given_back: Receiver<Vec<u8>>) -> Self {
        Self {
            given_back,
            idle: RefCell::new(Vec::new()),
        }
    }

    /// A chunk to fill.
    pub(super) fn take(&self) -> Vec<u8> {
        let mut idle = self.idle.borrow_mut();
        idle.extend(self.given_back.try_iter());
        idle.pop().unwrap_or_else(|| vec![0; CHUNK])
    }

    /// Waits for the applier to give back its last chunks, which it does
    /// once at the end of the stream (or gone), and frees them all.
    fn drain(self) {
        self.given_back.iter().for_each(drop);
    }
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("idle", &self.idle.borrow().len())
            .finish_non_exhaustive()
    }
}

/// Fills `chunk` with up to [`CHUNK`] bytes from `decoder`: fewer only at
/// the end of its stream (or where it stopped), or on an error, after the
/// bytes before it.
pub(super) fn fill(decoder: &mut impl Read, chunk: &mut Vec<u8>) -> io::Result<()> {
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
    result
}

/// The applier's side: the decoded stream, one chunk at a time.
struct Chunks {
    filled: Receiver<io::Result<Vec<u8>>>,
    /// Where emptied chunks go; dropped at the end of the stream, which
    /// lets the decoder thread end.
    empty: Option<Sender<Vec<u8>>>,
    current: Vec<u8>,
    pos: usize,
    /// Where the decoder's front runs while a back thread decodes, which
    /// the applier keeps off (see `affinity`).
    front_cpu: Arc<FrontCpu>,
    avoid: AvoidFront,
}

impl Chunks {
    /// Gives an emptied chunk back to the decoder thread.
    fn give_back(&self, chunk: Vec<u8>) {
        if chunk.capacity() > 0
            && let Some(empty) = &self.empty
        {
            // The decoder thread may be gone already (it stopped on an
            // error): the chunk is freed here.
            let _ = empty.send(chunk);
        }
    }
}

impl BufRead for Chunks {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        while self.pos == self.current.len() {
            self.avoid.follow(&self.front_cpu);
            match self.filled.recv() {
                Ok(Ok(chunk)) => {
                    let done = std::mem::replace(&mut self.current, chunk);
                    self.pos = 0;
                    self.give_back(done);
                }
                Ok(Err(e)) => return Err(e),
                // The decoder finished (or stopped after an error it sent).
                Err(_) => {
                    let done = std::mem::take(&mut self.current);
                    self.pos = 0;
                    self.give_back(done);
                    self.empty = None;
                    break;
                }
            }
        }
        Ok(&self.current[self.pos..])
    }

    fn consume(&mut self, n: usize) {
        self.pos = (self.pos + n).min(self.current.len());
    }
}

impl Read for Chunks {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let available = self.fill_buf()?;
        let n = buf.len().min(available.len());
        buf[..n].copy_from_slice(&available[..n]);
        self.consume(n);
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

    #[test]
    fn the_pool_hands_out_the_chunk_given_back_last_first() {
        let (tx, rx) = channel();
        let pool = Pool::new(rx);
        let (first, second) = (pool.take(), pool.take());
        let (first_at, second_at) = (first.as_ptr(), second.as_ptr());
        assert_ne!(first_at, second_at);
        tx.send(first).unwrap();
        tx.send(second).unwrap();
        let last = pool.take();
        assert_eq!(last.as_ptr(), second_at);
        let again = pool.take();
        assert_eq!(again.as_ptr(), first_at);
        assert_eq!(again.len(), CHUNK);
        // None left: a new one.
        assert!(![first_at, second_at].contains(&pool.take().as_ptr()));
        drop(tx);
        pool.drain();
    }

    /// One layer through [`decompressed_layers`], returning what `apply`
    /// made of its stream.
    fn decompressed<T>(
        reader: &[u8],
        compression: Compression,
        gzip_crc: bool,
        apply: impl FnOnce(&mut dyn Read) -> T,
    ) -> T {
        let mut apply = Some(apply);
        let mut out = None;
        decompressed_layers(
            vec![LayerStream::new(reader, compression)],
            gzip_crc,
            |stream, _| {
                out = Some((apply.take().expect("one layer"))(stream));
                true
            },
        );
        out.expect("the one layer was applied")
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 1000) as u8).collect()
    }

    #[test]
    fn streams_arrive_whole_across_many_chunks() {
        for len in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 5 * CHUNK + 123, 3 << 20] {
            let data = pattern(len);
            let zstd = zstd::encode_all(&data[..], 1).unwrap();
            for (compression, crc, bytes) in [
                (Compression::None, true, data.clone()),
                (Compression::Gzip, true, gzip(&data)),
                (Compression::Gzip, false, gzip(&data)),
                (Compression::Zstd, true, zstd),
            ] {
                let out = decompressed(&bytes[..], compression, crc, |r| {
                    let mut out = Vec::new();
                    r.read_to_end(&mut out).map(|_| out)
                })
                .unwrap();
                assert!(out == data, "{compression:?} (crc {crc}), {len} bytes");
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
        let err = decompressed(&bytes[..], Compression::Gzip, true, |r| {
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
    fn layers_arrive_in_order_and_stopping_stops_the_decoders_ahead() {
        let big = gzip(&vec![7; 64 << 20]);
        let mut corrupt = gzip(&pattern(2 * CHUNK));
        let n = corrupt.len();
        corrupt[n / 2] ^= 0xff;
        let layers = || {
            vec![
                LayerStream::new(&b"plain"[..], Compression::None),
                LayerStream::new(&big[..], Compression::Gzip),
                LayerStream::new(&corrupt[..], Compression::Gzip),
            ]
        };
        // Every layer, in order; the corrupt one fails when it is read (its
        // CRC, checked here, is what a flipped byte is sure to break).
        let mut seen = Vec::new();
        decompressed_layers(layers(), true, |r, _| {
            let mut out = Vec::new();
            seen.push((
                seen.len(),
                r.read_to_end(&mut out).map(|_| out.len()).is_ok(),
            ));
            true
        });
        assert_eq!(seen, [(0, true), (1, true), (2, false)]);
        // Stopping after the first layer: the decoders of the 64 MiB layer
        // (far more than its channel holds) and the next one stop too.
        let mut applied = 0;
        decompressed_layers(layers(), false, |_, _| {
            applied += 1;
            false
        });
        assert_eq!(applied, 1);
    }

    #[test]
    fn an_applier_that_stops_early_stops_the_decoder() {
        // 64 MiB of zeros: far more than the channel holds. Returning after
        // one read must not hang the scope waiting for the decoder.
        let bytes = gzip(&vec![0; 64 << 20]);
        let first = decompressed(&bytes[..], Compression::Gzip, true, |r| {
            let mut buf = [0; 16];
            r.read(&mut buf).unwrap()
        });
        assert_eq!(first, 16);
    }
}
