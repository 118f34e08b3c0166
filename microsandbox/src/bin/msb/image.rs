//! `msb pull` and `msb image ls|inspect|rm|gc`.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use microsandbox::Result;
use microsandbox::image::{self, Images, Progress, ProgressSink, PullOptions};

/// Arguments of `msb pull`.
#[derive(Debug, clap::Args)]
pub struct PullArgs {
    /// The image, e.g. `alpine`, `docker.io/library/debian:bookworm`.
    image: String,
    /// Platform to select from a multi-platform image.
    #[arg(long, default_value = "linux/amd64")]
    platform: String,
    /// When to contact the registry: always, if-missing, never.
    #[arg(long, default_value = "always")]
    pull: String,
}

/// `msb image ...`.
#[derive(Debug, clap::Subcommand)]
pub enum ImageCommand {
    /// List images in the local store.
    Ls {
        /// Output format: table or json.
        #[arg(long, default_value = "table")]
        format: String,
        /// Print references only.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Show one stored image as JSON.
    Inspect {
        /// The image reference.
        image: String,
    },
    /// Untag an image (its data goes at the next `msb image gc`).
    Rm {
        /// The image reference.
        image: String,
    },
    /// Delete blobs and unpacked trees no image refers to.
    Gc,
}

pub async fn pull(args: &PullArgs) -> Result<()> {
    let images = Images::open_default()?;
    let policy = image::pull_policy(&args.pull)?;
    let platform = image::platform(&args.platform)?;
    let bars = Arc::new(Bars::new());
    let options = PullOptions {
        platform,
        policy,
        progress: Some(bars.clone()),
    };
    let pulled = images.pull(&args.image, &options).await?;
    bars.finish();
    let t = pulled.timings;
    if pulled.fetched {
        eprintln!(
            "pulled {} in {:.2?} (resolve {:.2?}, download {:.2?}, unpack {:.2?})",
            pulled.reference, t.total, t.resolve, t.download, t.unpack
        );
    } else {
        eprintln!("{} is up to date (cached)", pulled.reference);
    }
    println!("{}", pulled.manifest_digest);
    Ok(())
}

pub fn run(command: &ImageCommand) -> Result<()> {
    let images = Images::open_default()?;
    match command {
        ImageCommand::Ls { format, quiet } => {
            let records = images.list()?;
            if *quiet {
                records.iter().for_each(|r| println!("{}", r.reference));
            } else if format == "json" {
                let rows: Vec<_> = records.iter().map(record_json).collect();
                println!("{}", serde_json::Value::Array(rows));
            } else {
                println!("{:<50} {:<20} {:>10}", "REFERENCE", "DIGEST", "SIZE");
                for r in &records {
                    let digest = r.manifest_digest.to_string();
                    println!(
                        "{:<50} {:<20} {:>10}",
                        r.reference,
                        &digest[..digest.len().min(19)],
                        human_size(r.size)
                    );
                }
            }
        }
        ImageCommand::Inspect { image } => {
            let record = images.inspect(image)?;
            println!("{:#}", record_json(&record));
        }
        ImageCommand::Rm { image } => {
            let record = images.remove(image)?;
            println!("untagged {}", record.reference);
        }
        ImageCommand::Gc => {
            let stats = images.gc()?;
            println!(
                "removed {} blobs, {} trees, {} temporary entries; freed {}",
                stats.blobs_removed,
                stats.trees_removed,
                stats.tmp_removed,
                human_size(stats.bytes_freed)
            );
        }
    }
    Ok(())
}

fn record_json(r: &microsandbox::image::ImageRecord) -> serde_json::Value {
    serde_json::json!({
        "reference": r.reference.to_string(),
        "manifest_digest": r.manifest_digest.to_string(),
        "platform": r.platform,
        "size": r.size,
        "pulled_at": r.pulled_at.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
    })
}

fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// One progress bar per blob, drawn only on a terminal.
struct Bars {
    multi: MultiProgress,
    bars: Mutex<HashMap<String, ProgressBar>>,
}

impl Bars {
    fn new() -> Self {
        let target = if std::io::stderr().is_terminal() {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        Self {
            multi: MultiProgress::with_draw_target(target),
            bars: Mutex::new(HashMap::new()),
        }
    }

    fn finish(&self) {
        let bars = self.bars.lock().unwrap_or_else(|e| e.into_inner());
        bars.values().for_each(ProgressBar::finish);
    }
}

impl ProgressSink for Bars {
    fn progress(&self, event: Progress) {
        let mut bars = self.bars.lock().unwrap_or_else(|e| e.into_inner());
        let key = event.digest.to_string();
        let bar = bars.entry(key.clone()).or_insert_with(|| {
            let bar = self.multi.add(ProgressBar::new(event.total.unwrap_or(0)));
            let style = ProgressStyle::with_template(
                "{prefix:.bold} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
            bar.set_style(style);
            bar.set_prefix(key[..key.len().min(19)].to_owned());
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        if let Some(total) = event.total {
            bar.set_length(total);
        }
        bar.set_position(event.downloaded);
    }
}
