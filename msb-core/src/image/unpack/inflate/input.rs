//! The compressed bytes: a buffer over a reader, refilled in place.

use std::io::{self, Read};

/// A read buffer whose unread bytes `buf[pos..end]` the inflater reads
/// directly. [`Input::fill`] moves them to the front and reads more behind
/// them.
pub(in crate::image::unpack) struct Input<R> {
    pub(super) src: R,
    pub(super) buf: Box<[u8]>,
    pub(super) pos: usize,
    pub(super) end: usize,
    /// The reader reported its end.
    pub(super) eof: bool,
    /// Where `buf[0]` is in the stream, in bytes.
    pub(super) offset: u64,
}

impl<R: Read> Input<R> {
    /// A buffer of `capacity` bytes (at least 4 KiB) over `src`.
    pub(in crate::image::unpack) fn new(src: R, capacity: usize) -> Self {
        Self::at(src, capacity, 0)
    }

    /// A buffer over `src`, whose first byte is at `offset` in the stream.
    pub(in crate::image::unpack) fn at(src: R, capacity: usize, offset: u64) -> Self {
        Self {
            src,
            buf: vec![0; capacity.max(4096)].into_boxed_slice(),
            pos: 0,
            end: 0,
            eof: false,
            offset,
        }
    }

    /// The unread bytes.
    pub(in crate::image::unpack) fn available(&self) -> &[u8] {
        &self.buf[self.pos..self.end]
    }

    /// Marks `n` unread bytes read.
    pub(in crate::image::unpack) fn consume(&mut self, n: usize) {
        assert!(n <= self.end - self.pos, "consuming bytes not read");
        self.pos += n;
    }

    /// Makes at least `want` bytes (at most the buffer's size) available,
    /// fewer only at the reader's end; returns how many are. Reads what the
    /// reader has beyond that too, blocking only while fewer than `want`
    /// are there.
    pub(in crate::image::unpack) fn fill(&mut self, want: usize) -> io::Result<usize> {
        let want = want.min(self.buf.len());
        if self.end - self.pos >= want || self.eof {
            return Ok(self.end - self.pos);
        }
        self.buf.copy_within(self.pos..self.end, 0);
        self.offset += self.pos as u64;
        self.end -= self.pos;
        self.pos = 0;
        while self.end < want {
            match self.src.read(&mut self.buf[self.end..]) {
                Ok(0) => {
                    self.eof = true;
                    break;
                }
                Ok(n) => self.end += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(self.end - self.pos)
    }
}

impl<R> Input<R> {
    /// Where the next unread byte is in the stream.
    pub(in crate::image::unpack) fn position(&self) -> u64 {
        self.offset + self.pos as u64
    }
}

/// A reader handing out at most `step` bytes a read, for tests of every
/// boundary.
#[cfg(test)]
pub(in crate::image::unpack) struct Trickle<'a> {
    data: &'a [u8],
    step: usize,
}

#[cfg(test)]
impl<'a> Trickle<'a> {
    pub(in crate::image::unpack) fn new(data: &'a [u8], step: usize) -> Self {
        Self { data, step }
    }
}

#[cfg(test)]
impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.step.min(buf.len()).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}
