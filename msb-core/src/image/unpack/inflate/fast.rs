//! The fast loop: Huffman symbols decoded while the input has
//! [`IN_MARGIN`] bytes left and the output [`OUT_MARGIN`], so that neither a
//! refill nor a match copy needs a bounds check.

use std::io::{self, Read};

use super::table::{
    DIST_ROOT, END_OF_BLOCK, INVALID, LITERAL, LITLEN_ENTRIES, LITLEN_ROOT, SUBTABLE,
    base_plus_extra, index_bits, nbits, value,
};
use super::{Block, Inflater, Input, invalid};

/// Input bytes the loop keeps ahead: a refill reads 8.
pub(super) const IN_MARGIN: usize = 16;

/// Output bytes the loop keeps ahead: a match (258 bytes) copied 8 bytes
/// at a time writes up to 264.
pub(super) const OUT_MARGIN: usize = 320;

/// Why the loop stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Exit {
    /// Too close to the end of the input or the output.
    Margin,
    /// At the end of the block.
    EndOfBlock,
}

/// The low `n` bits set.
#[inline(always)]
fn mask(n: u32) -> u64 {
    (1u64 << n) - 1
}

impl Inflater {
    /// Decodes symbols of the current Huffman block into `out[o..]` while
    /// the margins hold. Returns where the output is and why it stopped.
    pub(super) fn fast<R: Read>(
        &mut self,
        input: &mut Input<R>,
        out: &mut [u8],
        o: usize,
    ) -> io::Result<(usize, Exit)> {
        if input.end - input.pos < IN_MARGIN || out.len() - o < OUT_MARGIN {
            return Ok((o, Exit::Margin));
        }
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("bmi2") {
            // SAFETY: the CPU has BMI2, the only feature the function adds.
            return unsafe { self.fast_bmi2(input, out, o) };
        }
        self.fast_loop(input, out, o)
    }

    /// [`Self::fast_loop`] compiled with BMI2's shifts and masks, which
    /// take a variable count without a detour through `cl`.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "bmi2")]
    fn fast_bmi2<R: Read>(
        &mut self,
        input: &mut Input<R>,
        out: &mut [u8],
        o: usize,
    ) -> io::Result<(usize, Exit)> {
        self.fast_loop(input, out, o)
    }

    #[inline(always)]
    fn fast_loop<R: Read>(
        &mut self,
        input: &mut Input<R>,
        out: &mut [u8],
        o: usize,
    ) -> io::Result<(usize, Exit)> {
        let tables = &*self.tables;
        let mut out_start = out.as_mut_ptr();
        // Pointers advance with `wrapping_add` (no promise is made by the
        // arithmetic), and are only dereferenced within the budget below.
        let mut op = out_start.wrapping_add(o);
        let mut ip = input.buf.as_ptr().wrapping_add(input.pos);
        let mut buf = self.bits.buf;
        let mut left = self.bits.left;
        // An iteration reads 8 input bytes at `ip` and then advances it by
        // at most 7; it writes at most 264 output bytes from `op` and
        // advances it by at most 258. `budget` iterations stay within both
        // margins, so the loop checks one counter, not two limits.
        //
        // After a refill, the buffer's 64 bits are all the stream's: the
        // `left` counted ones, then the start of the bytes at `ip`. So the
        // next symbol's entry can be looked up as soon as the previous
        // symbol's bits are consumed (at most 53 of them), before its
        // output is written; refilling leaves those low bits as they are.
        let mut budget = 0usize;
        let mut e = 0;
        let exit = 'outer: loop {
            left &= 63;
            let out_room = out.len() - (op as usize - out_start as usize);
            let in_room = input.end - (ip as usize - input.buf.as_ptr() as usize);
            let n = (out_room.saturating_sub(OUT_MARGIN) / 258)
                .min(in_room.saturating_sub(IN_MARGIN) / 8);
            if n == 0 {
                break Ok(Exit::Margin);
            }
            if budget == 0 {
                // The first refill and lookup (the loop's preload).
                // SAFETY: `in_room >= IN_MARGIN + 8`.
                unsafe { refill(&mut buf, &mut left, &mut ip) };
                e = tables.litlen[(buf & mask(LITLEN_ROOT)) as usize];
            }
            budget = n;
            while budget > 0 {
                budget -= 1;
                // SAFETY: within this iteration's budget of input.
                unsafe { refill(&mut buf, &mut left, &mut ip) };
                if e & LITERAL != 0 {
                    // Up to three literals (15 bits each) from one refill.
                    // SAFETY: within the iteration's 264 bytes of output.
                    unsafe { literal(&tables.litlen, &mut e, &mut buf, &mut left, &mut op) };
                    if e & LITERAL != 0 {
                        // SAFETY: as above.
                        unsafe { literal(&tables.litlen, &mut e, &mut buf, &mut left, &mut op) };
                        if e & LITERAL != 0 {
                            // SAFETY: as above.
                            unsafe {
                                literal(&tables.litlen, &mut e, &mut buf, &mut left, &mut op)
                            };
                        }
                    }
                    continue;
                }
                if e & (SUBTABLE | END_OF_BLOCK | INVALID) != 0 {
                    if e & SUBTABLE != 0 {
                        buf >>= LITLEN_ROOT;
                        left = left.wrapping_sub(LITLEN_ROOT);
                        e = tables.litlen[value(e) as usize + (buf & mask(index_bits(e))) as usize];
                        if e & LITERAL != 0 {
                            // SAFETY: within the iteration's 264 bytes of output.
                            unsafe {
                                literal(&tables.litlen, &mut e, &mut buf, &mut left, &mut op)
                            };
                            continue;
                        }
                    }
                    if e & END_OF_BLOCK != 0 {
                        buf >>= nbits(e);
                        left = left.wrapping_sub(e);
                        self.block = Block::Header;
                        break 'outer Ok(Exit::EndOfBlock);
                    }
                    if e & INVALID != 0 {
                        break 'outer Err("invalid literal/length code");
                    }
                }
                // A length (at most 15 + 5 bits), then a distance (at most
                // 15 + 13): 48 bits, within the 56 of the refill.
                let before = buf;
                buf >>= nbits(e);
                left = left.wrapping_sub(e);
                let len = base_plus_extra(e, before);
                let mut d = tables.dist[(buf & mask(DIST_ROOT)) as usize];
                if d & (SUBTABLE | INVALID) != 0 {
                    if d & SUBTABLE != 0 {
                        buf >>= DIST_ROOT;
                        left = left.wrapping_sub(DIST_ROOT);
                        d = tables.dist[value(d) as usize + (buf & mask(index_bits(d))) as usize];
                    }
                    if d & INVALID != 0 {
                        break 'outer Err("invalid distance code");
                    }
                }
                let before = buf;
                buf >>= nbits(d);
                left = left.wrapping_sub(d);
                let dist = base_plus_extra(d, before);
                e = tables.litlen[(buf & mask(LITLEN_ROOT)) as usize];
                let o = op as usize - out_start as usize;
                if dist > o {
                    if dist > o + self.window_len {
                        break 'outer Err("invalid distance too far back");
                    }
                    self.copy_match(out, o, len, dist);
                    // Pointers into `out` are derived anew after using it.
                    out_start = out.as_mut_ptr();
                    op = out_start.wrapping_add(o);
                } else {
                    // SAFETY: `dist <= o`: the source starts inside `out`;
                    // the copy writes within the iteration's 264 bytes.
                    unsafe { copy_within(op, len, dist) };
                }
                op = op.wrapping_add(len);
            }
        };
        input.pos = ip as usize - input.buf.as_ptr() as usize;
        self.bits.buf = buf;
        self.bits.left = left & 63;
        let o = op as usize - out_start as usize;
        exit.map(|exit| (o, exit)).map_err(invalid)
    }
}

/// Writes the literal of entry `e` at `op`, consumes its bits and looks up
/// the entry after it in `litlen`.
///
/// # Safety
///
/// The byte at `op` must be writable.
#[inline(always)]
unsafe fn literal(
    litlen: &[u32; LITLEN_ENTRIES],
    e: &mut u32,
    buf: &mut u64,
    left: &mut u32,
    op: &mut *mut u8,
) {
    *buf >>= nbits(*e);
    *left = left.wrapping_sub(*e);
    let lit = value(*e) as u8;
    *e = litlen[(*buf & mask(LITLEN_ROOT)) as usize];
    // SAFETY: the caller vouches for the byte.
    unsafe { op.write(lit) };
    *op = op.wrapping_add(1);
}

/// Refills the bit buffer to 56..=63 bits from the 8 bytes at `ip`,
/// advancing `ip` by the whole bytes kept.
///
/// # Safety
///
/// The 8 bytes at `ip` must be readable.
#[inline(always)]
unsafe fn refill(buf: &mut u64, left: &mut u32, ip: &mut *const u8) {
    // SAFETY: the caller vouches for the 8 bytes.
    let word = unsafe { load(*ip) };
    *buf |= u64::from_le(word) << (*left & 63);
    *ip = ip.wrapping_add((7 - ((*left >> 3) & 7)) as usize);
    *left |= 56;
}

/// Copies `len` bytes from `dist` bytes before `dst` to `dst`, which may
/// overlap (a run repeats itself), writing up to 7 bytes past `len`, and
/// at least 40.
///
/// # Safety
///
/// `dst - dist .. dst + max(round_up(len, 8), 40)` must be valid for reads
/// and writes, `dist >= 1`.
#[inline(always)]
unsafe fn copy_within(dst: *mut u8, len: usize, dist: usize) {
    let src = dst.wrapping_sub(dist);
    if dist >= 8 {
        // Each word read lies below the word written: the source of every
        // byte is final before it is read. Most matches are short: five
        // words without a branch (as libdeflate), then the rest.
        for at in (0..40).step_by(8) {
            // SAFETY: within the range the caller vouches for.
            unsafe { copy_word(dst, src, at) };
        }
        let mut at = 40;
        while at < len {
            // SAFETY: within the range the caller vouches for.
            unsafe { copy_word(dst, src, at) };
            at += 8;
        }
    } else if dist == 1 {
        // SAFETY: within the range the caller vouches for.
        let word = u64::from(unsafe { src.read() }) * 0x0101_0101_0101_0101;
        let mut at = 0;
        while at < len {
            // SAFETY: within the range the caller vouches for.
            unsafe { store(dst.wrapping_add(at), word) };
            at += 8;
        }
    } else {
        // A word copied `dist` bytes on at a time: its first `dist` bytes
        // repeat the period, the rest is rewritten by the next step.
        let mut at = 0;
        while at < len {
            // SAFETY: within the range the caller vouches for.
            unsafe { copy_word(dst, src, at) };
            at += dist;
        }
    }
}

/// Copies the 8 bytes at `src + at` to `dst + at`.
///
/// # Safety
///
/// Both must be valid, for reads and for writes.
#[inline(always)]
unsafe fn copy_word(dst: *mut u8, src: *const u8, at: usize) {
    // SAFETY: the caller vouches for the source.
    let word = unsafe { load(src.wrapping_add(at)) };
    // SAFETY: the caller vouches for the destination.
    unsafe { store(dst.wrapping_add(at), word) }
}

/// The 8 bytes at `p`.
///
/// # Safety
///
/// They must be readable.
#[inline(always)]
unsafe fn load(p: *const u8) -> u64 {
    // SAFETY: the caller vouches for the 8 bytes.
    unsafe { p.cast::<u64>().read_unaligned() }
}

/// Writes `word` to the 8 bytes at `p`.
///
/// # Safety
///
/// They must be writable.
#[inline(always)]
unsafe fn store(p: *mut u8, word: u64) {
    // SAFETY: the caller vouches for the 8 bytes.
    unsafe { p.cast::<u64>().write_unaligned(word) }
}
