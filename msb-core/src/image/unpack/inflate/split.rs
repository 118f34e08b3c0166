//! Decoding a deflate stream from its middle, before its front is decoded.
//!
//! A deflate stream is one chain: each block's matches reach up to 32 KiB
//! back into what the blocks before it produced, so a decoder cannot simply
//! start halfway. It can nearly, as rapidgzip and pugz showed:
//!
//! 1. **Find a block.** From a chosen bit on, every bit offset is tried as
//!    the start of a dynamic Huffman block: a cheap filter on its first
//!    bits (not the last block, type 2, symbol counts in range, a complete
//!    code-length code) lets through a few in a thousand; the header parser
//!    (zlib's checks: complete codes, an end-of-block code, repeats that
//!    fit) rejects nearly all of those.
//! 2. **Decode with markers** ([`Head`]). The output is kept as 16-bit
//!    values, and a match reaching before the block yields markers, `256 +
//!    i` for byte `i` of the unknown 32 KiB before it, which later matches
//!    copy like bytes. A candidate that was no block soon fails to decode.
//!    Once a block ends with 32 KiB without markers behind it, nothing later
//!    can reach a marker: the ordinary decoder resumes there
//!    ([`Inflater::resume`]) with those 32 KiB as its history.
//! 3. **Confirm and resolve.** The decoder of the front is told to stop
//!    before the block found ([`Inflater::stop_at`]). If it does stop there,
//!    a block really starts at that bit, so the decoding from it was the
//!    stream's own; the markers are replaced by the front's last 32 KiB
//!    ([`Head::resolve`]) and the two outputs join exactly. If it went past
//!    the bit instead, the candidate was a false one and its output is
//!    dropped: the front's decoder simply goes on.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};

use super::{Block, Inflater, Input, Symbol, WINDOW, invalid};

/// The first marker value: the oldest byte of the unknown window.
const MARKER: u16 = 256;

/// How far [`find_head`] looks for a block, in bytes.
const SCAN: u64 = 256 * 1024;

/// Bytes before a search's first candidate that [`find_head`] looks back
/// through for a stored block holding it: a stored block's header and
/// length pair, and the most data it holds.
pub(in crate::image::unpack) const LOOKBACK: u64 = 5 + u16::MAX as u64;

/// The output of a block found in the middle of a stream, up to where the
/// ordinary decoder can take over. See the [module docs](self).
#[derive(Debug)]
pub(in crate::image::unpack) struct Head {
    /// The block's first bit, counted from the start of the stream.
    pub(in crate::image::unpack) start_bit: u64,
    /// Where the head ends, at a block boundary: the bit the ordinary
    /// decoder resumes from.
    pub(in crate::image::unpack) resume_bit: u64,
    /// Bytes, and markers (`MARKER + i`) for byte `i` of the 32 KiB before
    /// `start_bit`.
    out: Vec<u16>,
    /// Markers are in `out[..marked]` only.
    marked: usize,
}

impl Head {
    /// Bytes of output between `start_bit` and `resume_bit`.
    pub(in crate::image::unpack) fn len(&self) -> usize {
        self.out.len()
    }

    /// The last 32 KiB of the head: the history to resume with (they hold
    /// no markers).
    pub(in crate::image::unpack) fn history(&self) -> Vec<u8> {
        let tail = &self.out[self.out.len() - WINDOW..];
        tail.iter().map(|&v| v as u8).collect()
    }

    /// The head's bytes, its markers replaced from `before`: what the
    /// stream produced just before `start_bit` (its last 32 KiB count; it is
    /// shorter only at the start of a stream). A marker reaching before
    /// `before` is the stream's error, as it would have been for a decoder
    /// that got there from the start.
    ///
    /// The decoder that got to `start_bit` waits for this: only the part
    /// that may hold markers is looked at value by value.
    pub(in crate::image::unpack) fn resolve(&self, before: &[u8]) -> io::Result<Vec<u8>> {
        let window = &before[before.len().saturating_sub(WINDOW)..];
        let missing = WINDOW - window.len();
        let (marked, plain) = self.out.split_at(self.marked);
        let mut bytes = Vec::with_capacity(self.out.len());
        for &v in marked {
            bytes.push(match v.checked_sub(MARKER) {
                None => v as u8,
                Some(i) => (i as usize)
                    .checked_sub(missing)
                    .map(|at| window[at])
                    .ok_or_else(|| invalid("invalid distance too far back"))?,
            });
        }
        bytes.extend(plain.iter().map(|&v| v as u8));
        Ok(bytes)
    }
}

/// The first place at or after bit `from` (counted from the start of the
/// stream) where a block starts that decodes, with markers, until a
/// boundary with 32 KiB of marker-free output behind it. `region` holds
/// the stream's bytes from `offset` on.
///
/// Candidates inside what looks like a stored block's data are skipped
/// (see [`StoredSpans`]): `region` should start [`LOOKBACK`] bytes before
/// `from` where the stream has them.
///
/// `None` if no candidate in it gets there, or only after more than
/// `max_out` bytes of output; if the candidates that failed decoded more
/// than `max_out` bytes between them (on real data they fail within a few
/// bytes: a hostile stream could make every one decode for long); or once
/// `abandoned` is set.
pub(in crate::image::unpack) fn find_head(
    region: &[u8],
    offset: u64,
    from: u64,
    max_out: usize,
    abandoned: &AtomicBool,
) -> Option<Head> {
    // The buffer is 4 KiB at least: a region may be shorter (a source that
    // failed early).
    let mut input = Input::at(io::empty(), region.len(), offset);
    input.buf[..region.len()].copy_from_slice(region);
    input.end = region.len();
    input.eof = true;
    let mut inflater = Inflater::new();
    let mut out = Vec::new();
    let mut budget = max_out;
    let first = from.checked_sub(8 * offset)?;
    // Blocks are rarely more than 100 KiB apart; a header and its first
    // symbols need some bytes, so candidates close to the end of the region
    // could not get far anyway.
    let last = (8 * region.len() as u64)
        .saturating_sub(8 * 1024)
        .min(first + 8 * SCAN);
    let stored = StoredSpans::find(region, first / 8, last / 8);
    for bit in first..last {
        if !plausible_header(region, bit) || stored.cover((bit / 8) as usize) {
            continue;
        }
        let start_bit = 8 * offset + bit;
        match inflater.head(&mut input, offset, start_bit, &mut out, max_out, abandoned) {
            Ok(Some((resume_bit, marked))) => {
                return Some(Head {
                    start_bit,
                    resume_bit,
                    out,
                    marked,
                });
            }
            // Ran off the end of the region, past `max_out`, or abandoned:
            // later candidates would too.
            Ok(None) => return None,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return None,
            Err(_) => budget = budget.checked_sub(out.len())?,
        }
    }
    None
}

/// Where a region seems to hold the data of stored blocks: after a
/// byte-aligned length and its complement, as long as that length, when
/// what follows could be the next block's header (a stored one, with its
/// own length pair, or a dynamic one; or it lies beyond the region).
///
/// A layer's already-compressed files (`.gz` man pages and changelogs)
/// often go into its stream as stored blocks, and the deflate streams
/// inside them pass every check of a candidate block: the front, decoding
/// the stored block, would go past the candidate, and the back thread's
/// work would be lost. Candidates in these spans are skipped. Random bytes
/// make a span that hides a real block about once in a few hundred
/// candidates: the search then goes on to the next block.
///
/// The spans are merged where they overlap, so that a region made of
/// length pairs (a hostile layer's) costs one binary search a candidate.
#[derive(Debug)]
struct StoredSpans(Vec<std::ops::Range<usize>>);

impl StoredSpans {
    /// The spans of `region` that may hold bytes `from..to`: disjoint,
    /// in order.
    fn find(region: &[u8], from: u64, to: u64) -> Self {
        let u16_at = |i: usize| u16::from_le_bytes([region[i], region[i + 1]]);
        let pair_at = |i: usize| i + 4 <= region.len() && u16_at(i) == !u16_at(i + 2);
        let lowest = (from as usize).saturating_sub(LOOKBACK as usize);
        let highest = (to as usize).min(region.len());
        let spans = (lowest..highest)
            .filter(|&p| pair_at(p) && u16_at(p) > 0)
            .map(|p| p + 4..p + 4 + usize::from(u16_at(p)))
            .filter(|data| match region.get(data.end) {
                None => true,
                Some(&next) => match (next >> 1) & 0b11 {
                    0b00 => data.end + 5 > region.len() || pair_at(data.end + 1),
                    0b10 => {
                        data.end + 16 > region.len()
                            || plausible_header(region, 8 * data.end as u64)
                    }
                    _ => false,
                },
            });
        // They come by their start: each overlaps the last merged one or
        // starts a new one.
        let mut merged: Vec<std::ops::Range<usize>> = Vec::new();
        for span in spans {
            match merged.last_mut() {
                Some(last) if span.start <= last.end => last.end = last.end.max(span.end),
                _ => merged.push(span),
            }
        }
        Self(merged)
    }

    /// Whether byte `at` lies in one of the spans.
    fn cover(&self, at: usize) -> bool {
        let after = self.0.partition_point(|span| span.start <= at);
        after > 0 && at < self.0[after - 1].end
    }
}

/// Whether the bits at `bit` of `bytes` could start a dynamic Huffman
/// block that is not the last: the block type, the symbol counts, and a
/// complete code-length code (every real block has one; zlib rejects the
/// rest). About 1 in 300 random positions pass.
fn plausible_header(bytes: &[u8], bit: u64) -> bool {
    let at = (bit / 8) as usize;
    let Some(word) = bytes.get(at..at + 16) else {
        return false;
    };
    let bits = u128::from_le_bytes(word.try_into().expect("16 bytes")) >> (bit % 8);
    let field = |shift: u32, width: u32| ((bits >> shift) as u32) & ((1 << width) - 1);
    // BFINAL = 0, BTYPE = 2 (dynamic): bits 0-2 are 0, 0, 1.
    if field(0, 3) != 0b100 || field(3, 5) > 29 || field(8, 5) > 29 {
        return false;
    }
    let codes = field(13, 4) + 4;
    // The Kraft sum of a complete code of lengths up to 7, in 1/128ths.
    let mut kraft = 0;
    for i in 0..codes {
        let len = field(17 + 3 * i, 3);
        if len > 0 {
            kraft += 1 << (7 - len);
        }
    }
    kraft == 128
}

impl Inflater {
    /// Decodes into `out` from `bit` (in `input`, a region of the stream
    /// that starts at byte `offset`) as if a block started there, and
    /// returns where the head ends and how much of `out` may hold markers:
    /// see [`find_head`]. An error if it cannot
    /// be one (or runs into the last block); `None` past `max_out` bytes, or
    /// once `abandoned` is set.
    fn head(
        &mut self,
        input: &mut Input<io::Empty>,
        offset: u64,
        bit: u64,
        out: &mut Vec<u16>,
        max_out: usize,
        abandoned: &AtomicBool,
    ) -> io::Result<Option<(u64, usize)>> {
        self.reset();
        out.clear();
        input.pos = (bit / 8 - offset) as usize;
        self.skip_bits(input, (bit % 8) as u32)?;
        // Output up to here may hold markers.
        let mut marked = 0;
        loop {
            match self.block {
                // A block found this close to the end is not worth a split
                // (and a candidate that got here by chance is no block).
                Block::Header if self.last_block => {
                    return Err(invalid("no block boundary before the last"));
                }
                Block::Header if out.len() >= WINDOW && out.len() - marked >= WINDOW => {
                    return Ok(Some((self.bit_position(input), marked)));
                }
                Block::Header if out.len() > max_out || abandoned.load(Ordering::Relaxed) => {
                    return Ok(None);
                }
                Block::Header => self.header(input)?,
                Block::Stored { left } => {
                    if input.end - input.pos < left {
                        return Err(super::truncated());
                    }
                    let bytes = &input.buf[input.pos..input.pos + left];
                    out.extend(bytes.iter().map(|&b| u16::from(b)));
                    input.pos += left;
                    self.block = Block::Header;
                }
                Block::Huffman => {
                    if !self.marked_symbols(input, out, &mut marked, max_out)? {
                        return Ok(None);
                    }
                }
                Block::Done => unreachable!("the last block's end returns above"),
            }
        }
    }

    /// Decodes the current Huffman block into `out`, with markers for what
    /// lies before it; `marked` is kept past the last marker written.
    /// `false` if it stopped past `max_out` bytes.
    fn marked_symbols(
        &mut self,
        input: &mut Input<io::Empty>,
        out: &mut Vec<u16>,
        marked: &mut usize,
        max_out: usize,
    ) -> io::Result<bool> {
        loop {
            if out.len() > max_out {
                return Ok(false);
            }
            let (len, dist) = match self.next_symbol(input)? {
                Symbol::Literal(byte) => {
                    out.push(u16::from(byte));
                    continue;
                }
                Symbol::EndOfBlock => return Ok(true),
                Symbol::Match { len, dist } => (len, dist),
            };
            // A distance is at most 32 KiB: the window's.
            for _ in 0..len {
                let v = match out.len().checked_sub(dist) {
                    Some(from) => out[from],
                    None => MARKER + (WINDOW + out.len() - dist) as u16,
                };
                if v >= MARKER {
                    *marked = out.len() + 1;
                }
                out.push(v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_spans_are_data_after_a_length_pair_and_before_a_next_block() {
        let stored = |len: u16| {
            let mut block = vec![0u8];
            block.extend(len.to_le_bytes());
            block.extend((!len).to_le_bytes());
            block.extend(std::iter::repeat_n(0x55, len.into()));
            block
        };
        // Two stored blocks: the first is followed by a stored header and
        // its pair, the second by the region's end.
        let mut region = stored(100);
        region.extend(stored(50));
        let spans = StoredSpans::find(&region, 0, region.len() as u64);
        let covered: Vec<usize> = (0..region.len()).filter(|&i| spans.cover(i)).collect();
        let expected: Vec<usize> = (5..105).chain(110..160).collect();
        assert_eq!(covered, expected);
        // A pair followed by neither kind of header is no stored block.
        let mut region = stored(100);
        region.push(0b010);
        region.extend([0; 20]);
        let spans = StoredSpans::find(&region, 0, region.len() as u64);
        assert!((0..region.len()).all(|i| !spans.cover(i)));
        // Overlapping spans (pairs inside a stored block's data, each
        // followed by an empty stored block) merge.
        let mut region = stored(300);
        region.extend(stored(0));
        region.resize(360, 0x55);
        region[20..25].copy_from_slice(&stored(10)[..5]);
        region[35..40].copy_from_slice(&stored(0));
        region[200..205].copy_from_slice(&stored(150)[..5]);
        region[355..360].copy_from_slice(&stored(0));
        let spans = StoredSpans::find(&region, 0, region.len() as u64);
        assert_eq!(spans.0, vec![std::ops::Range { start: 5, end: 355 }]);
    }

    #[test]
    fn short_or_empty_regions_find_nothing() {
        let never = AtomicBool::new(false);
        for len in [0, 1, 100, 5000] {
            let region = vec![0b100; len];
            assert!(find_head(&region, 7, 56, 1 << 20, &never).is_none());
        }
    }

    #[test]
    fn markers_resolve_from_the_window_before_and_fail_beyond_it() {
        // "ab", then bytes 0 and WINDOW - 1 of the window, then "c".
        let out = vec![
            u16::from(b'a'),
            u16::from(b'b'),
            MARKER,
            MARKER + WINDOW as u16 - 1,
            u16::from(b'c'),
        ];
        let head = Head {
            start_bit: 0,
            resume_bit: 0,
            out,
            marked: 4,
        };
        let mut window = vec![b'.'; WINDOW];
        window[0] = b'x';
        window[WINDOW - 1] = b'y';
        let mut before = b"older".to_vec();
        before.extend_from_slice(&window);
        assert_eq!(head.resolve(&before).unwrap(), b"abxyc");
        // A stream that produced less than 32 KiB before the block: byte 0
        // of the window is before its start.
        let err = head.resolve(&window[1..]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }
}
