//! `msb run`, `create`, `stop`, `exec`, `ls`/`ps`, `inspect`, `rm`.

use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use std::os::fd::AsFd;

use clap::{Args as ClapArgs, ValueEnum};
use microsandbox::sandbox::{ExecErrorKind, ExecEvent, ExecOptions, LogOptions, LogSource};
use microsandbox::{
    ExitStatus, Isolation, MicrosandboxError, Result, Sandbox, SandboxBuilder, SandboxInfo, term,
};

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
    #[command(flatten)]
    io: IoFlags,
    /// Image reference, or a rootfs directory (starting with `/` or `.`).
    image: String,
    /// The command and its arguments (default: the image's entrypoint and
    /// command, else `sh`).
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
    /// Seconds to wait after SIGTERM before SIGKILL (default: the
    /// sandbox's stop grace).
    #[arg(long, short = 't', value_name = "SECONDS")]
    timeout: Option<f64>,
}

/// `msb start`.
#[derive(Debug, ClapArgs)]
pub struct StartArgs {
    /// The stopped sandbox.
    name: String,
}

/// `msb logs`.
#[derive(Debug, ClapArgs)]
pub struct LogsArgs {
    /// The sandbox.
    name: String,
    /// Only the last N lines of each log.
    #[arg(long, short = 'n', value_name = "N")]
    tail: Option<usize>,
    /// Keep printing new lines until the sandbox stops.
    #[arg(long, short = 'f')]
    follow: bool,
    /// Which log: console (the guest's output), runtime (the sandbox
    /// process's), first-command, or all.
    #[arg(long, value_enum, default_value_t = LogWhich::All)]
    source: LogWhich,
}

/// `--source` of `msb logs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogWhich {
    /// The guest console.
    Console,
    /// The sandbox process's log.
    Runtime,
    /// The output of the first command run in the sandbox.
    FirstCommand,
    /// All of them.
    All,
}

/// How a command's terminal and stdin are wired.
#[derive(Debug, ClapArgs)]
pub struct IoFlags {
    /// Run on a pseudo-terminal (when msb's own stdin and stdout are one).
    #[arg(long, short = 't')]
    tty: bool,
    /// Forward msb's stdin to the command.
    #[arg(long, short = 'i')]
    interactive: bool,
}

/// `msb exec`.
#[derive(Debug, ClapArgs)]
pub struct ExecArgs {
    /// The sandbox.
    name: String,
    #[command(flatten)]
    io: IoFlags,
    /// An environment variable for the command, NAME=VALUE (repeatable).
    #[arg(long = "env", short = 'e', value_name = "NAME=VALUE")]
    env: Vec<String>,
    /// The command's working directory.
    #[arg(long, short = 'w')]
    workdir: Option<String>,
    /// Run as this user (name, uid, uid:gid).
    #[arg(long, short = 'u')]
    user: Option<String>,
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

/// `msb run`: an ephemeral sandbox; the command's output is streamed and
/// its exit code becomes ours.
pub async fn run(args: &RunArgs) -> std::result::Result<ExitCode, MicrosandboxError> {
    let builder = args.flags.builder(&args.image, || generated_name("run"))?;
    let sb = builder.create().await?;
    // Without a command: the image's entrypoint and command, else `sh`.
    let command = if args.command.is_empty() {
        sb.image_command()
    } else {
        args.command.clone()
    };
    let (cmd, rest) = match command.split_first() {
        Some((cmd, rest)) => (cmd.clone(), rest.to_vec()),
        None => ("sh".to_owned(), Vec::new()),
    };
    let result = stream(&sb, &cmd, ExecOptions::default().args(rest), &args.io).await;
    let _ = sb.stop_and_wait().await;
    let _ = sb.remove_self();
    command_exit(result)
}

/// The exit code for a streamed command's outcome: its own, or 126/127
/// when it could not start.
fn command_exit(result: Result<ExitStatus>) -> std::result::Result<ExitCode, MicrosandboxError> {
    match result {
        Ok(status) => Ok(ExitCode::from(status_code(status))),
        Err(e @ MicrosandboxError::ExecFailed { kind, .. }) => {
            eprintln!("msb: {e}");
            Ok(ExitCode::from(if kind == ExecErrorKind::NotFound {
                COMMAND_NOT_FOUND
            } else {
                CANNOT_INVOKE
            }))
        }
        Err(e) => Err(e),
    }
}

fn status_code(status: ExitStatus) -> u8 {
    match status {
        ExitStatus::Code(c) => u8::try_from(c & 0xff).unwrap_or(1),
        ExitStatus::Signal { signal, .. } => u8::try_from(128 + (signal & 0x7f)).unwrap_or(1),
    }
}

/// Runs a command, streaming its output to ours (and our stdin to it with
/// `-i`; on a pseudo-terminal in raw mode with `-t`).
async fn stream(
    sb: &Sandbox,
    cmd: &str,
    mut options: ExecOptions,
    io: &IoFlags,
) -> Result<ExitStatus> {
    use std::io::{IsTerminal, Write};
    let tty = io.tty && std::io::stdin().is_terminal() && std::io::stdout().is_terminal();
    if tty {
        let (rows, cols) = term::window_size(std::io::stdout().as_fd()).unwrap_or((24, 80));
        options = options.tty(rows, cols);
    }
    if io.interactive || tty {
        options = options.stdin_pipe();
    }
    let mut handle = sb.exec_stream(cmd, |_| options).await?;
    let stdin_fd = std::io::stdin();
    let _raw = if tty {
        term::RawMode::enable(stdin_fd.as_fd())
    } else {
        None
    };
    if io.interactive || tty {
        forward_stdin(handle.stdin());
    }
    let mut stdout = std::io::stdout();
    let mut stderr = std::io::stderr();
    while let Some(event) = handle.next().await {
        match event? {
            ExecEvent::Stdout(bytes) => {
                let _ = stdout.write_all(&bytes).and_then(|()| stdout.flush());
            }
            ExecEvent::Stderr(bytes) => {
                let _ = stderr.write_all(&bytes).and_then(|()| stderr.flush());
            }
            ExecEvent::Exited(status) => return Ok(status),
            ExecEvent::Started { .. } => {}
        }
    }
    Err(MicrosandboxError::SandboxNotFound {
        name: sb.name().to_owned(),
    })
}

/// Copies our stdin into the command's, from a thread (reads block), until
/// EOF; then closes the command's stdin.
fn forward_stdin(sink: microsandbox::sandbox::ExecStdin) {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(8);
    std::thread::spawn(move || {
        use std::io::Read;
        let mut buf = vec![0u8; 64 * 1024];
        let mut stdin = std::io::stdin();
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if tx.blocking_send(buf[..n].to_vec()).is_err() {
                        return;
                    }
                }
            }
        }
    });
    tokio::spawn(async move {
        while let Some(bytes) = rx.recv().await {
            if sink.write_all(&bytes).await.is_err() {
                return;
            }
        }
        sink.close();
    });
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
    let status = match (args.force, args.timeout) {
        (true, _) => sb.kill().await?,
        (false, Some(secs)) => {
            sb.stop_with_timeout(Duration::from_secs_f64(secs.max(0.0)))
                .await?
        }
        (false, None) => sb.stop_and_wait().await?,
    };
    eprintln!("msb: {} {}", args.name, status_word(status));
    Ok(())
}

/// `msb exec`: streams the command's output; returns its exit code.
pub async fn exec(args: &ExecArgs) -> std::result::Result<ExitCode, MicrosandboxError> {
    let sb = Sandbox::get(&args.name)?;
    let (cmd, rest) = args.command.split_first().expect("clap requires a command");
    let mut options = ExecOptions::default().args(rest.iter().cloned());
    for pair in &args.env {
        let (k, v) = pair.split_once('=').unwrap_or((pair.as_str(), ""));
        options = options.env(k, v);
    }
    if let Some(dir) = &args.workdir {
        options = options.cwd(dir);
    }
    if let Some(user) = &args.user {
        options = options.user(user);
    }
    command_exit(stream(&sb, cmd, options, &args.io).await)
}

/// `msb start`: starts a stopped sandbox again (detached).
pub async fn start(args: &StartArgs) -> Result<()> {
    let sb = Sandbox::start(&args.name).await?;
    eprintln!("msb: {} running", sb.name());
    Ok(())
}

/// `msb logs`.
pub async fn logs(args: &LogsArgs) -> Result<()> {
    let sb = Sandbox::get(&args.name)?;
    let sources: Vec<LogSource> = match args.source {
        LogWhich::Console => vec![LogSource::Console],
        LogWhich::Runtime => vec![LogSource::Runtime],
        LogWhich::FirstCommand => vec![LogSource::FirstCommand],
        LogWhich::All => LogSource::ALL.to_vec(),
    };
    let prefix = sources.len() > 1;
    let print = |line: &microsandbox::sandbox::LogLine| {
        if prefix {
            println!("{:<8} {}", line.source.name(), line.text);
        } else {
            println!("{}", line.text);
        }
    };
    // Followers first, so nothing written between the read and the follow
    // is lost.
    let mut followers = if args.follow {
        sb.follow_logs(&sources)?
    } else {
        Vec::new()
    };
    let mut options = LogOptions::default().sources(sources.iter().copied());
    if let Some(tail) = args.tail {
        options = options.tail(tail);
    }
    for line in sb.logs(options)? {
        print(&line);
    }
    if !args.follow {
        return Ok(());
    }
    loop {
        let running = sb.status()? == microsandbox::SandboxStatus::Running;
        for follower in &mut followers {
            for line in follower.poll().map_err(|e| MicrosandboxError::Io {
                op: "follow log",
                path: sb.state_dir(),
                source: std::io::Error::other(e.to_string()),
            })? {
                print(&line);
            }
        }
        if !running {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
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
