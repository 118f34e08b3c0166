//! `msb doctor`: the KVM probe and what is installed, for a person or a script.

use std::path::Path;
use std::process::ExitCode;

use microsandbox::host::{self, KvmReport, Verdict};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(args: &Args) -> ExitCode {
    let report = host::probe();
    if args.json {
        println!("{}", to_json(&report));
    } else {
        print_human(&report);
    }
    // Diagnosis succeeded whatever it found; scripts read the JSON verdict.
    ExitCode::SUCCESS
}

fn show(path: Option<&Path>) -> String {
    path.map_or_else(|| "not found".to_owned(), |p| p.display().to_string())
}

fn print_human(report: &KvmReport) {
    println!("microsandbox doctor");
    println!(
        "  libkrun     {}",
        show(report.libraries.libkrun.as_deref())
    );
    println!(
        "  libkrunfw   {}",
        show(report.libraries.libkrunfw.as_deref())
    );
    match &report.verdict {
        Verdict::Ready => println!("  microVM     can run on this host"),
        Verdict::Unavailable(reason) => println!("  microVM     cannot run here: {reason}"),
    }
    println!("  probe       {:.1?}", report.elapsed);
}

fn to_json(report: &KvmReport) -> serde_json::Value {
    let reason = match &report.verdict {
        Verdict::Ready => serde_json::Value::Null,
        Verdict::Unavailable(reason) => serde_json::json!({
            "kind": serde_json::to_value(reason).unwrap_or_default(),
            "message": reason.to_string(),
        }),
    };
    serde_json::json!({
        "microvm": report.verdict.can_run_microvm(),
        "reason": reason,
        "libkrun": report.libraries.libkrun,
        "libkrunfw": report.libraries.libkrunfw,
        "probe_ms": report.elapsed.as_secs_f64() * 1e3,
    })
}
