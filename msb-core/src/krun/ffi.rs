//! The helpers every libkrun call goes through: return-value checks and C
//! string conversion.

use std::ffi::{CString, c_char};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::error::{KrunError, error};

/// How many entries libkrun reads from a NULL-terminated string array
/// (`MAX_ARGS` in libkrun's `src/lib.rs`). It views every such array as a
/// slice of exactly this many pointers and silently ignores entries past it.
pub(crate) const MAX_ARRAY_LEN: usize = 4096;

/// Turns a libkrun return value into a result: negative values are errnos.
pub(crate) fn check(call: &'static str, ret: i32) -> io::Result<()> {
    check_value(call, ret).map(drop)
}

/// Like [`check`], for calls whose non-negative return value means something.
pub(crate) fn check_value(call: &'static str, ret: i32) -> io::Result<u32> {
    u32::try_from(ret).map_err(|_| KrunError::new(call, ret.saturating_neg(), None).into())
}

/// Bytes as a C string, or `InvalidInput` (`EINVAL`) naming `call` if they
/// hold a NUL byte.
pub(crate) fn c_string(call: &'static str, what: &str, value: &[u8]) -> io::Result<CString> {
    CString::new(value).map_err(|_| {
        error(
            call,
            libc::EINVAL,
            format!(
                "{what} contains an interior NUL byte: {:?}",
                String::from_utf8_lossy(value)
            ),
        )
    })
}

/// A string as a C string, or `InvalidInput` naming `call`.
pub(crate) fn str_c_string(call: &'static str, what: &str, value: &str) -> io::Result<CString> {
    c_string(call, what, value.as_bytes())
}

/// A path as a C string, or `InvalidInput` naming `call`. libkrun also needs
/// it to be UTF-8 (it answers `EINVAL` otherwise), so that is checked here.
pub(crate) fn path_c_string(call: &'static str, what: &str, path: &Path) -> io::Result<CString> {
    if path.to_str().is_none() {
        return Err(error(
            call,
            libc::EINVAL,
            format!("{what} {} is not valid UTF-8", path.display()),
        ));
    }
    c_string(call, what, path.as_os_str().as_bytes())
}

/// A NULL-terminated array of C strings, as libkrun's `const char *const[]`
/// parameters expect.
///
/// The pointer array is always [`MAX_ARRAY_LEN`] entries long (NULL-padded):
/// libkrun builds a slice of exactly that many pointers over whatever it is
/// given, so the whole span must be valid memory even though it stops reading
/// at the first NULL.
pub(crate) struct CStringArray {
    /// Owns the strings the pointers point into. A `CString`'s heap buffer
    /// does not move when the `CString` value itself is moved.
    _strings: Vec<CString>,
    ptrs: Vec<*const c_char>,
}

impl CStringArray {
    /// Converts `items`, failing with `InvalidInput` (naming `call`) on an
    /// interior NUL, or `E2BIG` when libkrun would silently drop entries.
    pub(crate) fn new<S: AsRef<str>>(
        call: &'static str,
        what: &str,
        items: &[S],
    ) -> io::Result<Self> {
        // One slot stays NULL so that the array is terminated.
        if items.len() >= MAX_ARRAY_LEN {
            return Err(error(
                call,
                libc::E2BIG,
                format!(
                    "{} {what} entries given, at most {} fit libkrun's array",
                    items.len(),
                    MAX_ARRAY_LEN - 1
                ),
            ));
        }
        let strings = items
            .iter()
            .map(|s| str_c_string(call, what, s.as_ref()))
            .collect::<io::Result<Vec<_>>>()?;
        let mut ptrs: Vec<*const c_char> = strings.iter().map(|s| s.as_ptr()).collect();
        ptrs.resize(MAX_ARRAY_LEN, std::ptr::null());
        Ok(Self {
            _strings: strings,
            ptrs,
        })
    }

    /// The array's first element; valid, NULL-terminated and
    /// [`MAX_ARRAY_LEN`] pointers long while `self` lives.
    pub(crate) fn as_ptr(&self) -> *const *const c_char {
        self.ptrs.as_ptr()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrays_are_null_padded_to_libkrun_length() {
        let array = CStringArray::new("krun_set_env", "entry", &["A=b", "C=d"]).unwrap();
        assert_eq!(array.ptrs.len(), MAX_ARRAY_LEN);
        assert!(array.ptrs[..2].iter().all(|p| !p.is_null()));
        assert!(array.ptrs[2..].iter().all(|p| p.is_null()));
        let full: Vec<String> = (0..MAX_ARRAY_LEN - 1).map(|i| i.to_string()).collect();
        let array = CStringArray::new("krun_set_env", "entry", &full).unwrap();
        assert!(array.ptrs[MAX_ARRAY_LEN - 1].is_null());
    }

    #[test]
    fn negative_returns_become_errno() {
        assert_eq!(check_value("krun_create_ctx", 7).unwrap(), 7);
        let err = check("krun_free_ctx", -libc::ENOENT).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        let krun = KrunError::from_io(&err).unwrap();
        assert_eq!((krun.call, krun.errno), ("krun_free_ctx", libc::ENOENT));
        assert_eq!(
            err.to_string(),
            "krun_free_ctx failed: No such file or directory (os error 2)"
        );
    }

    #[test]
    fn non_utf8_paths_are_rejected() {
        use std::ffi::OsStr;
        let path = Path::new(OsStr::from_bytes(b"/tmp/\xff"));
        let err = path_c_string("krun_set_root", "root path", path).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }
}
