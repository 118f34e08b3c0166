//! Running external programs with errors that name the program and its output.

use std::ffi::OsStr;
use std::process::{Command, Output, Stdio};

use crate::Result;

/// Runs `cmd` with inherited stdio; a non-zero exit is an error naming it.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .map_err(|e| format!("cannot start {}: {e}", describe(cmd)))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{} failed ({status})", describe(cmd)).into())
    }
}

/// Runs `cmd` capturing its output; a non-zero exit is an error carrying stderr.
pub fn output(cmd: &mut Command) -> Result<Output> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot start {}: {e}", describe(cmd)))?;
    if out.status.success() {
        Ok(out)
    } else {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(15).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        Err(format!(
            "{} failed ({}):\n{}",
            describe(cmd),
            out.status,
            tail.join("\n")
        )
        .into())
    }
}

/// Whether an executable named `name` is on `PATH`.
pub fn on_path(name: impl AsRef<OsStr>) -> bool {
    let name = name.as_ref();
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(name).is_file()))
        .unwrap_or(false)
}

fn describe(cmd: &Command) -> String {
    let mut words = vec![cmd.get_program().to_string_lossy().into_owned()];
    words.extend(
        cmd.get_args()
            .take(4)
            .map(|a| a.to_string_lossy().into_owned()),
    );
    format!("`{}`", words.join(" "))
}

/// The cargo that runs us, so nested builds use the same toolchain.
pub fn cargo() -> std::ffi::OsString {
    std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into())
}
