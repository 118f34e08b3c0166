//! gzip (RFC 1952): members of a header, a raw deflate stream and a trailer
//! holding the CRC-32 and the length (mod 2^32) of the data.
//!
//! The deflate data goes through [`super::inflate`]. The CRC is optional:
//! computing it costs about 5% of inflating, and a pulled layer is covered
//! by its sha256 digest, which the puller checks before the tree is
//! committed. Each member's length is checked either way, so truncation and
//! most corruption are caught where they happen. Concatenated members are
//! read in turn, as `MultiGzDecoder` (and Go's `gzip.Reader`) do.

use std::io::{self, Read};

use flate2::Crc;

use super::inflate::{Inflater, Input, Stop};

/// Header flags (RFC 1952, 2.3.1).
const FHCRC: u8 = 1 << 1;
const FEXTRA: u8 = 1 << 2;
const FNAME: u8 = 1 << 3;
const FCOMMENT: u8 = 1 << 4;
const RESERVED: u8 = 0xe0;

/// Where the reader is in the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Before a member's header; `first` until one was read.
    Header { first: bool },
    /// Inside a member's deflate data.
    Body,
}

/// Reads the data of a gzip stream of one or more members, checking each
/// member's length, and its CRC-32 if asked to.
pub(super) struct GzipReader<R> {
    input: Input<R>,
    inflate: Box<Inflater>,
    state: State,
    /// The current member's CRC-32 so far, when checked.
    crc: Option<Crc>,
    /// Whether the current member's length is left to the caller: see
    /// [`GzipReader::resume`].
    defer_length: bool,
    /// The deferred length: the trailer's ISIZE and the bytes produced.
    deferred: Option<(u32, u64)>,
}

impl<R: Read> GzipReader<R> {
    /// A reader of the gzip stream `inner`, read `buffer` bytes at a time,
    /// checking CRC-32s if `check_crc`.
    pub(super) fn new(inner: R, buffer: usize, check_crc: bool) -> Self {
        Self {
            input: Input::new(inner, buffer),
            inflate: Box::new(Inflater::new()),
            state: State::Header { first: true },
            crc: check_crc.then(Crc::new),
            defer_length: false,
            deferred: None,
        }
    }

    /// A reader that starts in the middle of a member's deflate data, at
    /// byte `offset` of the gzip stream (`inner` reads from there) and
    /// `skip` bits into it, where a block starts after `history` (see
    /// [`Inflater::resume`]). The CRC is not checked. The current member's
    /// length cannot be checked here either, as its bytes before this point
    /// are unknown: the trailer's ISIZE and the bytes read up to it are
    /// kept for [`Self::take_deferred_length`].
    pub(super) fn resume(
        inner: R,
        buffer: usize,
        offset: u64,
        skip: u32,
        history: &[u8],
    ) -> io::Result<Self> {
        let mut reader = Self {
            input: Input::at(inner, buffer, offset),
            inflate: Box::new(Inflater::new()),
            state: State::Body,
            crc: None,
            defer_length: true,
            deferred: None,
        };
        reader.inflate.resume(history);
        reader.inflate.skip_bits(&mut reader.input, skip)?;
        Ok(reader)
    }

    /// The first member's ISIZE and the bytes this reader produced of it,
    /// once its trailer was read, for a reader made by [`Self::resume`].
    pub(super) fn take_deferred_length(&mut self) -> Option<(u32, u64)> {
        self.deferred.take()
    }

    /// Whether [`Self::take_deferred_length`] has the length.
    pub(super) fn has_deferred_length(&self) -> bool {
        self.deferred.is_some()
    }

    /// Where the reader is in the stream, in bits, if inside a member's
    /// deflate data.
    pub(super) fn bit_position(&self) -> Option<u64> {
        (self.state == State::Body).then(|| self.inflate.bit_position(&self.input))
    }

    /// Stops before the deflate block that starts at bit `bit` of the
    /// stream, if one does (then reads return 0): see [`Inflater::stop_at`].
    pub(super) fn stop_at(&mut self, bit: u64) {
        self.inflate.stop_at(bit);
    }

    /// See [`Inflater::stop`].
    pub(super) fn stop(&self) -> Stop {
        self.inflate.stop()
    }

    /// The last 32 KiB of the current member's data.
    pub(super) fn history(&self) -> Vec<u8> {
        self.inflate.history()
    }

    /// Bytes of the current member's data produced so far.
    pub(super) fn member_out(&self) -> u64 {
        self.inflate.total_out()
    }

    /// Reads a member's header. `false` at the clean end of the stream
    /// (after at least one member).
    fn header(&mut self, first: bool) -> io::Result<bool> {
        if self.input.fill(1)? == 0 {
            return if first { Err(truncated()) } else { Ok(false) };
        }
        let fixed: [u8; 10] = self.read_array()?;
        if fixed[..3] != [0x1f, 0x8b, 8] {
            return Err(invalid("not a gzip member header"));
        }
        let flags = fixed[3];
        if flags & RESERVED != 0 {
            return Err(invalid("reserved gzip header flags set"));
        }
        if flags & FEXTRA != 0 {
            let len: [u8; 2] = self.read_array()?;
            self.skip(u16::from_le_bytes(len).into())?;
        }
        for flag in [FNAME, FCOMMENT] {
            if flags & flag != 0 {
                self.skip_string()?;
            }
        }
        if flags & FHCRC != 0 {
            self.skip(2)?;
        }
        Ok(true)
    }

    /// Reads the next `N` bytes.
    fn read_array<const N: usize>(&mut self) -> io::Result<[u8; N]> {
        if self.input.fill(N)? < N {
            return Err(truncated());
        }
        let bytes = self.input.available()[..N].try_into().expect("N bytes");
        self.input.consume(N);
        Ok(bytes)
    }

    /// Skips `n` bytes.
    fn skip(&mut self, mut n: usize) -> io::Result<()> {
        while n > 0 {
            let available = self.input.fill(1)?;
            if available == 0 {
                return Err(truncated());
            }
            let k = available.min(n);
            self.input.consume(k);
            n -= k;
        }
        Ok(())
    }

    /// Skips a NUL-terminated string, never holding it in memory.
    fn skip_string(&mut self) -> io::Result<()> {
        loop {
            if self.input.fill(1)? == 0 {
                return Err(truncated());
            }
            let buf = self.input.available();
            match buf.iter().position(|&b| b == 0) {
                Some(at) => {
                    self.input.consume(at + 1);
                    return Ok(());
                }
                None => {
                    let n = buf.len();
                    self.input.consume(n);
                }
            }
        }
    }

    /// Reads a member's trailer and checks the member's length (and CRC).
    fn trailer(&mut self) -> io::Result<()> {
        let trailer: [u8; 8] = self.read_array()?;
        if let Some(crc) = &mut self.crc {
            let expected = u32::from_le_bytes(trailer[..4].try_into().expect("4 bytes"));
            if crc.sum() != expected {
                return Err(invalid("gzip member CRC-32 does not match its data"));
            }
            crc.reset();
        }
        let isize = u32::from_le_bytes(trailer[4..].try_into().expect("4 bytes"));
        if self.defer_length {
            self.defer_length = false;
            self.deferred = Some((isize, self.inflate.total_out()));
            return Ok(());
        }
        // ISIZE is the length mod 2^32: the truncation is the format's.
        if isize != self.inflate.total_out() as u32 {
            return Err(invalid("gzip member length does not match its data"));
        }
        Ok(())
    }
}

impl<R: Read> Read for GzipReader<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        loop {
            if let State::Header { first } = self.state {
                if !self.header(first)? {
                    return Ok(0);
                }
                self.inflate.reset();
                self.state = State::Body;
            }
            let (produced, ended) = self.inflate.inflate(&mut self.input, out)?;
            if let Some(crc) = &mut self.crc {
                crc.update(&out[..produced]);
            }
            if self.inflate.stop() == Stop::Reached {
                return Ok(produced);
            }
            if ended {
                self.trailer()?;
                self.state = State::Header { first: false };
            }
            if produced > 0 {
                return Ok(produced);
            }
        }
    }
}

fn truncated() -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, "gzip stream truncated")
}

fn invalid(what: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use flate2::GzBuilder;

    use super::super::inflate::Trickle;
    use super::*;

    fn member(data: &[u8]) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(data).unwrap();
        encoder.finish().unwrap()
    }

    /// Reads all of `bytes`, which arrive `step` bytes a read.
    fn read_all(bytes: &[u8], step: usize) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        GzipReader::new(Trickle::new(bytes, step), 4096, true).read_to_end(&mut out)?;
        Ok(out)
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 + i / 777) as u8).collect()
    }

    #[test]
    fn reads_what_flate2_reads_across_read_sizes() {
        for len in [0, 1, 1000, 300_000] {
            let data = pattern(len);
            let bytes = member(&data);
            for step in [1, 7, 4096, 1 << 20] {
                assert!(
                    read_all(&bytes, step).unwrap() == data,
                    "{len} bytes, reads of {step}"
                );
            }
        }
    }

    #[test]
    fn optional_header_fields_and_several_members() {
        let mut first = Vec::new();
        let mut encoder = GzBuilder::new()
            .filename("layer.tar")
            .comment("a comment")
            .extra(vec![1, 2, 3, 4])
            .write(&mut first, flate2::Compression::default());
        encoder.write_all(b"first member, ").unwrap();
        encoder.finish().unwrap();
        let mut bytes = first;
        bytes.extend(member(b"second member"));
        assert_eq!(read_all(&bytes, 3).unwrap(), b"first member, second member");
    }

    #[test]
    fn truncation_anywhere_is_unexpected_eof() {
        let bytes = member(&pattern(50_000));
        for cut in [
            0,
            5,
            10,
            20,
            bytes.len() / 2,
            bytes.len() - 8,
            bytes.len() - 1,
        ] {
            let err = read_all(&bytes[..cut], 512).unwrap_err();
            assert_eq!(
                err.kind(),
                io::ErrorKind::UnexpectedEof,
                "cut at {cut}: {err}"
            );
        }
    }

    #[test]
    fn a_wrong_length_or_crc_garbage_after_a_member_or_bad_flags_are_invalid() {
        let good = member(&pattern(10_000));
        let mut wrong_len = good.clone();
        let n = wrong_len.len();
        wrong_len[n - 1] ^= 1;
        let mut wrong_crc = good.clone();
        wrong_crc[n - 8] ^= 1;
        let mut garbage = good.clone();
        garbage.extend(b"not gzip at all");
        let mut reserved = good.clone();
        reserved[3] |= 0x80;
        for (what, bytes) in [
            ("length", wrong_len),
            ("crc", wrong_crc),
            ("garbage", garbage),
            ("flags", reserved),
        ] {
            let err = read_all(&bytes, 4096).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{what}: {err}");
        }
    }

    #[test]
    fn the_crc_is_checked_only_when_asked() {
        let mut bytes = member(&pattern(10_000));
        let n = bytes.len();
        bytes[n - 8] ^= 1;
        let mut out = Vec::new();
        GzipReader::new(&bytes[..], 4096, false)
            .read_to_end(&mut out)
            .unwrap();
        assert!(out == pattern(10_000));
    }

    #[test]
    fn a_huge_file_name_is_skipped_in_constant_memory() {
        let mut bytes = vec![0x1f, 0x8b, 8, FNAME, 0, 0, 0, 0, 0, 3];
        bytes.extend(std::iter::repeat_n(b'a', 8 << 20));
        bytes.push(0);
        bytes.extend(&member(b"data")[10..]);
        assert_eq!(read_all(&bytes, 64 * 1024).unwrap(), b"data");
    }
}

/// Decoding a gzip stream in two parts that meet at a block boundary, as the
/// decoder threads do (see `inflate::split` and `decode`).
#[cfg(test)]
mod split_tests {
    use std::io::Write;

    use std::io::Read as _;
    use std::sync::atomic::AtomicBool;

    use super::super::inflate::{LOOKBACK, Trickle, find_head};
    use super::*;

    /// Data like a layer's (see `files_like`), in which a head is found
    /// wherever one is looked for.
    fn real_bytes(len: usize) -> Vec<u8> {
        test_utils::fuzz::files_like(len, 3)
    }

    fn gzip(data: &[u8], level: u32) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(level));
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    /// What a split at the first block found from byte `at` of `bytes`
    /// decodes to: `None` if none was found, or the front went past it.
    /// The search is given the bytes before `at` as the back thread gives
    /// them.
    fn split_read(bytes: &[u8], at: usize) -> Option<io::Result<Vec<u8>>> {
        let from = at.saturating_sub(LOOKBACK as usize);
        let head = find_head(
            &bytes[from..],
            from as u64,
            8 * at as u64,
            8 << 20,
            &AtomicBool::new(false),
        )?;
        assert!(head.start_bit >= 8 * at as u64 && head.resume_bit > head.start_bit);
        let mut front = GzipReader::new(Trickle::new(bytes, 5000), 4096, false);
        front.stop_at(head.start_bit);
        let mut out = Vec::new();
        if let Err(e) = front.read_to_end(&mut out) {
            return Some(Err(e));
        }
        if front.stop() != Stop::Reached {
            return None;
        }
        out.extend(head.resolve(&front.history()).unwrap());
        let base = front.member_out() + head.len() as u64;
        let resume = head.resume_bit / 8;
        let mut back = GzipReader::resume(
            &bytes[resume as usize..],
            4096,
            resume,
            (head.resume_bit % 8) as u32,
            &head.history(),
        )
        .unwrap();
        let mut rest = Vec::new();
        let read = back.read_to_end(&mut rest);
        let (isize, produced) = back.take_deferred_length().expect("the member's trailer");
        out.extend(rest);
        Some(read.and_then(|_| {
            if isize == (base + produced) as u32 {
                Ok(out)
            } else {
                Err(invalid("gzip member length does not match its data"))
            }
        }))
    }

    #[test]
    fn two_parts_meeting_at_a_block_decode_as_one() {
        let data = real_bytes(4 << 20);
        let mut splits = 0;
        for level in [3, 6, 9] {
            let bytes = gzip(&data, level);
            // The first block always makes a head: nothing reaches before it.
            assert!(split_read(&bytes, 10).unwrap().unwrap() == data);
            // Past it, a head needs the markers to die out within the data,
            // which real data does (on the bench layer, within 65 KiB to
            // 1.3 MiB of output), but not for certain.
            for percent in [10, 35, 50, 70, 97] {
                let at = 10 + bytes.len() * percent / 100;
                if let Some(out) = split_read(&bytes, at) {
                    assert!(out.unwrap() == data, "level {level}, split at {at}");
                    splits += 1;
                }
            }
        }
        assert!(splits >= 3, "{splits} splits past the first block");
    }

    #[test]
    fn the_search_stops_when_abandoned_or_past_its_output_bound() {
        let data = real_bytes(1 << 20);
        let bytes = gzip(&data, 6);
        let find = |max_out, abandoned| {
            find_head(&bytes[10..], 10, 80, max_out, &AtomicBool::new(abandoned))
        };
        assert!(find(8 << 20, false).is_some());
        assert!(find(8 << 20, true).is_none());
        // A head is 32 KiB at least.
        assert!(find(16 << 10, false).is_none());
    }

    #[test]
    fn a_compressed_file_stored_in_the_stream_is_passed_over() {
        // A layer holding a `.gz` file: the outer stream stores its bytes,
        // and the file's own deflate stream, at a bit no block of the outer
        // one starts at, decodes like a block from the start.
        let inner = gzip(&test_utils::fuzz::files_like(384 << 10, 5), 6);
        let mut data = real_bytes(256 << 10);
        data.extend_from_slice(&inner);
        data.extend_from_slice(&real_bytes(256 << 10));
        let bytes = gzip(&data, 6);
        let at = bytes
            .windows(64)
            .position(|w| w == &inner[..64])
            .expect("the file's bytes are stored as they are");
        // A search from there finds a block of the outer stream, which the
        // front stops at.
        let split = split_read(&bytes, at).expect("a block the front stops at");
        assert!(split.unwrap() == data);
    }

    #[test]
    fn a_stop_where_no_block_starts_is_passed() {
        let data = real_bytes(1 << 20);
        let bytes = gzip(&data, 6);
        let head = find_head(&bytes[10..], 10, 80, 8 << 20, &AtomicBool::new(false)).unwrap();
        for bit in [head.start_bit - 1, head.start_bit + 1] {
            let mut front = GzipReader::new(&bytes[..], 4096, false);
            front.stop_at(bit);
            let mut out = Vec::new();
            front.read_to_end(&mut out).unwrap();
            assert_eq!(front.stop(), Stop::Missed);
            assert!(out == data);
        }
    }

    #[test]
    fn the_parts_keep_the_length_check_and_later_members() {
        let data = real_bytes(2 << 20);
        let mut bytes = gzip(&data, 6);
        let second = gzip(b"second member", 6);
        bytes.extend_from_slice(&second);
        let mut whole = data.clone();
        whole.extend_from_slice(b"second member");
        // In the middle if a head is found there (see above), else at the
        // first block.
        let at = [bytes.len() / 2, 10]
            .into_iter()
            .find(|&at| split_read(&bytes, at).is_some())
            .unwrap();
        assert!(split_read(&bytes, at).unwrap().unwrap() == whole);
        // A wrong ISIZE in the first member's trailer: the back part reads
        // on, and the length check fails once both parts are known.
        let isize_at = bytes.len() - second.len() - 4;
        bytes[isize_at] ^= 1;
        let err = split_read(&bytes, at).unwrap().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }
}
