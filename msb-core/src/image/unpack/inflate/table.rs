//! Canonical Huffman codes (RFC 1951, 3.2.2) turned into lookup tables.
//!
//! A table is indexed by the next `root` bits of the stream, least
//! significant first (deflate packs Huffman codes starting with their most
//! significant bit, so a code is looked up by its bit-reversed value). A
//! code of `len <= root` bits fills every entry whose low `len` bits are its
//! reversed code; a longer one lives in a subtable, reached through the
//! entry of its first `root` bits and indexed by the bits after them. One
//! lookup decodes almost every symbol of real data; two, the rest.
//!
//! An entry is one `u32`:
//!
//! ```text
//!  31   30             16 15  14  12 11     8 7  6 5 4       0
//! +---+-----------------+---+------+--------+----+-+---------+
//! |lit|      value      | - | kind |  code  | -- |0|  nbits  |
//! +---+-----------------+---+------+--------+----+-+---------+
//! ```
//!
//! - `nbits`: the bits this lookup consumes: the code's length (or what is
//!   left of a long code, in a subtable) plus its extra bits, or `root` for
//!   a subtable pointer. Bit 5 is clear, so `entry & 63` is the count, which
//!   a 64-bit shift (`shrx`) masks to by itself;
//! - `code`: the bits of `nbits` that are the code (the rest are extra
//!   bits, so `(bits & mask(nbits)) >> code` are those, as in libdeflate);
//!   for a subtable pointer, the subtable's index bits;
//! - `kind`: [`SUBTABLE`], [`END_OF_BLOCK`] or [`INVALID`], and bit 31
//!   [`LITERAL`] (none: a length or distance base, and then `code` and
//!   `kind` read together as 6 bits are `code` alone);
//! - `value`: the literal byte, the length or distance base, or where the
//!   subtable starts.

/// The longest code deflate allows.
pub(super) const MAX_CODE_LEN: u32 = 15;

/// Index bits of the literal/length table's root.
pub(super) const LITLEN_ROOT: u32 = 11;
/// Index bits of the distance table's root.
pub(super) const DIST_ROOT: u32 = 8;
/// Index bits of the code-length code's table: its codes are at most 7 bits.
pub(super) const CODELEN_ROOT: u32 = 7;

/// Entries a table of `syms` symbols and `root` bits can need: each code
/// longer than `root` bits lies in exactly one subtable, and a subtable has
/// at most `2^(15 - root)` entries, so there are at most `syms` subtables.
const fn entries(root: u32, syms: usize) -> usize {
    (1 << root) + syms * (1 << (MAX_CODE_LEN - root))
}

/// Entries of the literal/length table (288 symbols).
pub(super) const LITLEN_ENTRIES: usize = entries(LITLEN_ROOT, 288);
/// Entries of the distance table (32 symbols).
pub(super) const DIST_ENTRIES: usize = entries(DIST_ROOT, 32);
/// Entries of the code-length code's table (19 symbols, no subtables).
pub(super) const CODELEN_ENTRIES: usize = 1 << CODELEN_ROOT;

/// Entry kind: a literal byte.
pub(super) const LITERAL: u32 = 1 << 31;
/// Entry kind: the code continues in a subtable.
pub(super) const SUBTABLE: u32 = 1 << 12;
/// Entry kind: the end of the block.
pub(super) const END_OF_BLOCK: u32 = 1 << 13;
/// Entry kind: no valid code starts with these bits, or the symbol may not
/// appear in a stream (literal/length 286 and 287, distance 30 and 31).
pub(super) const INVALID: u32 = 1 << 14;

/// The bits one lookup of `entry` consumes (code and extra bits).
#[inline(always)]
pub(super) const fn nbits(entry: u32) -> u32 {
    entry & 63
}

/// A subtable pointer's index bits.
#[inline(always)]
pub(super) const fn index_bits(entry: u32) -> u32 {
    (entry >> 8) & 0xf
}

/// The value of `entry`: a literal, a length or distance base, or where a
/// subtable starts.
#[inline(always)]
pub(super) const fn value(entry: u32) -> u32 {
    (entry >> 16) & 0x7fff
}

/// The length or distance that `entry` (a length or distance base)
/// decodes to, from the bit buffer as it was before the lookup consumed
/// its `nbits`: the base plus the extra bits that follow the code.
#[inline(always)]
pub(super) fn base_plus_extra(entry: u32, before: u64) -> usize {
    // No kind bits (bits 12-15, 31) are set in such an entry: `>> 16` is
    // the value and `(entry >> 8) & 63` the code's length.
    let code_and_extra = before & ((1u64 << nbits(entry)) - 1);
    (entry >> 16) as usize + (code_and_extra >> ((entry >> 8) & 63)) as usize
}

/// An entry for a symbol, without its code length (which [`build`] adds
/// to `nbits` and `code`): `nbits` holds the extra bits.
const fn entry(value: u32, kind: u32, extra: u32) -> u32 {
    (value << 16) | kind | extra
}

/// `entry` for a code of `len` bits (of this table level).
const fn with_code(entry: u32, len: u32) -> u32 {
    entry + len + (len << 8)
}

/// A subtable pointer: `root` bits consumed, `bits` index bits.
const fn pointer(start: usize, root: u32, bits: u32) -> u32 {
    ((start as u32) << 16) | SUBTABLE | (bits << 8) | root
}

/// Base lengths of literal/length symbols 257..=285.
const LENGTH_BASE: [u16; 29] = [
    3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59, 67, 83, 99, 115, 131,
    163, 195, 227, 258,
];
/// Extra bits of literal/length symbols 257..=285.
const LENGTH_EXTRA: [u8; 29] = [
    0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0,
];
/// Base distances of distance symbols 0..=29.
const DIST_BASE: [u16; 30] = [
    1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33, 49, 65, 97, 129, 193, 257, 385, 513, 769, 1025, 1537,
    2049, 3073, 4097, 6145, 8193, 12289, 16385, 24577,
];
/// Extra bits of distance symbols 0..=29.
const DIST_EXTRA: [u8; 30] = [
    0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13,
    13,
];

/// What a literal/length symbol decodes to.
pub(super) fn litlen_entry(sym: usize) -> u32 {
    match sym {
        0..=255 => LITERAL | entry(sym as u32, 0, 0),
        256 => entry(0, END_OF_BLOCK, 0),
        257..=285 => entry(
            LENGTH_BASE[sym - 257].into(),
            0,
            LENGTH_EXTRA[sym - 257].into(),
        ),
        _ => entry(0, INVALID, 0),
    }
}

/// What a distance symbol decodes to.
pub(super) fn dist_entry(sym: usize) -> u32 {
    match sym {
        0..=29 => entry(DIST_BASE[sym].into(), 0, DIST_EXTRA[sym].into()),
        _ => entry(0, INVALID, 0),
    }
}

/// What a code-length code symbol decodes to: the symbol itself.
pub(super) fn codelen_entry(sym: usize) -> u32 {
    entry(sym as u32, 0, 0)
}

/// Why a set of code lengths makes no decodable code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum BadCode {
    /// More codes of some length than the lengths allow (Kraft sum > 1).
    Oversubscribed,
    /// Codes missing (Kraft sum < 1), where deflate does not allow that.
    Incomplete,
}

/// Fills `table` with the decode table of the code with lengths `lens`
/// (one per symbol, 0 = unused), `root` index bits, each symbol decoding to
/// `entry_of(symbol)`.
///
/// As zlib, an incomplete code is accepted only for a single symbol of
/// length 1 (`allow_single`, for literal/length and distance codes: the
/// other half of the table is then invalid), and a code without symbols
/// gives a table of invalid entries (a block without distances).
pub(super) fn build(
    table: &mut [u32],
    lens: &[u8],
    root: u32,
    entry_of: impl Fn(usize) -> u32,
    allow_single: bool,
) -> Result<(), BadCode> {
    let mut count = [0u16; MAX_CODE_LEN as usize + 1];
    for &len in lens {
        count[usize::from(len)] += 1;
    }
    count[0] = 0;
    let max_len = (1..=MAX_CODE_LEN as usize).rev().find(|&l| count[l] != 0);
    let Some(max_len) = max_len else {
        table[..1 << root].fill(INVALID);
        return Ok(());
    };
    // Kraft: codes left over at each length.
    let mut left: i32 = 1;
    for &c in &count[1..] {
        left = (left << 1) - i32::from(c);
        if left < 0 {
            return Err(BadCode::Oversubscribed);
        }
    }
    if left > 0 {
        if !(allow_single && max_len == 1) {
            return Err(BadCode::Incomplete);
        }
        table[..1 << root].fill(INVALID);
    }

    // Symbols in canonical order: by length, then by symbol.
    let mut offsets = [0u16; MAX_CODE_LEN as usize + 2];
    for len in 1..=MAX_CODE_LEN as usize {
        offsets[len + 1] = offsets[len] + count[len];
    }
    let mut sorted = [0u16; 288];
    for (sym, &len) in lens.iter().enumerate() {
        if len != 0 {
            let at = &mut offsets[usize::from(len)];
            sorted[usize::from(*at)] = sym as u16;
            *at += 1;
        }
    }
    let n = usize::from(offsets[MAX_CODE_LEN as usize]);
    let sorted = &sorted[..n];

    // Canonical codes, assigned in that order, reversed for lookup.
    let mut code: u32 = 0;
    let mut len_of_prev = 0usize;
    let mut first_long = n;
    let mut codes = [0u16; 288];
    for (i, &sym) in sorted.iter().enumerate() {
        let len = usize::from(lens[usize::from(sym)]);
        if i > 0 {
            code += 1;
        }
        code <<= len - len_of_prev;
        len_of_prev = len;
        codes[i] = reverse(code, len);
        if len as u32 > root {
            first_long = first_long.min(i);
            continue;
        }
        let e = with_code(entry_of(usize::from(sym)), len as u32);
        let mut at = usize::from(codes[i]);
        while at < 1 << root {
            table[at] = e;
            at += 1 << len;
        }
    }

    // Codes longer than `root`: those sharing their first `root` bits are
    // consecutive in canonical order, the longest last.
    let root_mask = (1u16 << root) - 1;
    let mut next_free = 1usize << root;
    let mut i = first_long;
    while i < n {
        let prefix = codes[i] & root_mask;
        let mut j = i;
        while j < n && codes[j] & root_mask == prefix {
            j += 1;
        }
        let sub_bits = u32::from(lens[usize::from(sorted[j - 1])]) - root;
        let start = next_free;
        next_free += 1 << sub_bits;
        table[usize::from(prefix)] = pointer(start, root, sub_bits);
        for k in i..j {
            let sym = usize::from(sorted[k]);
            let rest = u32::from(lens[sym]) - root;
            let e = with_code(entry_of(sym), rest);
            let mut at = usize::from(codes[k] >> root);
            while at < 1 << sub_bits {
                table[start + at] = e;
                at += 1 << rest;
            }
        }
        i = j;
    }
    Ok(())
}

/// The `len` low bits of `code`, reversed.
fn reverse(code: u32, len: usize) -> u16 {
    (code as u16).reverse_bits() >> (16 - len)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table_of(lens: &[u8], root: u32) -> Result<Vec<u32>, BadCode> {
        let mut table = vec![0; entries(root, lens.len())];
        build(&mut table, lens, root, codelen_entry, true).map(|()| table)
    }

    /// Decodes one symbol from the low bits of `bits` (stream order).
    fn decode(table: &[u32], root: u32, bits: u32) -> (u32, u32) {
        let e = table[(bits & ((1 << root) - 1)) as usize];
        if e & SUBTABLE == 0 {
            return (value(e), nbits(e));
        }
        let sub = (bits >> root) & ((1 << index_bits(e)) - 1);
        let e2 = table[(value(e) + sub) as usize];
        (value(e2), root + nbits(e2))
    }

    #[test]
    fn the_example_of_rfc_1951_decodes() {
        // RFC 1951 3.2.2: lengths (3, 3, 3, 3, 3, 2, 4, 4) give
        // A=010 B=011 C=100 D=101 E=110 F=00 G=1110 H=1111 (MSB first).
        let lens = [3, 3, 3, 3, 3, 2, 4, 4];
        let codes = [0b010, 0b011, 0b100, 0b101, 0b110, 0b00, 0b1110, 0b1111];
        for root in [2, 3, 4, 7] {
            let table = table_of(&lens, root).unwrap();
            for (sym, (&code, &len)) in codes.iter().zip(&lens).enumerate() {
                let bits = u32::from(reverse(code, len.into()));
                // Whatever follows the code must not matter.
                for tail in [0, 0b1010_1010 << len, u32::MAX << len] {
                    assert_eq!(
                        decode(&table, root, bits | tail),
                        (sym as u32, u32::from(len)),
                        "symbol {sym}, root {root}"
                    );
                }
            }
        }
    }

    #[test]
    fn oversubscribed_incomplete_and_empty_codes() {
        assert_eq!(table_of(&[1, 1, 1], 7), Err(BadCode::Oversubscribed));
        assert_eq!(table_of(&[1, 2], 7), Err(BadCode::Incomplete));
        let mut table = vec![0; 1 << 7];
        assert_eq!(
            build(&mut table, &[0, 1], 7, codelen_entry, false),
            Err(BadCode::Incomplete)
        );
        let single = table_of(&[0, 1], 7).unwrap();
        assert_eq!(decode(&single, 7, 0), (1, 1));
        assert_eq!(single[1] & INVALID, INVALID);
        let empty = table_of(&[0, 0, 0], 7).unwrap();
        assert!(empty[..128].iter().all(|&e| e == INVALID));
    }

    #[test]
    fn fifteen_bit_codes_use_subtables_that_fit() {
        // A maximally skewed code: lengths 1, 2, ..., 14, 15, 15.
        let mut lens: Vec<u8> = (1..=15).collect();
        lens.push(15);
        let table = table_of(&lens, LITLEN_ROOT).unwrap();
        let mut code = 0u32;
        let mut prev = 0;
        for (sym, &len) in lens.iter().enumerate() {
            if sym > 0 {
                code += 1;
            }
            code <<= len - prev;
            prev = len;
            let bits = u32::from(reverse(code, len.into()));
            assert_eq!(
                decode(&table, LITLEN_ROOT, bits),
                (sym as u32, u32::from(len))
            );
        }
    }
}
