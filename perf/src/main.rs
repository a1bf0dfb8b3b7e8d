//! `sluice-perf`: throughput and latency harness for Sluice (native QUIC) and any
//! Kafka-protocol broker, and the `reference` measurements every result is judged against.

mod log_bench;
mod reference;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "sluice-perf",
    version,
    about = "Sluice load and latency harness"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Measure this machine's disk and loopback limits.
    Reference {
        /// Directory on the disk to measure (the broker's data disk).
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// Bytes per bandwidth measurement.
        #[arg(long, default_value_t = 1 << 30)]
        bytes: u64,
        /// Write the results as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Append to and read back one partition log on this disk (no network).
    LogBench {
        /// Directory on the disk to measure.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// Bytes to append.
        #[arg(long, default_value_t = 2 << 30)]
        bytes: u64,
        /// Bytes per batch.
        #[arg(long, default_value_t = 64 << 10)]
        batch_bytes: usize,
        /// Bytes per record value.
        #[arg(long, default_value_t = 1024)]
        record_bytes: usize,
        /// Appends outstanding at once.
        #[arg(long, default_value_t = 64)]
        inflight: usize,
        /// Wait for fdatasync (group commit) on every append.
        #[arg(long)]
        synced: bool,
        /// The log's preallocation step in bytes (default: the engine's).
        #[arg(long)]
        preallocate_bytes: Option<u64>,
        /// Write the results as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
    },
}

fn main() {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            let code = if error.use_stderr() { 2 } else { 0 };
            let _ = error.print();
            std::process::exit(code);
        }
    };
    if let Err(error) = run(cli) {
        let chain: Vec<String> = error.chain().map(ToString::to_string).collect();
        eprintln!("error: {}", chain.join(": "));
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Reference { dir, bytes, json } => {
            let reference = reference::measure(&dir, bytes)?;
            let text = serde_json::to_string_pretty(&reference)?;
            println!("{text}");
            if let Some(path) = json {
                std::fs::write(&path, text)?;
            }
            Ok(())
        }
        Command::LogBench {
            dir,
            bytes,
            batch_bytes,
            record_bytes,
            inflight,
            synced,
            preallocate_bytes,
            json,
        } => {
            let report = log_bench::run(log_bench::LogBenchConfig {
                dir,
                bytes,
                batch_bytes,
                record_bytes,
                inflight,
                synced,
                preallocate_bytes,
            })?;
            let text = serde_json::to_string_pretty(&report)?;
            println!("{text}");
            if let Some(path) = json {
                std::fs::write(&path, text)?;
            }
            Ok(())
        }
    }
}
