//! `msb-sandbox DIR`: the sandbox process, one per sandbox.
//!
//! Started by the program that creates a sandbox (through the
//! `microsandbox` library), never by hand: it reads `DIR/config.json`,
//! boots the sandbox and reports on its standard output; see
//! `msb_core::sandbox::process`. Its standard error is the sandbox's
//! runtime log; `MSB_LOG` sets the log filter (default `info`).

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_env("MSB_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let mut args = std::env::args_os().skip(1);
    let (Some(dir), None) = (args.next(), args.next()) else {
        eprintln!("usage: msb-sandbox <sandbox state directory>");
        return ExitCode::from(2);
    };
    let code = msb_core::sandbox::process::main(&PathBuf::from(dir));
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}
