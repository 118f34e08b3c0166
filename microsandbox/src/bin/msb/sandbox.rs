//! `msb run`, `create`, `stop`, `exec`, `ls`/`ps`, `inspect`, `rm`.

use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Args as ClapArgs, ValueEnum};
use microsandbox::{Isolation, MicrosandboxError, Result, Sandbox, SandboxBuilder, SandboxInfo};

/// Exit codes of `msb run` when the command did not run (as Docker's).
const RUN_FAILED: u8 = 125;
const CANNOT_INVOKE: u8 = 126;
const COMMAND_NOT_FOUND: u8 = 127;

/// Which backend `--isolation` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum IsolationArg {
    /// A libkrun microVM.
    Microvm,
    /// Linux namespaces (weaker; for hosts without usable KVM).
    Namespace,
    /// The best this host can run: a microVM if the KVM probe allows it,
    /// else namespaces (said on stderr).
    Auto,
}

/// Flags shared by `run` and `create`.
#[derive(Debug, ClapArgs)]
pub struct CreateFlags {
    /// The sandbox's name (default: generated).
    #[arg(long)]
    name: Option<String>,
    /// vCPUs (microVM) or CPU bandwidth in CPUs (namespace).
    #[arg(long)]
    cpus: Option<u8>,
    /// Memory in MiB.
    #[arg(long)]
    memory: Option<u32>,
    /// An environment variable, NAME=VALUE (repeatable).
    #[arg(long = "env", short = 'e', value_name = "NAME=VALUE")]
    env: Vec<String>,
    /// The working directory inside.
    #[arg(long, short = 'w')]
    workdir: Option<String>,
    /// Replace a sandbox of the same name (SIGTERM, SIGKILL after 10 s).
    #[arg(long)]
    replace: bool,
    /// Replace, with this grace period in seconds (0: SIGKILL at once).
    #[arg(long, value_name = "SECONDS")]
    replace_with_grace: Option<f64>,
    /// The isolation backend (default: $MSB_ISOLATION, else microvm).
    #[arg(long, value_enum)]
    isolation: Option<IsolationArg>,
}

/// `msb run`.
#[derive(Debug, ClapArgs)]
pub struct RunArgs {
    #[command(flatten)]
    flags: CreateFlags,
    /// Image reference, or a rootfs directory (starting with `/` or `.`).
    image: String,
    /// The command and its arguments (default: `sh`).
    #[arg(last = true)]
    command: Vec<String>,
}

/// `msb create`.
#[derive(Debug, ClapArgs)]
pub struct CreateArgs {
    #[command(flatten)]
    flags: CreateFlags,
    /// Image reference, or a rootfs directory.
    image: String,
}

/// `msb stop`.
#[derive(Debug, ClapArgs)]
pub struct StopArgs {
    /// The sandbox.
    name: String,
    /// Kill at once instead of a graceful stop.
    #[arg(long, short = 'f')]
    force: bool,
}

/// `msb exec`.
#[derive(Debug, ClapArgs)]
pub struct ExecArgs {
    /// The sandbox.
    name: String,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

/// `msb ls` / `msb ps`.
#[derive(Debug, ClapArgs)]
pub struct LsArgs {
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
    /// Names only.
    #[arg(long, short = 'q')]
    quiet: bool,
}

/// Output formats of listings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Aligned columns.
    Table,
    /// A JSON array.
    Json,
}

/// `msb inspect` and `msb rm`.
#[derive(Debug, ClapArgs)]
pub struct NameArgs {
    /// The sandbox.
    name: String,
    /// `rm`: stop it first if it runs.
    #[arg(long, short = 'f')]
    force: bool,
}

impl CreateFlags {
    fn builder(
        &self,
        image: &str,
        default_name: impl FnOnce() -> String,
    ) -> Result<SandboxBuilder> {
        let name = self.name.clone().unwrap_or_else(default_name);
        let mut b = Sandbox::builder(name).image(image);
        if let Some(cpus) = self.cpus {
            b = b.cpus(cpus);
        }
        if let Some(memory) = self.memory {
            b = b.memory(memory);
        }
        for pair in &self.env {
            let (k, v) = pair.split_once('=').unwrap_or((pair.as_str(), ""));
            b = b.env(k, v);
        }
        if let Some(dir) = &self.workdir {
            b = b.workdir(dir);
        }
        if let Some(secs) = self.replace_with_grace {
            b = b.replace_with_grace(Duration::from_secs_f64(secs.max(0.0)));
        } else if self.replace {
            b = b.replace();
        }
        match self.isolation {
            Some(IsolationArg::Microvm) => b = b.isolation(Isolation::Microvm),
            Some(IsolationArg::Namespace) => b = b.isolation(Isolation::Namespace),
            Some(IsolationArg::Auto) => {
                let verdict = microsandbox::host::probe().verdict;
                if verdict.can_run_microvm() {
                    eprintln!("msb: isolation: microvm");
                    b = b.isolation(Isolation::Microvm);
                } else {
                    eprintln!("msb: isolation: namespace (no microVM here: {verdict})");
                    b = b.isolation(Isolation::Namespace);
                }
            }
            None => {}
        }
        Ok(b)
    }
}

fn generated_name(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{prefix}-{}-{nanos:08x}", std::process::id())
}

/// `msb run`: an ephemeral sandbox; the command's exit code becomes ours.
pub async fn run(args: &RunArgs) -> std::result::Result<ExitCode, MicrosandboxError> {
    let builder = args.flags.builder(&args.image, || generated_name("run"))?;
    let sb = builder.create().await?;
    let (cmd, rest) = match args.command.split_first() {
        Some((cmd, rest)) => (cmd.clone(), rest.to_vec()),
        None => ("sh".to_owned(), Vec::new()),
    };
    let result = sb.exec(&cmd, rest).await;
    let _ = sb.stop_and_wait().await;
    let _ = sb.remove_self();
    match result {
        Ok(out) => {
            use std::io::Write;
            let _ = std::io::stdout().write_all(&out.stdout);
            let _ = std::io::stderr().write_all(&out.stderr);
            let code = match out.status {
                microsandbox::ExitStatus::Code(c) => u8::try_from(c & 0xff).unwrap_or(1),
                microsandbox::ExitStatus::Signal { signal, .. } => {
                    u8::try_from(128 + (signal & 0x7f)).unwrap_or(1)
                }
            };
            Ok(ExitCode::from(code))
        }
        Err(e @ MicrosandboxError::ExecFailed { kind, .. }) => {
            eprintln!("msb: {e}");
            Ok(ExitCode::from(
                if kind == microsandbox::sandbox::ExecErrorKind::NotFound {
                    COMMAND_NOT_FOUND
                } else {
                    CANNOT_INVOKE
                },
            ))
        }
        Err(e) => Err(e),
    }
}

/// Exit code for a `run` that failed before its command ran.
pub fn run_failed() -> ExitCode {
    ExitCode::from(RUN_FAILED)
}

/// `msb create`: a detached sandbox; prints its name.
pub async fn create(args: &CreateArgs) -> Result<()> {
    let sb = args
        .flags
        .builder(&args.image, || generated_name("sandbox"))?
        .create_detached()
        .await?;
    println!("{}", sb.name());
    Ok(())
}

/// `msb stop`.
pub async fn stop(args: &StopArgs) -> Result<()> {
    let sb = Sandbox::get(&args.name)?;
    let status = if args.force {
        sb.kill().await?
    } else {
        sb.stop_and_wait().await?
    };
    eprintln!("msb: {} {}", args.name, status_word(status));
    Ok(())
}

/// `msb exec`: runs the command, prints its output, returns its exit code.
pub async fn exec(args: &ExecArgs) -> Result<ExitCode> {
    let sb = Sandbox::get(&args.name)?;
    let (cmd, rest) = args.command.split_first().expect("clap requires a command");
    let out = sb.exec(cmd, rest.to_vec()).await?;
    use std::io::Write;
    let _ = std::io::stdout().write_all(&out.stdout);
    let _ = std::io::stderr().write_all(&out.stderr);
    Ok(ExitCode::from(
        out.code()
            .map_or(1, |c| u8::try_from(c & 0xff).unwrap_or(1)),
    ))
}

fn status_word(status: microsandbox::SandboxStatus) -> &'static str {
    match status {
        microsandbox::SandboxStatus::Creating => "creating",
        microsandbox::SandboxStatus::Running => "running",
        microsandbox::SandboxStatus::Stopped => "stopped",
        microsandbox::SandboxStatus::Crashed => "crashed",
        _ => "unknown",
    }
}

fn to_json(info: &SandboxInfo) -> serde_json::Value {
    let millis = |t: SystemTime| {
        t.duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    };
    serde_json::json!({
        "name": info.name,
        "status": status_word(info.status),
        "isolation": info.isolation.to_string(),
        "image": info.image,
        "pid": info.pid,
        "created_at_ms": millis(info.created_at),
        "updated_at_ms": millis(info.updated_at),
    })
}

/// `msb ls` / `msb ps`.
pub fn ls(args: &LsArgs) -> Result<()> {
    let list = Sandbox::list()?;
    if args.quiet {
        for info in &list {
            println!("{}", info.name);
        }
        return Ok(());
    }
    match args.format {
        Format::Json => {
            let rows: Vec<_> = list.iter().map(to_json).collect();
            println!("{}", serde_json::Value::Array(rows));
        }
        Format::Table => {
            println!(
                "{:<24} {:<9} {:<10} {:<8} IMAGE",
                "NAME", "STATUS", "ISOLATION", "PID"
            );
            for info in &list {
                println!(
                    "{:<24} {:<9} {:<10} {:<8} {}",
                    info.name,
                    status_word(info.status),
                    info.isolation.to_string(),
                    info.pid
                        .map(|p| p.to_string())
                        .unwrap_or_else(|| "-".into()),
                    info.image
                );
            }
        }
    }
    Ok(())
}

/// `msb inspect`.
pub fn inspect(args: &NameArgs) -> Result<()> {
    let info = Sandbox::get(&args.name)?.info()?;
    println!(
        "{}",
        serde_json::to_string_pretty(&to_json(&info)).expect("json")
    );
    Ok(())
}

/// `msb rm`.
pub async fn rm(args: &NameArgs) -> Result<()> {
    if args.force {
        let sb = Sandbox::get(&args.name)?;
        if sb.status()? == microsandbox::SandboxStatus::Running {
            sb.kill().await?;
        }
    }
    Sandbox::remove(&args.name)
}
