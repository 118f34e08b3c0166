//! Reading a layer while it downloads.
//!
//! A [`Tail`] is shared by one layer's download and the applier. The
//! download announces the blob's readable handle ([`Tail::start`]), how many
//! bytes have reached the file ([`Tail::advance`]), and how it ended
//! ([`Tail::complete`] once committed; the pull aborts them all when it
//! fails or goes away, see [`Tails`]); a
//! [`TailReader`] reads up to the announced length and waits for more, so a
//! layer is unpacked as it arrives instead of after its last byte.
//!
//! Nothing read before the commit is verified: the applier unpacks into a
//! staging tree that is committed only once every blob of the image has
//! been committed (digest checked), and dropped otherwise.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

/// One layer's download, as the applier sees it.
#[derive(Debug, Default)]
pub(super) struct Tail {
    state: Mutex<TailState>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct TailState {
    /// A handle on the blob's content, once the download began.
    file: Option<Arc<File>>,
    /// Bytes of `file` that may be read.
    available: u64,
    end: End,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum End {
    /// Still downloading (or not started).
    #[default]
    Open,
    /// Committed: `available` is the whole blob.
    Complete,
    /// Failed or cancelled: readers get an error.
    Aborted,
}

impl Tail {
    /// A tail for a download not started yet.
    pub(super) fn new() -> Arc<Self> {
        Arc::default()
    }

    fn state(&self) -> MutexGuard<'_, TailState> {
        // A panic while holding the lock leaves plain numbers behind.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn update(&self, f: impl FnOnce(&mut TailState)) {
        f(&mut self.state());
        self.changed.notify_all();
    }

    /// The download began: `file` reads its content as it lands.
    pub(super) fn start(&self, file: File) {
        self.update(|s| s.file = Some(Arc::new(file)));
    }

    /// `available` bytes have reached the file.
    pub(super) fn advance(&self, available: u64) {
        let mut state = self.state();
        if available > state.available {
            state.available = available;
            drop(state);
            self.changed.notify_all();
        }
    }

    /// The blob, `total` bytes, is committed.
    pub(super) fn complete(&self, total: u64) {
        self.update(|s| {
            if s.end == End::Open {
                s.available = total;
                s.end = End::Complete;
            }
        });
    }

    /// The download failed or was cancelled (no effect once complete).
    pub(super) fn abort(&self) {
        self.update(|s| {
            if s.end == End::Open {
                s.end = End::Aborted;
            }
        });
    }

    /// The committed blob's handle and length; `None` before the commit.
    pub(super) fn committed(&self) -> Option<(Arc<File>, u64)> {
        let state = self.state();
        match (&state.file, state.end) {
            (Some(file), End::Complete) => Some((file.clone(), state.available)),
            _ => None,
        }
    }

    /// A reader from the blob's first byte.
    pub(super) fn reader(self: &Arc<Self>) -> TailReader {
        TailReader {
            tail: self.clone(),
            file: None,
            offset: 0,
        }
    }
}

/// Reads a [`Tail`]'s blob as it downloads: waits for bytes not there yet,
/// ends at the committed blob's end, and fails if the download did.
#[derive(Debug)]
pub(super) struct TailReader {
    tail: Arc<Tail>,
    file: Option<Arc<File>>,
    offset: u64,
}

impl Read for TailReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let mut state = self.tail.state();
        let want = loop {
            if state.end == End::Aborted {
                return Err(io::Error::other("the layer's download stopped"));
            }
            if self.file.is_none() {
                self.file = state.file.clone();
            }
            if self.file.is_some() {
                let ready = state.available.saturating_sub(self.offset);
                if ready > 0 {
                    break buf.len().min(usize::try_from(ready).unwrap_or(usize::MAX));
                }
                if state.end == End::Complete {
                    return Ok(0);
                }
            }
            state = self
                .tail
                .changed
                .wait(state)
                .unwrap_or_else(|p| p.into_inner());
        };
        drop(state);
        let file = self.file.as_ref().expect("set before bytes are ready");
        // Positional reads: the handle is shared, its offset is not used.
        let n = file.read_at(&mut buf[..want], self.offset)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the blob file is shorter than its download announced",
            ));
        }
        self.offset += n as u64;
        Ok(n)
    }
}

/// The tails of one pull's layers. Aborting them is what ends the
/// applier's waits: [`Tails::abort_all`] when the pull fails, and on drop,
/// so that a pull dropped half-way (even before a download task first ran)
/// never leaves the applier waiting for bytes that will not come.
#[derive(Debug)]
pub(super) struct Tails(Vec<Arc<Tail>>);

impl Tails {
    /// `n` tails of downloads not started yet.
    pub(super) fn new(n: usize) -> Self {
        Self((0..n).map(|_| Tail::new()).collect())
    }

    /// Layer `i`'s tail.
    pub(super) fn get(&self, i: usize) -> Arc<Tail> {
        self.0[i].clone()
    }

    /// Every tail, for the applier.
    pub(super) fn all(&self) -> Vec<Arc<Tail>> {
        self.0.clone()
    }

    /// Fails every reader still waiting (completed tails stay complete).
    pub(super) fn abort_all(&self) {
        for tail in &self.0 {
            tail.abort();
        }
    }
}

impl Drop for Tails {
    fn drop(&mut self) {
        self.abort_all();
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_reader_waits_for_bytes_and_ends_at_the_commit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blob");
        let mut writer = File::create(&path).unwrap();
        let tail = Tail::new();
        let mut reader = tail.reader();
        let read_all = std::thread::spawn(move || {
            let mut out = Vec::new();
            reader.read_to_end(&mut out).map(|_| out)
        });
        std::thread::sleep(Duration::from_millis(20));
        tail.start(File::open(&path).unwrap());
        let mut sent = Vec::new();
        for i in 0..50u32 {
            let chunk = i.to_le_bytes().repeat(100);
            writer.write_all(&chunk).unwrap();
            sent.extend_from_slice(&chunk);
            tail.advance(sent.len() as u64);
            if i % 10 == 0 {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        tail.complete(sent.len() as u64);
        assert_eq!(read_all.join().unwrap().unwrap(), sent);
    }

    #[test]
    fn dropping_the_tails_fails_a_waiting_reader() {
        let tails = Tails::new(2);
        let (tail, done) = (tails.get(0), tails.get(1));
        done.complete(0);
        let mut reader = tail.reader();
        let waiting = std::thread::spawn(move || reader.read(&mut [0; 8]));
        std::thread::sleep(Duration::from_millis(20));
        drop(tails);
        assert!(waiting.join().unwrap().is_err());
        // Completion after an abort changes nothing; an abort after
        // completion neither.
        tail.complete(10);
        assert!(tail.reader().read(&mut [0; 8]).is_err());
        done.start(tempfile::tempfile().unwrap());
        assert_eq!(done.reader().read(&mut [0; 8]).unwrap(), 0);
    }
}
