//! The few system calls nix does not wrap with the features we have:
//! extended attributes and reading a directory from a descriptor.

use std::ffi::{CStr, CString, OsString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, IntoRawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};

use nix::fcntl::{OFlag, openat};
use nix::sys::stat::Mode;

/// Set the extended attribute `name` to `value` on the open file `fd`.
pub(crate) fn fsetxattr(fd: BorrowedFd<'_>, name: &[u8], value: &[u8]) -> io::Result<()> {
    let name = CString::new(name).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: `fd` is a live descriptor, `name` a NUL-terminated string and
    // `value` a valid buffer of `value.len()` bytes for the whole call.
    let rc = unsafe {
        libc::fsetxattr(
            fd.as_raw_fd(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Set the extended attribute `name` on the entry `leaf` of the directory
/// `dir` without following `leaf` if it is a symlink. The directory is named
/// through `/proc/self/fd`, which resolves to the open directory itself.
pub(crate) fn lsetxattr_at(
    dir: BorrowedFd<'_>,
    leaf: &[u8],
    name: &[u8],
    value: &[u8],
) -> io::Result<()> {
    let mut path = format!("/proc/self/fd/{}/", dir.as_raw_fd()).into_bytes();
    path.extend_from_slice(leaf);
    let path = CString::new(path).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let name = CString::new(name).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: `path` and `name` are NUL-terminated strings and `value` a
    // valid buffer of `value.len()` bytes for the whole call.
    let rc = unsafe {
        libc::lsetxattr(
            path.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The names in the directory `dir`, without `.` and `..`.
pub(crate) fn read_dir_names(dir: BorrowedFd<'_>) -> io::Result<Vec<OsString>> {
    // A fresh descriptor, so that reading does not share an offset with `dir`.
    let fd = openat(
        dir.as_fd(),
        c".",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    let raw = fd.into_raw_fd();
    // SAFETY: `raw` is an open directory descriptor we own; on success the
    // returned stream owns it.
    let stream = unsafe { libc::fdopendir(raw) };
    if stream.is_null() {
        let err = io::Error::last_os_error();
        // SAFETY: fdopendir failed, so `raw` is still ours to close.
        unsafe { libc::close(raw) };
        return Err(err);
    }
    let mut names = Vec::new();
    let result = loop {
        // readdir reports errors only through errno: clear it first.
        nix::errno::Errno::clear();
        // SAFETY: `stream` is a live directory stream from fdopendir.
        let ent = unsafe { libc::readdir(stream) };
        if ent.is_null() {
            let err = io::Error::last_os_error();
            break match err.raw_os_error() {
                Some(0) | None => Ok(()),
                Some(_) => Err(err),
            };
        }
        // SAFETY: readdir returned a non-null pointer to a valid dirent,
        // live until the next readdir on `stream`.
        let d_name = unsafe { &(*ent).d_name };
        // SAFETY: `d_name` is a NUL-terminated string within the dirent.
        let name = unsafe { CStr::from_ptr(d_name.as_ptr()) }.to_bytes();
        if name != b"." && name != b".." {
            names.push(OsString::from_vec(name.to_vec()));
        }
    };
    // SAFETY: `stream` is live and closed exactly once, here.
    unsafe { libc::closedir(stream) };
    result.map(|()| names)
}

/// `name` as an `OsStr` for nix path arguments.
pub(crate) fn os(name: &[u8]) -> &std::ffi::OsStr {
    std::ffi::OsStr::from_bytes(name)
}
