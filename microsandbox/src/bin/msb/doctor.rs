//! `msb doctor`: the KVM probe and what is installed, for a person or a script.

use std::path::Path;
use std::process::ExitCode;

use microsandbox::host::{self, Access, HostFacts, KvmReport, Node, Verdict, VmCheck};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print the whole report as JSON (the verdict's reason under `verdict`).
    #[arg(long)]
    json: bool,
}

pub fn run(args: &Args) -> ExitCode {
    let report = host::probe();
    if args.json {
        match serde_json::to_string_pretty(&report) {
            Ok(json) => println!("{json}"),
            Err(err) => {
                eprintln!("msb: cannot encode the report: {err}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        print_human(&report);
    }
    // Diagnosis succeeded whatever it found; scripts read the JSON verdict.
    ExitCode::SUCCESS
}

fn print_human(report: &KvmReport) {
    let host = &report.host;
    println!("microsandbox doctor");
    println!("  {:<10} {}", host.path.display(), device_line(host));
    if !host.kvm_modules.is_empty() {
        println!("  {:<10} {}", "modules", host.kvm_modules.join(", "));
    }
    if let Some(cpu) = host.cpu {
        let virt = match (cpu.vmx, cpu.svm) {
            (true, _) => "Intel VT-x (vmx)",
            (_, true) => "AMD-V (svm)",
            _ => "no hardware virtualization flag (vmx/svm)",
        };
        let under = if cpu.hypervisor {
            ", running under a hypervisor"
        } else {
            ""
        };
        println!("  {:<10} {virt}{under}", "cpu");
    }
    println!(
        "  {:<10} {}",
        "libkrun",
        show(report.libraries.libkrun.as_deref())
    );
    println!(
        "  {:<10} {}",
        "libkrunfw",
        show(report.libraries.libkrunfw.as_deref())
    );
    match &report.verdict {
        Verdict::Ready => println!("  {:<10} can run on this host", "microVM"),
        Verdict::Unavailable(reason) => println!("  {:<10} cannot run here: {reason}", "microVM"),
    }
    let source = if report.cached {
        "per-boot cache"
    } else {
        "fresh"
    };
    println!("  {:<10} {:.1?} ({source})", "probe", report.elapsed);
}

fn device_line(host: &HostFacts) -> String {
    let node = match &host.node {
        Node::Missing => return "missing".to_owned(),
        Node::NotACharDevice => return "not a character device".to_owned(),
        Node::CharDevice { mode, uid, gid, .. } => {
            format!("character device, mode {mode:04o}, owner {uid}:{gid}")
        }
    };
    let access = match &host.access {
        Access::NotTried => "not opened (an earlier check decided)".to_owned(),
        Access::Denied { .. } => "permission denied".to_owned(),
        Access::OpenFailed { errno } => {
            format!("open failed: {}", std::io::Error::from_raw_os_error(*errno))
        }
        Access::Opened(facts) => {
            let api = facts
                .api_version
                .map_or_else(|| "no KVM API".to_owned(), |v| format!("KVM API {v}"));
            let vm = match facts.create_vm {
                VmCheck::Created => "VM created".to_owned(),
                VmCheck::NotTried => "VM not tried".to_owned(),
                VmCheck::Failed { errno } => format!(
                    "VM creation failed: {}",
                    std::io::Error::from_raw_os_error(errno)
                ),
            };
            format!("{api}, {vm}")
        }
    };
    format!("{node}; {access}")
}

fn show(path: Option<&Path>) -> String {
    path.map_or_else(|| "not found".to_owned(), |p| p.display().to_string())
}
