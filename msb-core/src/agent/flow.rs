//! Per-stream flow control.
//!
//! Each stream has an independent credit window in each direction. Data
//! frames (`Stdin`, `Stdout`, `Stderr`, `FileChunk`) spend the sender's credit
//! by their payload length; the receiver returns credit with `WindowUpdate`
//! as its consumer takes the data. A sender with no credit waits on that
//! stream only, so a slow reader stalls its own stream and nothing else.
//! Control messages are never flow-controlled.

use super::protocol::ProtocolErrorKind;
use super::{INITIAL_WINDOW, MAX_PAYLOAD_LEN, MAX_WINDOW};
use crate::Result;

/// The sender's credit on one stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendWindow {
    available: u32,
}

impl Default for SendWindow {
    fn default() -> Self {
        Self::new()
    }
}

impl SendWindow {
    /// A window holding [`INITIAL_WINDOW`] bytes of credit.
    pub fn new() -> Self {
        Self {
            available: INITIAL_WINDOW,
        }
    }

    /// Credit left, in bytes.
    pub fn available(&self) -> u32 {
        self.available
    }

    /// How many of `want` bytes may go in the next data frame: bounded by the
    /// credit and by [`MAX_PAYLOAD_LEN`]. 0 means wait for a `WindowUpdate`.
    pub fn sendable(&self, want: usize) -> usize {
        want.min(self.available as usize)
            .min(MAX_PAYLOAD_LEN as usize)
    }

    /// Spends `n` bytes of credit; `n` must not exceed
    /// [`sendable`](Self::sendable) (excess saturates at zero).
    pub fn consume(&mut self, n: usize) {
        self.available = self
            .available
            .saturating_sub(u32::try_from(n).unwrap_or(u32::MAX));
    }

    /// Applies a `WindowUpdate` from the peer. Growing past [`MAX_WINDOW`] is
    /// a protocol violation.
    pub fn grant(&mut self, stream: u32, increment: u32) -> Result<()> {
        match self.available.checked_add(increment) {
            Some(total) if total <= MAX_WINDOW => {
                self.available = total;
                Ok(())
            }
            _ => Err(ProtocolErrorKind::FlowControl { stream }.into()),
        }
    }
}

/// The receiver's accounting on one stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecvWindow {
    /// Credit the peer still holds.
    outstanding: u32,
    /// Bytes received and not yet consumed.
    buffered: u32,
    /// Bytes consumed and not yet returned as credit.
    unacked: u32,
}

impl Default for RecvWindow {
    fn default() -> Self {
        Self::new()
    }
}

impl RecvWindow {
    /// A window that granted the peer [`INITIAL_WINDOW`] bytes.
    pub fn new() -> Self {
        Self {
            outstanding: INITIAL_WINDOW,
            buffered: 0,
            unacked: 0,
        }
    }

    /// Bytes received and not yet consumed: at most [`INITIAL_WINDOW`].
    pub fn buffered(&self) -> u32 {
        self.buffered
    }

    /// Accounts for a data frame of `n` bytes. More than the peer's credit is
    /// a protocol violation ([`ProtocolErrorKind::FlowControl`]).
    pub fn on_data(&mut self, stream: u32, n: usize) -> Result<()> {
        match u32::try_from(n) {
            Ok(n) if n <= self.outstanding => {
                self.outstanding -= n;
                self.buffered += n;
                Ok(())
            }
            _ => Err(ProtocolErrorKind::FlowControl { stream }.into()),
        }
    }

    /// Accounts for the consumer taking `n` buffered bytes. Returns the
    /// increment to send in a `WindowUpdate` once at least half the initial
    /// window has been consumed (batching updates), else `None`.
    pub fn on_consumed(&mut self, n: usize) -> Option<u32> {
        let n = u32::try_from(n).unwrap_or(u32::MAX).min(self.buffered);
        self.buffered -= n;
        self.unacked += n;
        if self.unacked >= INITIAL_WINDOW / 2 {
            let increment = self.unacked;
            self.outstanding += increment;
            self.unacked = 0;
            Some(increment)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_round_trip() {
        let mut send = SendWindow::new();
        let mut recv = RecvWindow::new();
        let mut total = 0usize;
        // Move 10 MiB in uneven chunks; the sender never exceeds its credit.
        while total < 10 << 20 {
            let n = send.sendable(300_000);
            if n == 0 {
                // Consumer drains everything; updates flow back.
                let buffered = recv.buffered() as usize;
                let inc = recv.on_consumed(buffered).expect("update due");
                send.grant(1, inc).unwrap();
                continue;
            }
            send.consume(n);
            recv.on_data(1, n).unwrap();
            total += n;
            assert!(recv.buffered() <= INITIAL_WINDOW);
        }
    }

    #[test]
    fn overrun_and_overgrant_are_violations() {
        let mut recv = RecvWindow::new();
        recv.on_data(3, INITIAL_WINDOW as usize).unwrap();
        let err = recv.on_data(3, 1).unwrap_err();
        assert!(matches!(
            err,
            crate::Error::AgentProtocol {
                reason: ProtocolErrorKind::FlowControl { stream: 3 }
            }
        ));
        let mut send = SendWindow::new();
        assert!(send.grant(5, MAX_WINDOW).is_err());
        assert_eq!(send.available(), INITIAL_WINDOW);
    }
}
