//! `msb`: the microsandbox command line. It uses only the `microsandbox`
//! crate's public API.

mod doctor;
mod image;

use std::error::Error as _;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use microsandbox::MicrosandboxError;

#[derive(Debug, Parser)]
#[command(
    name = "msb",
    version,
    about = "Hardware-isolated sandboxes from OCI images"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Tell whether this host can run microVMs, and why not.
    Doctor(doctor::Args),
    /// Pull an image into the local store, with progress per layer.
    Pull(image::PullArgs),
    /// Manage images in the local store.
    #[command(subcommand)]
    Image(image::ImageCommand),
}

/// Exit codes scripts can rely on.
mod exit {
    /// A usage error is clap's 2; these follow it.
    pub const FAILED: u8 = 1;
    pub const NOT_FOUND: u8 = 3;
    pub const INVALID: u8 = 4;
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match &cli.command {
        Command::Doctor(args) => return doctor::run(args),
        Command::Pull(args) => runtime().and_then(|rt| rt.block_on(image::pull(args))),
        Command::Image(command) => image::run(command),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => report(&err),
    }
}

fn runtime() -> microsandbox::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|source| MicrosandboxError::Runtime {
            what: "start the async runtime",
            source,
        })
}

/// One line saying what went wrong (with its causes), and an exit code.
fn report(err: &MicrosandboxError) -> ExitCode {
    let mut line = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        source = cause.source();
    }
    eprintln!("msb: {line}");
    let code = match err {
        MicrosandboxError::ImageNotFound { .. } => exit::NOT_FOUND,
        MicrosandboxError::InvalidConfig { .. } => exit::INVALID,
        _ => exit::FAILED,
    };
    ExitCode::from(code)
}
