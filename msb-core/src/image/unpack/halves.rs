//! A gzip layer decoded on two threads: the front as it arrives, the back
//! once the whole layer is there.
//!
//! Inflating is a cold pull's critical path, and one thread's work: once a
//! large layer has downloaded, its decoder still has most of the stream
//! ahead, while the other CPU mostly waits for what it decodes. With a
//! [`LayerSource`], the decoder thread (the *front*) watches for the whole
//! layer to be readable; then it starts a *back* thread on the stream's
//! last [`BACK_SHARE`] percent:
//!
//! ```text
//!  front: ──decodes from the start────────────▶ stops before block B, sends
//!                                               the head (markers resolved)
//!                                               and the back's chunks, then
//!                                               decodes on with its decoder
//!                                                   ▲
//!  back:          finds block B past the split,     │
//!                 decodes its head with markers,    │
//!                 resumes after it ─▶ chunks ───────┘ (and its decoder)
//! ```
//!
//! The back thread finds a block past the split point and decodes from it
//! (see `inflate::split`), telling the front where. It passes over stored
//! data, whose already-compressed files hold deflate streams that decode
//! like blocks (on the Debian bench layer, 6 of 30 splits were lost to
//! them), and searches further on where such a stretch leaves it nothing
//! to start from. The front stops there
//! if, and only if, a block really starts there: then the outputs join
//! exactly. The front resolves the head's markers from its last 32 KiB and
//! sends the head on, then the back thread's chunks (at most
//! [`BACK_DEPTH`] wait for it), then takes the back thread's decoder over
//! and decodes the rest itself. If the front goes past the block instead,
//! or the back thread finds none, the back thread is dropped and the front
//! decodes alone, as without a source.
//!
//! The back thread only uses a CPU nothing else wants (`SCHED_IDLE`): the
//! front, the applier and the download it would slow are the pull's
//! critical path, and its work only pays off once the front is done. On the
//! Debian bench image it saved about 9 ms of a 190 ms cold pull with
//! 16 MiB decoded ahead, and 32 MiB saved 6.6 ms more (medians of 40
//! paired pulls): the other CPU's spare time while one thread inflated.
//!
//! Everything the back thread does before the take-over is speculative:
//! its errors only count once the front has confirmed the block; the gzip
//! trailer's length check waits for the front's share of the member.

use std::io::{self, Read};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender, SyncSender, TryRecvError, channel, sync_channel};

use super::LayerSource;
use super::affinity::FrontCpu;
use super::decode::{CHUNK, GZIP_INPUT_BUF, Pool, fill, send_chunk};
use super::gzip::GzipReader;
use super::inflate::{Head, LOOKBACK, Stop, find_head};

/// Compressed bytes the back half must have at least to be worth a thread
/// (less in tests, which would otherwise need tens of MiB of data).
const MIN_BACK: u64 = if cfg!(test) { 256 << 10 } else { 4 << 20 };

/// The share of the compressed bytes still ahead of the front that the back
/// thread takes, in percent: about what it decodes into [`BACK_DEPTH`]
/// before the front gets there, on the Debian bench layer. With less, it
/// reached the end of the stream and idled while the front still decoded
/// (45%: 1.7 ms slower, median of 40 paired pulls); with more, the front
/// decodes the rest of it after the take-over.
const BACK_SHARE: u64 = 55;

/// Chunks the back thread decodes ahead of the take-over at most: 32 MiB
/// (the bench pull's peak RSS went from 43 to 53-62 MiB). With 16 MiB
/// it waited, full, for 20-25 ms while the front went on alone and a CPU
/// idled: 6.6 ms slower, median of 40 paired pulls of the Debian bench
/// image, memory primed as the bench does (an earlier session measured
/// 2.5 ms).
const BACK_DEPTH: usize = 64;

/// Compressed bytes read for finding a block and decoding its head: enough
/// for the heads seen on real layers (up to 600 KiB of compressed data)
/// after a scan of up to 256 KiB; four times as much if that is not.
const REGION: u64 = 1 << 20;

/// Places the back thread searches for a block from, [`SCAN_STEP`] apart.
const SEARCHES: u64 = 3;

/// How far apart those places are: past what one search looks through.
const SCAN_STEP: u64 = 1 << 20;

/// Output of a head at most, before giving up on the split.
const MAX_HEAD: usize = 8 << 20;

/// Whether the front waits for the back thread to find its block, and the
/// back thread runs at normal priority: in tests, so that a split happens
/// whatever else keeps the machine busy.
const DETERMINISTIC: bool = cfg!(test);

/// The back thread's decoder.
type BackDecoder<'s> = GzipReader<SourceReader<'s>>;

/// What the back thread sends the front.
enum Piece {
    /// A chunk, or the error that ended its stream.
    Chunk(io::Result<Vec<u8>>),
    /// The trailer of the member it started in: ISIZE, and the bytes of the
    /// member it produced.
    Length(u32, u64),
}

/// The front's handle on a back thread.
struct Back<'s> {
    /// The head, once found; closed if none was.
    found: Receiver<Head>,
    head: Option<Head>,
    pieces: Receiver<Piece>,
    /// The decoder, sent once asked for by `take_over`, if not at its end.
    decoder: Receiver<BackDecoder<'s>>,
    take_over: &'s AtomicBool,
    _abandon: Abandon<'s>,
}

/// Tells the back thread, when dropped, that the front goes on without it:
/// a search for its block stops at once, where on a hostile stream it could
/// take long (the decoder thread waits for it before it ends).
struct Abandon<'s>(&'s AtomicBool);

impl Drop for Abandon<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Decodes the gzip stream `reader` (without checking CRCs) into chunks on
/// `filled`, as `decode::decode` does, with a back thread once `source`
/// holds the whole stream. See the [module docs](self).
pub(super) fn decode<R: Read + Send>(
    reader: R,
    source: &dyn LayerSource,
    filled: SyncSender<io::Result<Vec<u8>>>,
    pool: &Pool,
    front_cpu: &FrontCpu,
) {
    let mut front = GzipReader::new(reader, GZIP_INPUT_BUF, false);
    let take_over = AtomicBool::new(false);
    let abandoned = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let mut back: Option<Back<'_>> = None;
        let mut planned = false;
        loop {
            if !send_chunk(&mut front, &filled, pool) {
                // The end of the stream, or the block the back thread found
                // (or an error, sent on, or the applier gone).
                if front.stop() == Stop::Reached
                    && let Some(back) = back
                {
                    finish_with(&front, back, &filled, pool, front_cpu);
                }
                front_cpu.clear();
                return;
            }
            if !planned && let Some(total) = source.complete_len() {
                planned = true;
                back = front.bit_position().and_then(|bit| {
                    start_back(scope, source, bit / 8, total, (&take_over, &abandoned))
                });
            }
            back = back.and_then(|b| watch(&mut front, b));
            // Again after each chunk: the front may have moved.
            match back {
                Some(_) => front_cpu.here(),
                None => front_cpu.clear(),
            }
        }
    });
}

/// Starts a back thread on the last [`BACK_SHARE`] percent of the stream
/// from byte `front` to `total`, if that is worth it.
fn start_back<'s>(
    scope: &'s std::thread::Scope<'s, '_>,
    source: &'s dyn LayerSource,
    front: u64,
    total: u64,
    (take_over, abandoned): (&'s AtomicBool, &'s AtomicBool),
) -> Option<Back<'s>> {
    let back = total.checked_sub(front)? * BACK_SHARE / 100;
    if back < MIN_BACK {
        return None;
    }
    let at = total - back;
    let (found_tx, found) = channel();
    let (pieces_tx, pieces) = sync_channel(BACK_DEPTH);
    let (decoder_tx, decoder) = channel();
    let spawned = std::thread::Builder::new()
        .name("msb-decomp-back".into())
        .spawn_scoped(scope, move || {
            if !DETERMINISTIC {
                run_idle();
            }
            let Some(mut back) = find_back(source, at, total, found_tx, abandoned) else {
                return;
            };
            if decode_ahead(&mut back, &pieces_tx, take_over) {
                let _ = decoder_tx.send(back);
            }
        });
    if let Err(e) = spawned {
        tracing::debug!(error = %e, "no second decoder thread");
        return None;
    }
    tracing::debug!(
        front,
        at,
        total,
        "decoding the back of a layer on a second thread"
    );
    Some(Back {
        found,
        head: None,
        pieces,
        decoder,
        take_over,
        _abandon: Abandon(abandoned),
    })
}

/// Puts the calling thread in the `SCHED_IDLE` class: it runs only when a
/// CPU has nothing else to run. Best effort.
fn run_idle() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a valid `sched_param` for the call's duration; pid
    // 0 is the calling thread. Any thread may lower itself to SCHED_IDLE.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) } != 0 {
        tracing::debug!(error = %io::Error::last_os_error(), "the second decoder runs at normal priority");
    }
}

/// Checks on the back thread after each chunk: tells the front where to
/// stop once the back thread found its block; drops the back thread if it
/// found none, or the front went past its block.
fn watch<'s, R: Read>(front: &mut GzipReader<R>, mut back: Back<'s>) -> Option<Back<'s>> {
    if back.head.is_none() {
        let found = if DETERMINISTIC {
            back.found.recv().map_err(|_| TryRecvError::Disconnected)
        } else {
            back.found.try_recv()
        };
        match found {
            Ok(head) => {
                front.stop_at(head.start_bit);
                back.head = Some(head);
            }
            Err(TryRecvError::Empty) => {}
            Err(TryRecvError::Disconnected) => return None,
        }
    } else if front.stop() == Stop::Missed {
        tracing::debug!("the second decoder's block was no block: decoding on one thread");
        return None;
    }
    Some(back)
}

/// The front stopped before the back thread's block: sends the head on,
/// its markers resolved, then what the back thread decoded, then decodes
/// the rest with the back thread's decoder.
fn finish_with<R: Read>(
    front: &GzipReader<R>,
    back: Back<'_>,
    filled: &SyncSender<io::Result<Vec<u8>>>,
    pool: &Pool,
    front_cpu: &FrontCpu,
) {
    let head = back.head.expect("the front stops only at a head's block");
    let resolved = head.resolve(&front.history());
    let failed = resolved.is_err();
    if filled.send(resolved).is_err() || failed {
        return;
    }
    // The member's bytes before the back thread's first.
    let before = front.member_out() + head.len() as u64;
    back.take_over.store(true, Ordering::Release);
    // The back thread stops: from here on the applier has the back thread's
    // chunks to write, and wants a CPU of its own.
    front_cpu.clear();
    #[cfg(test)]
    tests::TAKE_OVERS.fetch_add(1, Ordering::Relaxed);
    // The back thread sends its decoder after its last piece.
    for piece in back.pieces.iter() {
        let item = match piece {
            Piece::Chunk(item) => item,
            Piece::Length(isize, produced) => match check_length(isize, before + produced) {
                Ok(()) => continue,
                Err(e) => Err(e),
            },
        };
        let failed = item.is_err();
        if filled.send(item).is_err() || failed {
            return;
        }
    }
    let Ok(mut decoder) = back.decoder.recv() else {
        // It reached the end of the stream.
        return;
    };
    loop {
        let mut chunk = pool.take();
        let result = fill(&mut UntilTrailer(&mut decoder), &mut chunk);
        let len = chunk.len();
        if len > 0 && filled.send(Ok(chunk)).is_err() {
            return;
        }
        // A short chunk is the end of the stream, or of the member the
        // decoder resumed in (see `UntilTrailer`).
        let length = decoder.take_deferred_length();
        let result = match length {
            Some((isize, produced)) => result.and(check_length(isize, before + produced)),
            None => result,
        };
        match result {
            Err(e) => {
                let _ = filled.send(Err(e));
                return;
            }
            Ok(()) if len < CHUNK && length.is_none() => return,
            Ok(()) => {}
        }
    }
}

/// The gzip trailer's check of a member's length (mod 2^32, as the format
/// has it).
fn check_length(isize: u32, len: u64) -> io::Result<()> {
    if isize == len as u32 {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "gzip member length does not match its data",
        ))
    }
}

/// The back thread's start: finds a block at or after byte `at` (of
/// `total`), tells the front, and returns a decoder that resumes after its
/// head; `None` if there is no block to be found, or no one to tell.
fn find_back<'s>(
    source: &'s dyn LayerSource,
    at: u64,
    total: u64,
    found: Sender<Head>,
    abandoned: &AtomicBool,
) -> Option<BackDecoder<'s>> {
    let mut head = None;
    // A stretch of stored blocks (already-compressed files) can hold no
    // block to start from for longer than a search looks: then further on.
    let starts = (0..SEARCHES)
        .map(|i| at + i * SCAN_STEP)
        .take_while(|&s| s < total);
    'search: for start in starts {
        if abandoned.load(Ordering::Relaxed) {
            break;
        }
        // The bytes before `start` let the search recognize stored data.
        let from = start.saturating_sub(LOOKBACK);
        for len in [REGION, 4 * REGION] {
            let region = read_region(source, from, len.min(total - from) as usize);
            head = find_head(&region, from, 8 * start, MAX_HEAD, abandoned);
            if head.is_some() {
                break 'search;
            }
            if (region.len() as u64) < len {
                break;
            }
        }
    }
    let Some(head) = head else {
        tracing::debug!(at, "no block found for a second decoder");
        return None;
    };
    let (resume, history) = (head.resume_bit, head.history());
    found.send(head).ok()?;
    let reader = SourceReader {
        source,
        at: resume / 8,
    };
    let skip = (resume % 8) as u32;
    GzipReader::resume(reader, GZIP_INPUT_BUF, resume / 8, skip, &history).ok()
}

/// The back thread's decoding: chunks to `pieces` (blocking while
/// [`BACK_DEPTH`] wait) until `take_over` is set (then `true`: the front
/// wants the decoder), the end of the stream or an error (sent on), or the
/// front going on alone.
fn decode_ahead(
    back: &mut BackDecoder<'_>,
    pieces: &SyncSender<Piece>,
    take_over: &AtomicBool,
) -> bool {
    loop {
        if take_over.load(Ordering::Acquire) {
            return true;
        }
        let mut chunk = vec![0; CHUNK];
        let result = fill(&mut UntilTrailer(back), &mut chunk);
        let len = chunk.len();
        if len > 0 && pieces.send(Piece::Chunk(Ok(chunk))).is_err() {
            return false;
        }
        if let Some((isize, produced)) = back.take_deferred_length() {
            if pieces.send(Piece::Length(isize, produced)).is_err() {
                return false;
            }
            continue;
        }
        match result {
            Err(e) => {
                let _ = pieces.send(Piece::Chunk(Err(e)));
                return false;
            }
            Ok(()) if len < CHUNK => return false,
            Ok(()) => {}
        }
    }
}

/// Reads of a [`GzipReader`] that end (read 0) at the trailer of the
/// member it resumed in, so that its length is checked before anything
/// after it goes on.
struct UntilTrailer<'a, R>(&'a mut GzipReader<R>);

impl<R: Read> Read for UntilTrailer<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.0.has_deferred_length() {
            return Ok(0);
        }
        self.0.read(buf)
    }
}

/// Reads `source` from a byte on.
struct SourceReader<'a> {
    source: &'a dyn LayerSource,
    at: u64,
}

impl Read for SourceReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.source.read_at(buf, self.at)?;
        self.at += n as u64;
        Ok(n)
    }
}

/// Up to `len` bytes of `source` from `offset`: fewer if it ends or fails
/// before (a block may be found in them all the same; the decoder resuming
/// after it meets the error then).
fn read_region(source: &dyn LayerSource, offset: u64, len: usize) -> Vec<u8> {
    let mut region = vec![0; len];
    let mut filled = 0;
    while filled < len {
        match source.read_at(&mut region[filled..], offset + filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    region.truncate(filled);
    region
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::atomic::AtomicUsize;

    use super::super::decode::decompressed_layers;
    use super::super::{Compression, LayerStream};
    use super::*;

    /// Take-overs so far: the tests below check that the back thread's
    /// decoding was used, not just correct.
    pub(super) static TAKE_OVERS: AtomicUsize = AtomicUsize::new(0);

    /// The tests that count take-overs run one at a time.
    static COUNTING: std::sync::Mutex<()> = std::sync::Mutex::new(());

    /// A layer in memory, whole from the start, whose reads past `fail_at`
    /// fail (as a cancelled pull's do).
    struct Whole {
        bytes: Vec<u8>,
        fail_at: u64,
    }

    impl LayerSource for Whole {
        fn complete_len(&self) -> Option<u64> {
            Some(self.bytes.len() as u64)
        }

        fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
            if offset >= self.fail_at {
                return Err(io::Error::other("cancelled"));
            }
            let bytes = self.bytes.get(offset as usize..).unwrap_or_default();
            let n = buf
                .len()
                .min(bytes.len())
                .min((self.fail_at - offset) as usize);
            buf[..n].copy_from_slice(&bytes[..n]);
            Ok(n)
        }
    }

    /// Data like a layer's (see `files_like`): a back thread finds its block
    /// in it wherever it looks.
    fn real_bytes(len: usize) -> Vec<u8> {
        test_utils::fuzz::files_like(len, 7)
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    /// Decodes `bytes` as the applier reads a layer with a source: what it
    /// read, and the error that ended it.
    fn decode_layer(bytes: &[u8], fail_at: u64) -> (Vec<u8>, Option<io::Error>) {
        let source = Whole {
            bytes: bytes.to_vec(),
            fail_at,
        };
        let layer =
            LayerStream::new(bytes, Compression::Gzip).with_source(std::sync::Arc::new(source));
        let mut out = Vec::new();
        let mut error = None;
        decompressed_layers(vec![layer], false, |r, _| {
            error = r.read_to_end(&mut out).err();
            true
        });
        (out, error)
    }

    #[test]
    fn a_large_layer_decodes_on_two_threads_exactly() {
        let _counting = COUNTING.lock().unwrap_or_else(|p| p.into_inner());
        let data = real_bytes(6 << 20);
        let mut bytes = gzip(&data);
        let second = gzip(b"a second member");
        bytes.extend_from_slice(&second);
        let before = TAKE_OVERS.load(Ordering::Relaxed);
        let (out, error) = decode_layer(&bytes, u64::MAX);
        assert!(error.is_none(), "{error:?}");
        assert!(out[..data.len()] == data[..] && out[data.len()..] == b"a second member"[..]);
        assert!(
            TAKE_OVERS.load(Ordering::Relaxed) > before,
            "the back thread was not used"
        );

        // A wrong length in the first member's trailer fails after its data.
        let isize_at = bytes.len() - second.len() - 4;
        bytes[isize_at] ^= 1;
        let (out, error) = decode_layer(&bytes, u64::MAX);
        assert_eq!(error.unwrap().kind(), io::ErrorKind::InvalidData);
        assert!(out == data);
    }

    #[test]
    fn a_layer_without_a_block_to_find_decodes_on_one_thread() {
        let _counting = COUNTING.lock().unwrap_or_else(|p| p.into_inner());
        // Stored blocks only: nothing a back thread could start from.
        let data = real_bytes(3 << 20);
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::none());
        e.write_all(&data).unwrap();
        let bytes = e.finish().unwrap();
        let before = TAKE_OVERS.load(Ordering::Relaxed);
        let (out, error) = decode_layer(&bytes, u64::MAX);
        assert!(error.is_none() && out == data);
        assert_eq!(TAKE_OVERS.load(Ordering::Relaxed), before);
    }

    #[test]
    fn a_stored_stretch_at_the_split_point_is_searched_past() {
        let _counting = COUNTING.lock().unwrap_or_else(|p| p.into_inner());
        // Noise is stored as it is: no block starts in it for longer than a
        // search looks. The back thread's split point falls in it.
        let mut data = real_bytes(3 << 20);
        data.extend(test_utils::fuzz::noise(5 << 19, 3));
        data.extend(real_bytes(3 << 20));
        let bytes = gzip(&data);
        let before = TAKE_OVERS.load(Ordering::Relaxed);
        let (out, error) = decode_layer(&bytes, u64::MAX);
        assert!(error.is_none() && out == data);
        assert!(
            TAKE_OVERS.load(Ordering::Relaxed) > before,
            "the back thread was not used"
        );
    }

    #[test]
    fn errors_in_the_back_half_are_the_streams_errors() {
        let _counting = COUNTING.lock().unwrap_or_else(|p| p.into_inner());
        let data = real_bytes(6 << 20);
        let bytes = gzip(&data);
        // What reading it in one piece gives: the bytes before its error
        // (wrong ones too, where corruption still decodes), and the error.
        let serial = |bytes: &[u8]| {
            let mut reader = GzipReader::new(bytes, 1 << 16, false);
            let (mut out, mut buf) = (Vec::new(), vec![0; 1 << 16]);
            loop {
                match reader.read(&mut buf) {
                    Ok(0) => return (out, None),
                    Ok(n) => out.extend_from_slice(&buf[..n]),
                    Err(e) => return (out, Some(e.kind())),
                }
            }
        };
        let near_end = bytes.len() * 95 / 100;
        let mut corrupt = bytes.clone();
        for b in &mut corrupt[near_end..near_end + 64] {
            *b ^= 0x5a;
        }
        let truncated = bytes[..near_end].to_vec();
        let cases = [
            ("corrupt", corrupt.clone(), u64::MAX, serial(&corrupt)),
            ("truncated", truncated.clone(), u64::MAX, serial(&truncated)),
            // Failing reads, as a cancelled pull's: the same bytes before.
            (
                "failing reads",
                bytes.clone(),
                near_end as u64,
                (serial(&truncated).0, Some(io::ErrorKind::Other)),
            ),
        ];
        for (what, bytes, fail_at, (expected_out, expected_err)) in cases {
            assert!(expected_err.is_some(), "{what}: no error to expect");
            let before = TAKE_OVERS.load(Ordering::Relaxed);
            let (out, error) = decode_layer(&bytes, fail_at);
            assert_eq!(error.map(|e| e.kind()), expected_err, "{what}");
            // Decoders give up a read's partial output with its error: the
            // lengths differ by where their reads began.
            let n = out.len().min(expected_out.len());
            assert!(out[..n] == expected_out[..n], "{what}: other bytes");
            assert!(
                n > data.len() * 3 / 4,
                "{what}: {} bytes before the error",
                out.len()
            );
            assert!(
                TAKE_OVERS.load(Ordering::Relaxed) > before,
                "{what}: no take-over"
            );
        }
    }

    /// Streams damaged in their back half (bytes flipped, spans cut or
    /// zeroed, a trailer changed) read on two threads as they read in one
    /// piece: the same error, after the same bytes.
    #[test]
    fn damaged_streams_read_on_two_threads_as_in_one_piece() {
        let _counting = COUNTING.lock().unwrap_or_else(|p| p.into_inner());
        let before = TAKE_OVERS.load(Ordering::Relaxed);
        let seed = std::env::var("MSB_FUZZ_SEED")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0x4a1f_u64);
        let mut rng = test_utils::fuzz::Rng::new(seed);
        let data = real_bytes(4 << 20);
        let clean = gzip(&data);
        let half = clean.len() / 2;
        for case in 0..test_utils::fuzz::iterations(24) {
            let mut bytes = clean.clone();
            let at = half + rng.below(clean.len() - half);
            match rng.below(4) {
                0 => {
                    for _ in 0..1 + rng.below(4) {
                        let i = half + rng.below(clean.len() - half);
                        bytes[i] ^= 1 << rng.below(8);
                    }
                }
                1 => bytes.truncate(at),
                2 => {
                    let end = (at + 1 + rng.below(4096)).min(bytes.len());
                    bytes[at..end].fill(0);
                }
                _ => {
                    let i = clean.len() - 1 - rng.below(8);
                    bytes[i] ^= 1 << rng.below(8);
                }
            }
            let mut serial = GzipReader::new(&bytes[..], 1 << 16, false);
            let (mut expected, mut buf) = (Vec::new(), vec![0; 1 << 16]);
            let expected_err = loop {
                match serial.read(&mut buf) {
                    Ok(0) => break None,
                    Ok(n) => expected.extend_from_slice(&buf[..n]),
                    Err(e) => break Some(e.kind()),
                }
            };
            let (out, error) = decode_layer(&bytes, u64::MAX);
            let what = format!("case {case} (seed {seed})");
            assert_eq!(error.map(|e| e.kind()), expected_err, "{what}");
            if expected_err.is_none() {
                assert!(out == expected, "{what}: other bytes");
            } else {
                // A decoder gives up a read's partial output with its error.
                let n = out.len().min(expected.len());
                assert!(out[..n] == expected[..n], "{what}: other bytes");
            }
        }
        assert!(TAKE_OVERS.load(Ordering::Relaxed) > before, "no take-over");
    }

    #[test]
    fn an_applier_that_stops_early_stops_both_threads() {
        let data = real_bytes(6 << 20);
        let bytes = gzip(&data);
        let source = Whole {
            bytes: bytes.clone(),
            fail_at: u64::MAX,
        };
        let layer = LayerStream::new(&bytes[..], Compression::Gzip)
            .with_source(std::sync::Arc::new(source));
        let mut first = [0; 16];
        decompressed_layers(vec![layer], false, |r, _| {
            // Past the point where the back thread starts, then gone.
            let mut sink = vec![0; 1 << 20];
            for _ in 0..3 {
                r.read_exact(&mut sink).unwrap();
            }
            r.read_exact(&mut first).unwrap();
            false
        });
        assert_eq!(first[..], data[3 << 20..(3 << 20) + 16]);
    }
}
