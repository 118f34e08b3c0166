//! Raw deflate (RFC 1951), decoded as fast as the format allows.
//!
//! Inflating is the critical path of a cold pull: a gzip layer is one
//! deflate stream, decoded on one thread. On the Debian bench layer
//! (116 MiB) zlib-rs takes 131-138 ms on the development machine, and
//! libdeflate, which can only decode whole buffers, 115-119 ms. This
//! decoder streams, as a pull needs, and decodes the way libdeflate does,
//! in 123-128 ms:
//!
//! - a 64-bit bit buffer refilled without branches, 8 bytes at a time, so
//!   that one refill covers a whole length/distance pair (at most 48 bits);
//!   the bits left are counted by subtracting whole entries (only the low
//!   byte of the count matters);
//! - 11-bit literal/length and 8-bit distance tables ([`table`]) that decode
//!   nearly every symbol in one lookup; an entry's bits are consumed by one
//!   shift, code and extra bits together;
//! - the next entry looked up before a match is copied, and up to three
//!   literals decoded per refill;
//! - matches copied a word at a time, five words without a branch, into an
//!   output buffer kept far enough from its end (the fast loop, [`fast`])
//!   that no copy needs a bounds check; near the ends of the input and the
//!   output, and for matches that reach back before the caller's buffer, a
//!   careful loop takes over.
//!
//! The caller's buffer is the output: the 32 KiB a match can reach back
//! are kept in a ring between calls, and copied from only by the matches
//! that need them (within the first 32 KiB of each call).
//!
//! Errors are those of zlib, for the same streams: invalid block types,
//! codes and distances, over-subscribed or incomplete codes (with zlib's
//! exceptions), stored lengths that do not match, and a stream that ends
//! early ([`io::ErrorKind::UnexpectedEof`]). `tests.rs` checks all of this
//! against zlib-rs, on thousands of mutated streams too.

mod fast;
mod input;
mod split;
mod table;

pub(super) use input::Input;
#[cfg(test)]
pub(super) use input::Trickle;
pub(super) use split::{Head, LOOKBACK, find_head};

use std::io::{self, Read};

use table::{
    CODELEN_ENTRIES, CODELEN_ROOT, DIST_ENTRIES, DIST_ROOT, END_OF_BLOCK, INVALID, LITERAL,
    LITLEN_ENTRIES, LITLEN_ROOT, MAX_CODE_LEN, SUBTABLE, base_plus_extra, index_bits, nbits, value,
};

/// How far back a match can reach.
const WINDOW: usize = 32 * 1024;

/// The order in which a dynamic block lists the code-length code's lengths.
const CODELEN_ORDER: [usize; 19] = [
    16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15,
];

/// Where the decoder is in the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Block {
    /// Before a block's header (or the end, after the last block).
    Header,
    /// In a stored block, `left` bytes to copy.
    Stored { left: usize },
    /// In a Huffman block, with its tables built.
    Huffman,
    /// After the last block.
    Done,
}

/// A place to stop at: a block boundary where another decoder takes over
/// (see [`split`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stop {
    /// None asked for.
    None,
    /// Before the block that starts at this bit of the stream.
    At(u64),
    /// Stopped there: nothing more is decoded.
    Reached,
    /// Went past that bit: no block starts there.
    Missed,
}

/// The bit buffer: `left` bits, least significant first, of which the
/// last `overread` bytes are zeros made up past the end of the input (so
/// that the stream's last symbols decode like any other; consuming one of
/// them means the stream was truncated).
///
/// Bits above `left` are either zero or the next input bytes, still
/// unread: the fast refill loads 8 bytes but advances only by those it
/// keeps, and loading them again sets the same bits.
#[derive(Debug, Default, Clone, Copy)]
struct Bits {
    buf: u64,
    left: u32,
    overread: u32,
}

/// A Huffman block's symbol, as [`Inflater::next_symbol`] decodes it.
enum Symbol {
    Literal(u8),
    EndOfBlock,
    Match { len: usize, dist: usize },
}

/// A Huffman block's decode tables.
struct Tables {
    litlen: [u32; LITLEN_ENTRIES],
    dist: [u32; DIST_ENTRIES],
}

/// A streaming raw-deflate decoder. See the [module docs](self).
pub(super) struct Inflater {
    /// The current block's tables, in one allocation so that the fast
    /// loop reaches both from one register.
    tables: Box<Tables>,
    /// The last `window_len` bytes produced before this call, a ring
    /// whose newest byte is just before `window_end`.
    window: Box<[u8; WINDOW]>,
    window_len: usize,
    window_end: usize,
    block: Block,
    last_block: bool,
    /// A match cut short by the end of the output: bytes left, distance.
    pending: Option<(usize, usize)>,
    bits: Bits,
    total_out: u64,
    stop: Stop,
}

impl Inflater {
    pub(super) fn new() -> Self {
        Self {
            tables: Box::new(Tables {
                litlen: [INVALID; LITLEN_ENTRIES],
                dist: [INVALID; DIST_ENTRIES],
            }),
            window: Box::new([0; WINDOW]),
            window_len: 0,
            window_end: 0,
            block: Block::Header,
            last_block: false,
            pending: None,
            bits: Bits::default(),
            total_out: 0,
            stop: Stop::None,
        }
    }

    /// Starts a new stream (a stop asked for stays: it is a place in the
    /// input, which may hold several streams).
    pub(super) fn reset(&mut self) {
        self.window_len = 0;
        self.window_end = 0;
        self.block = Block::Header;
        self.last_block = false;
        self.pending = None;
        self.bits = Bits::default();
        self.total_out = 0;
    }

    /// Starts decoding in the middle of a stream, at a block boundary after
    /// `history` (its last 32 KiB are what matches can reach). Bytes are
    /// counted from here.
    pub(super) fn resume(&mut self, history: &[u8]) {
        self.reset();
        self.remember(history);
    }

    /// Skips the next `n` bits of `input` (fewer than 8: where a block
    /// starts within its first byte).
    pub(super) fn skip_bits<R: Read>(&mut self, input: &mut Input<R>, n: u32) -> io::Result<()> {
        self.need(input, n)?;
        self.consume(n);
        self.check_real()
    }

    /// Where the decoder is in the stream, in bits from its start.
    pub(super) fn bit_position<R>(&self, input: &Input<R>) -> u64 {
        8 * input.position() - u64::from(self.bits.left - 8 * self.bits.overread)
    }

    /// Stops decoding before the block that starts at `bit`, if one does:
    /// see [`Self::stop`].
    pub(super) fn stop_at(&mut self, bit: u64) {
        self.stop = Stop::At(bit);
    }

    /// Whether the decoder stopped where [`Self::stop_at`] asked (then it
    /// produces nothing more), went past it, or is on its way.
    pub(super) fn stop(&self) -> Stop {
        self.stop
    }

    /// The last 32 KiB produced (less at the start of a stream).
    pub(super) fn history(&self) -> Vec<u8> {
        let start = (self.window_end + WINDOW - self.window_len) % WINDOW;
        let mut history = Vec::with_capacity(self.window_len);
        if start + self.window_len <= WINDOW {
            history.extend_from_slice(&self.window[start..start + self.window_len]);
        } else {
            history.extend_from_slice(&self.window[start..]);
            history.extend_from_slice(&self.window[..self.window_end]);
        }
        history
    }

    /// Whether the decoder, before a block header, is where it was asked to
    /// stop (see [`Self::stop_at`]).
    fn at_stop<R>(&mut self, input: &Input<R>) -> bool {
        match self.stop {
            Stop::Reached => true,
            Stop::At(bit) => {
                let here = self.bit_position(input);
                if here == bit {
                    self.stop = Stop::Reached;
                } else if here > bit {
                    self.stop = Stop::Missed;
                }
                here == bit
            }
            Stop::None | Stop::Missed => false,
        }
    }

    /// Bytes produced since the stream started.
    pub(super) fn total_out(&self) -> u64 {
        self.total_out
    }

    /// Decodes into `out` from `input`, blocking on it for more bytes as
    /// needed. Returns how many bytes were written and whether the stream
    /// ended; then `input` is at the first byte after it. Writes nothing
    /// only at the end of the stream (or into an empty `out`).
    pub(super) fn inflate<R: Read>(
        &mut self,
        input: &mut Input<R>,
        out: &mut [u8],
    ) -> io::Result<(usize, bool)> {
        let produced = self.inflate_into(input, out)?;
        self.remember(&out[..produced]);
        self.total_out += produced as u64;
        Ok((produced, self.block == Block::Done))
    }

    fn inflate_into<R: Read>(&mut self, input: &mut Input<R>, out: &mut [u8]) -> io::Result<usize> {
        let mut o = 0;
        loop {
            if let Some((len, dist)) = self.pending {
                let n = len.min(out.len() - o);
                self.copy_match(out, o, n, dist);
                o += n;
                if n < len {
                    self.pending = Some((len - n, dist));
                    break;
                }
                self.pending = None;
            }
            match self.block {
                Block::Done => break,
                Block::Header if self.last_block => {
                    self.normalize(input)?;
                    self.bits = Bits::default();
                    self.block = Block::Done;
                }
                Block::Header => {
                    if self.at_stop(input) {
                        break;
                    }
                    self.header(input)?;
                }
                Block::Stored { left: 0 } => self.block = Block::Header,
                Block::Stored { .. } | Block::Huffman if o == out.len() => break,
                Block::Stored { left } => {
                    if input.pos == input.end {
                        if input.eof {
                            return Err(truncated());
                        }
                        self.fill(input, 1)?;
                        continue;
                    }
                    let n = left.min(out.len() - o).min(input.end - input.pos);
                    out[o..o + n].copy_from_slice(&input.buf[input.pos..input.pos + n]);
                    input.pos += n;
                    o += n;
                    self.block = Block::Stored { left: left - n };
                }
                Block::Huffman => o = self.huffman(input, out, o)?,
            }
        }
        Ok(o)
    }

    /// Decodes a Huffman block's symbols until its end, the end of `out`
    /// or a match cut short by it.
    fn huffman<R: Read>(
        &mut self,
        input: &mut Input<R>,
        out: &mut [u8],
        mut o: usize,
    ) -> io::Result<usize> {
        loop {
            if input.end - input.pos < fast::IN_MARGIN && !input.eof {
                self.fill(input, fast::IN_MARGIN)?;
            }
            if self.bits.overread == 0 {
                let (at, exit) = self.fast(input, out, o)?;
                o = at;
                if exit == fast::Exit::EndOfBlock {
                    return Ok(o);
                }
            }
            if o == out.len() {
                return Ok(o);
            }
            if self.symbol(input, out, &mut o)? || self.pending.is_some() || o == out.len() {
                return Ok(o);
            }
        }
    }

    /// Decodes one symbol with every check; `true` at the end of the block.
    fn symbol<R: Read>(
        &mut self,
        input: &mut Input<R>,
        out: &mut [u8],
        o: &mut usize,
    ) -> io::Result<bool> {
        let (len, dist) = match self.next_symbol(input)? {
            Symbol::Literal(byte) => {
                out[*o] = byte;
                *o += 1;
                return Ok(false);
            }
            Symbol::EndOfBlock => return Ok(true),
            Symbol::Match { len, dist } => (len, dist),
        };
        if dist > *o + self.window_len {
            return Err(invalid("invalid distance too far back"));
        }
        let n = len.min(out.len() - *o);
        self.copy_match(out, *o, n, dist);
        *o += n;
        if n < len {
            self.pending = Some((len - n, dist));
        }
        Ok(false)
    }

    /// Decodes the next symbol of a Huffman block, and a match's distance,
    /// with every check but the distance's reach (the caller's history).
    fn next_symbol<R: Read>(&mut self, input: &mut Input<R>) -> io::Result<Symbol> {
        self.need(input, 48)?;
        let (e, before) = self.code(|t| &t.litlen, LITLEN_ROOT, "invalid literal/length code")?;
        if e & LITERAL != 0 {
            return Ok(Symbol::Literal(value(e) as u8));
        }
        if e & END_OF_BLOCK != 0 {
            self.block = Block::Header;
            return Ok(Symbol::EndOfBlock);
        }
        let len = base_plus_extra(e, before);
        let (d, before) = self.code(|t| &t.dist, DIST_ROOT, "invalid distance code")?;
        let dist = base_plus_extra(d, before);
        Ok(Symbol::Match { len, dist })
    }

    /// Decodes the next code with `table` (of `root` index bits, and its
    /// subtables) and consumes it: its entry, and the bit buffer as it was
    /// before the entry's own bits (for [`base_plus_extra`]).
    fn code(
        &mut self,
        table: impl Fn(&Tables) -> &[u32],
        root: u32,
        invalid_code: &'static str,
    ) -> io::Result<(u32, u64)> {
        let mut e = table(&self.tables)[self.peek(root)];
        if e & SUBTABLE != 0 {
            self.consume(root);
            e = table(&self.tables)[value(e) as usize + self.peek(index_bits(e))];
        }
        if e & INVALID != 0 {
            return Err(self.bad_code(MAX_CODE_LEN, invalid_code));
        }
        let before = self.bits.buf;
        self.consume(nbits(e));
        self.check_real()?;
        Ok((e, before))
    }

    /// Reads a block header and, for a Huffman block, builds its tables.
    fn header<R: Read>(&mut self, input: &mut Input<R>) -> io::Result<()> {
        self.need(input, 3)?;
        self.last_block = self.take(1) == 1;
        let kind = self.take(2);
        self.check_real()?;
        match kind {
            0 => self.stored_header(input),
            1 => {
                let mut lens = [0u8; 288];
                lens[..144].fill(8);
                lens[144..256].fill(9);
                lens[256..280].fill(7);
                lens[280..].fill(8);
                self.tables(&lens, 288)
            }
            2 => self.dynamic_header(input),
            _ => Err(invalid("invalid block type")),
        }
    }

    fn stored_header<R: Read>(&mut self, input: &mut Input<R>) -> io::Result<()> {
        let partial = self.bits.left % 8;
        self.consume(partial);
        self.need(input, 32)?;
        let len = self.take(16);
        let nlen = self.take(16);
        self.check_real()?;
        if len != !nlen & 0xffff {
            return Err(invalid("invalid stored block lengths"));
        }
        // Byte-aligned now: give the bytes still buffered back to `input`.
        self.normalize(input)?;
        self.block = Block::Stored { left: len };
        Ok(())
    }

    fn dynamic_header<R: Read>(&mut self, input: &mut Input<R>) -> io::Result<()> {
        self.need(input, 14)?;
        let hlit = self.take(5) + 257;
        let hdist = self.take(5) + 1;
        let hclen = self.take(4) + 4;
        self.check_real()?;
        if hlit > 286 || hdist > 30 {
            return Err(invalid("too many length or distance symbols"));
        }
        let mut codelen_lens = [0u8; 19];
        for &sym in &CODELEN_ORDER[..hclen] {
            self.need(input, 3)?;
            codelen_lens[sym] = self.take(3) as u8;
        }
        self.check_real()?;
        let mut codelen = [INVALID; CODELEN_ENTRIES];
        table::build(
            &mut codelen,
            &codelen_lens,
            CODELEN_ROOT,
            table::codelen_entry,
            false,
        )
        .map_err(|_| invalid("invalid code lengths set"))?;

        let mut lens = [0u8; 286 + 30];
        let mut i = 0;
        while i < hlit + hdist {
            // A code-length code is at most 7 bits, its extra bits 7.
            self.need(input, 14)?;
            let e = codelen[self.peek(CODELEN_ROOT)];
            if e & INVALID != 0 {
                return Err(self.bad_code(CODELEN_ROOT, "invalid code lengths set"));
            }
            self.consume(nbits(e));
            let (len, repeat) = match value(e) {
                sym @ 0..=15 => (sym as u8, 1),
                16 => {
                    let Some(&prev) = i.checked_sub(1).map(|p| &lens[p]) else {
                        return Err(invalid("invalid bit length repeat"));
                    };
                    (prev, 3 + self.take(2))
                }
                17 => (0, 3 + self.take(3)),
                _ => (0, 11 + self.take(7)),
            };
            self.check_real()?;
            if i + repeat > hlit + hdist {
                return Err(invalid("invalid bit length repeat"));
            }
            lens[i..i + repeat].fill(len);
            i += repeat;
        }
        if lens[256] == 0 {
            return Err(invalid("invalid code -- missing end-of-block"));
        }
        let (litlen_lens, dist_lens) = lens[..hlit + hdist].split_at(hlit);
        let mut all = [0u8; 288];
        all[..hlit].copy_from_slice(litlen_lens);
        self.tables(&all, hlit)?;
        let mut dist = [0u8; 32];
        dist[..hdist].copy_from_slice(dist_lens);
        self.dist_table(&dist[..hdist])
    }

    /// Builds the literal/length table from `lens[..n]` and, for a fixed
    /// block (`n == 288`), the fixed distance table.
    fn tables(&mut self, lens: &[u8; 288], n: usize) -> io::Result<()> {
        table::build(
            &mut self.tables.litlen[..],
            &lens[..n],
            LITLEN_ROOT,
            table::litlen_entry,
            true,
        )
        .map_err(|_| invalid("invalid literal/lengths set"))?;
        if n == 288 {
            self.dist_table(&[5; 32])?;
        }
        self.block = Block::Huffman;
        Ok(())
    }

    fn dist_table(&mut self, lens: &[u8]) -> io::Result<()> {
        table::build(
            &mut self.tables.dist[..],
            lens,
            DIST_ROOT,
            table::dist_entry,
            true,
        )
        .map_err(|_| invalid("invalid distances set"))
    }

    /// Copies a match of `len` bytes from `dist` back to `out[o..]`, from
    /// the window where it reaches back before `out`. `dist` must be within
    /// the history (`o + window_len`), `o + len` within `out`.
    fn copy_match(&self, out: &mut [u8], o: usize, len: usize, dist: usize) {
        let mut done = 0;
        if dist > o {
            // `back` bytes before `out`, from the ring, which may wrap.
            let back = dist - o;
            let from = (self.window_end + WINDOW - back) % WINDOW;
            done = back.min(len);
            let first = done.min(WINDOW - from);
            out[o..o + first].copy_from_slice(&self.window[from..from + first]);
            out[o + first..o + done].copy_from_slice(&self.window[..done - first]);
        }
        for at in o + done..o + len {
            out[at] = out[at - dist];
        }
    }

    /// Keeps the last 32 KiB of the history after producing `produced`:
    /// a ring, so that small reads cost no more than their own bytes.
    fn remember(&mut self, produced: &[u8]) {
        let kept = &produced[produced.len().saturating_sub(WINDOW)..];
        let first = kept.len().min(WINDOW - self.window_end);
        self.window[self.window_end..self.window_end + first].copy_from_slice(&kept[..first]);
        self.window[..kept.len() - first].copy_from_slice(&kept[first..]);
        self.window_end = (self.window_end + kept.len()) % WINDOW;
        self.window_len = (self.window_len + kept.len()).min(WINDOW);
    }

    /// Makes at least `n` (at most 56) bits available, reading a byte at a
    /// time, with zeros made up past the end of the input.
    fn need<R: Read>(&mut self, input: &mut Input<R>, n: u32) -> io::Result<()> {
        while self.bits.left < n {
            if input.pos < input.end {
                self.bits.buf |= u64::from(input.buf[input.pos]) << self.bits.left;
                input.pos += 1;
            } else if input.eof {
                // Eight made-up bytes cover any symbol: more means the
                // stream was truncated well before.
                if self.bits.overread == 8 {
                    return Err(truncated());
                }
                self.bits.overread += 1;
            } else {
                self.fill(input, fast::IN_MARGIN)?;
                continue;
            }
            self.bits.left += 8;
        }
        Ok(())
    }

    /// Reads more input, after giving the whole bytes of the bit buffer
    /// back (so that the buffer can move its unread bytes).
    fn fill<R: Read>(&mut self, input: &mut Input<R>, want: usize) -> io::Result<()> {
        self.normalize(input)?;
        input.fill(want)?;
        Ok(())
    }

    /// Gives the whole bytes held in the bit buffer back to `input`,
    /// keeping fewer than 8 bits.
    fn normalize<R>(&mut self, input: &mut Input<R>) -> io::Result<()> {
        self.check_real()?;
        let whole = self.bits.left / 8 - self.bits.overread;
        input.pos -= whole as usize;
        self.bits.left %= 8;
        self.bits.overread = 0;
        self.bits.buf &= (1 << self.bits.left) - 1;
        Ok(())
    }

    /// The error for an invalid code looked up in the next `looked` bits:
    /// the stream's own, unless some of them were made up past its end
    /// (then the stream ended early, and the code may be the zeros').
    fn bad_code(&self, looked: u32, what: &'static str) -> io::Error {
        if self.bits.left < looked + self.bits.overread * 8 {
            truncated()
        } else {
            invalid(what)
        }
    }

    /// Fails if bits made up past the end of the input were consumed.
    fn check_real(&self) -> io::Result<()> {
        if self.bits.left < self.bits.overread * 8 {
            Err(truncated())
        } else {
            Ok(())
        }
    }

    /// The next `n` bits, not consumed (`n` at most what is buffered).
    fn peek(&self, n: u32) -> usize {
        (self.bits.buf & ((1 << n) - 1)) as usize
    }

    fn consume(&mut self, n: u32) {
        self.bits.buf >>= n;
        self.bits.left -= n;
    }

    fn take(&mut self, n: u32) -> usize {
        let v = self.peek(n);
        self.consume(n);
        v
    }
}

fn truncated() -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, "deflate stream truncated")
}

fn invalid(what: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

#[cfg(test)]
mod tests;
