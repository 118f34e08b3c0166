//! `msb`: the microsandbox command line. It uses only the `microsandbox`
//! crate's public API.

mod doctor;
mod image;
mod sandbox;

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
    /// Run a command in a new sandbox, print its output, stop and remove it; the
    /// command's exit code becomes msb's (125: msb failed, 126: cannot
    /// invoke, 127: not found).
    Run(sandbox::RunArgs),
    /// Create a sandbox that keeps running after msb exits; prints its name.
    Create(sandbox::CreateArgs),
    /// Stop a sandbox (gracefully, or at once with --force).
    Stop(sandbox::StopArgs),
    /// Start a stopped sandbox again (detached), its files as it left them.
    Start(sandbox::StartArgs),
    /// Print a sandbox's console and runtime logs.
    Logs(sandbox::LogsArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Run a command in a running sandbox.
    Exec(sandbox::ExecArgs),
    /// List sandboxes.
    #[command(alias = "ps")]
    Ls(sandbox::LsArgs),
    /// Show one sandbox as JSON.
    Inspect(sandbox::NameArgs),
    /// Remove a stopped sandbox (--force: stop it first).
    Rm(sandbox::NameArgs),
}

/// Exit codes scripts can rely on.
mod exit {
    /// A usage error is clap's 2; these follow it.
    pub const FAILED: u8 = 1;
    pub const NOT_FOUND: u8 = 3;
    pub const INVALID: u8 = 4;
    pub const ALREADY_EXISTS: u8 = 5;
    pub const STILL_RUNNING: u8 = 6;
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match &cli.command {
        Command::Doctor(args) => return doctor::run(args),
        Command::Pull(args) => runtime().and_then(|rt| rt.block_on(image::pull(args))),
        Command::Image(command) => image::run(command),
        Command::Run(args) => {
            return match runtime().and_then(|rt| rt.block_on(sandbox::run(args))) {
                Ok(code) => code,
                Err(err) => {
                    report(&err);
                    sandbox::run_failed()
                }
            };
        }
        Command::Exec(args) => {
            return match runtime().and_then(|rt| rt.block_on(sandbox::exec(args))) {
                Ok(code) => code,
                Err(err) => report(&err),
            };
        }
        Command::Create(args) => runtime().and_then(|rt| rt.block_on(sandbox::create(args))),
        Command::Stop(args) => runtime().and_then(|rt| rt.block_on(sandbox::stop(args))),
        Command::Start(args) => runtime().and_then(|rt| rt.block_on(sandbox::start(args))),
        Command::Logs(args) => runtime().and_then(|rt| rt.block_on(sandbox::logs(args))),
        Command::Ls(args) => sandbox::ls(args),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(*shell, &mut Cli::command(), "msb", &mut std::io::stdout());
            Ok(())
        }
        Command::Inspect(args) => sandbox::inspect(args),
        Command::Rm(args) => runtime().and_then(|rt| rt.block_on(sandbox::rm(args))),
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
    if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        // Bold red "msb:" only on a terminal; pipes and files get plain text.
        eprintln!("\x1b[1;31mmsb:\x1b[0m {line}");
    } else {
        eprintln!("msb: {line}");
    }
    let code = match err {
        MicrosandboxError::ImageNotFound { .. } | MicrosandboxError::SandboxNotFound { .. } => {
            exit::NOT_FOUND
        }
        MicrosandboxError::InvalidConfig { .. } | MicrosandboxError::InvalidIsolation { .. } => {
            exit::INVALID
        }
        MicrosandboxError::SandboxAlreadyExists { .. } => exit::ALREADY_EXISTS,
        MicrosandboxError::SandboxStillRunning { .. } => exit::STILL_RUNNING,
        _ => exit::FAILED,
    };
    ExitCode::from(code)
}
