//! `cargo xtask doctor`: set up (unless told not to), then let `msb doctor`
//! report what this host can run. The report itself lives in the product
//! (`msb doctor`, `microsandbox::host::probe`), not here.

use std::path::Path;
use std::process::Command;

use crate::Result;
use crate::cmd;
use crate::layout::Layout;
use crate::setup;

pub fn run(root: &Path, with_setup: bool) -> Result<()> {
    if with_setup {
        setup::run(root)?;
    }
    cmd::run(
        Command::new(cmd::cargo())
            .current_dir(root)
            .env("MSB_LIB_DIR", Layout::new(root).lib_dir())
            .args([
                "run",
                "--quiet",
                "--package",
                "microsandbox",
                "--bin",
                "msb",
                "--",
                "doctor",
            ]),
    )
}
