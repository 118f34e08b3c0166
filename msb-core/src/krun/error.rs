//! [`KrunError`]: a failed libkrun call, carried inside an [`io::Error`].

use std::fmt;
use std::io;

/// A failed libkrun call: which C function failed, and with which errno.
///
/// libkrun reports errors as negative errno values. This module turns each one
/// into an [`io::Error`] whose [`kind`](io::Error::kind) follows the errno and
/// whose inner error is a `KrunError`; get it back with [`KrunError::from_io`].
/// Errors found by this module's own checks (a missing root directory, a
/// string with an interior NUL byte) use the same shape and name the call they
/// guard.
///
/// ```
/// use std::io;
/// use msb_core::krun::KrunError;
///
/// let err: io::Error = KrunError::new("krun_set_vm_config", libc::EINVAL, None).into();
/// assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
/// assert_eq!(err.to_string(), "krun_set_vm_config failed: Invalid argument (os error 22)");
/// assert_eq!(KrunError::from_io(&err).unwrap().errno, libc::EINVAL);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KrunError {
    /// The libkrun function, e.g. `"krun_set_vm_config"`.
    pub call: &'static str,
    /// The (positive) errno, e.g. `libc::EINVAL`.
    pub errno: i32,
    /// What was wrong, when this module knows more than the errno says.
    pub detail: Option<String>,
}

impl KrunError {
    /// A new error for `call` with a positive `errno`.
    pub fn new(call: &'static str, errno: i32, detail: Option<String>) -> Self {
        Self {
            call,
            errno,
            detail,
        }
    }

    /// The `KrunError` inside an [`io::Error`] made by this module, if any.
    pub fn from_io(err: &io::Error) -> Option<&KrunError> {
        err.get_ref()?.downcast_ref::<KrunError>()
    }

    /// The [`io::ErrorKind`] matching [`errno`](Self::errno).
    pub fn kind(&self) -> io::ErrorKind {
        io::Error::from_raw_os_error(self.errno).kind()
    }
}

impl fmt::Display for KrunError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let os = io::Error::from_raw_os_error(self.errno);
        write!(f, "{} failed: {os}", self.call)?;
        if let Some(detail) = &self.detail {
            write!(f, ": {detail}")?;
        }
        Ok(())
    }
}

impl std::error::Error for KrunError {}

impl From<KrunError> for io::Error {
    fn from(err: KrunError) -> Self {
        io::Error::new(err.kind(), err)
    }
}

/// An `io::Error` for `call` failing with `errno`, with a detail message.
pub(crate) fn error(call: &'static str, errno: i32, detail: impl Into<String>) -> io::Error {
    KrunError::new(call, errno, Some(detail.into())).into()
}
