//! `cargo xtask`: the project's automation, one small binary.
//!
//! ```text
//! cargo xtask setup            build libkrun, fetch libkrunfw, install both into target/msb/prefix
//! cargo xtask demo [-- CMD]    the main job: boot a sandbox (best isolation here) and run a command
//! cargo xtask doctor           set up, then say whether this host can run microVMs and why not
//! cargo xtask bindgen [--check] regenerate (or verify) krun-sys/src/bindings.rs
//! cargo xtask test             set up, then run the whole test suite (what CI runs)
//! cargo xtask bench images     set up, then benchmark image pulls against skopeo + umoci
//! cargo xtask soak [--sandboxes 50] [--seconds 60]  many sandboxes at once; failures and leaks
//! cargo xtask build-agent      build the static guest agent, print its path
//! ```

mod agent;
mod bench;
mod bindgen;
mod cmd;
mod demo;
mod doctor;
mod layout;
mod setup;
mod test;

use clap::{Parser, Subcommand};

/// Errors in xtask are reported to a person and end the process; a boxed
/// error with a message that says what to do is all they need.
pub type Result<T, E = Box<dyn std::error::Error>> = std::result::Result<T, E>;

#[derive(Debug, Parser)]
#[command(name = "cargo xtask", about = "microsandbox project automation")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Build libkrun and provide libkrunfw in the project prefix (idempotent).
    Setup,
    /// Set up, then boot a sandbox with the best isolation this host allows
    /// and run a command in it (default: a greeting and `ps`).
    Demo {
        /// The command to run instead.
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// Set up, then report whether microVMs can run on this host, and why not.
    Doctor {
        /// Only diagnose: do not build or download anything first.
        #[arg(long)]
        no_setup: bool,
    },
    /// Regenerate krun-sys/src/bindings.rs from krun-sys/include/libkrun.h.
    Bindgen {
        /// Fail if the checked-in bindings differ from freshly generated ones.
        #[arg(long)]
        check: bool,
    },
    /// Set up, then run the whole test suite: formatting, lints, bindings, tests.
    Test {
        /// Extra arguments passed to `cargo test` (e.g. a test name filter).
        #[arg(last = true)]
        cargo_args: Vec<String>,
    },
    /// Set up, then run a benchmark suite (`images`) and print its report.
    Bench {
        /// The suite to run: `images`.
        suite: String,
        /// Arguments for the suite (e.g. `--runs 3`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up, then hold many sandboxes at once, each exec'ing in a loop,
    /// stop and remove them all, and report execs/s, failures and leaks
    /// (the `soak` bench suite; fails on any failure or leak).
    Soak {
        /// Arguments for the suite: `--sandboxes N` (50), `--seconds S` (60).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Build the guest agent as a static binary and print its path.
    BuildAgent,
}

fn main() {
    let cli = Cli::parse();
    let root = layout::workspace_root();
    let outcome = match cli.command {
        Command::Setup => setup::run(&root).map(|prefix| prefix.print_summary()),
        Command::Demo { command } => demo::run(&root, &command),
        Command::Doctor { no_setup } => doctor::run(&root, !no_setup),
        Command::Bindgen { check } => bindgen::run(&root, check).map_err(Into::into),
        Command::Test { cargo_args } => test::run(&root, &cargo_args),
        Command::Bench { suite, args } => bench::run(&root, &suite, &args),
        Command::Soak { args } => bench::run(&root, "soak", &args),
        Command::BuildAgent => agent::run(&root),
    };
    if let Err(err) = outcome {
        eprintln!("error: {err}");
        std::process::exit(1);
    }
}
