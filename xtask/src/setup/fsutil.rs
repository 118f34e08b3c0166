//! Small filesystem helpers: atomic installs and tree copies.

use std::fs;
use std::io;
use std::os::unix::fs::symlink;
use std::path::Path;

/// Copies `src` to `dst` through a temporary name in the same directory and
/// a rename, so `dst` is never seen half-written.
pub fn install_file(src: &Path, dst: &Path) -> io::Result<()> {
    let tmp = dst.with_extension("partial");
    fs::copy(src, &tmp)?;
    fs::rename(&tmp, dst)
}

/// Writes `contents` to `dst` atomically (temporary file + rename).
pub fn write_atomic(dst: &Path, contents: &[u8]) -> io::Result<()> {
    let tmp = dst.with_extension("partial");
    fs::write(&tmp, contents)?;
    fs::rename(&tmp, dst)
}

/// Points the symlink `link` at `target`, replacing whatever `link` was.
pub fn replace_symlink(target: &str, link: &Path) -> io::Result<()> {
    let tmp = link.with_extension("partial-link");
    let _ = fs::remove_file(&tmp);
    symlink(target, &tmp)?;
    fs::rename(&tmp, link)
}

/// Recursively copies the directory `src` to `dst` (files, dirs, symlinks).
pub fn copy_tree(src: &Path, dst: &Path) -> io::Result<()> {
    fs::create_dir_all(dst)?;
    for entry in fs::read_dir(src)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        let to = dst.join(entry.file_name());
        if kind.is_dir() {
            copy_tree(&entry.path(), &to)?;
        } else if kind.is_symlink() {
            symlink(fs::read_link(entry.path())?, &to)?;
        } else {
            fs::copy(entry.path(), &to)?;
        }
    }
    Ok(())
}
