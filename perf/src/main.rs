//! `sluice-perf`: throughput and latency harness for Sluice (native QUIC) and any
//! Kafka-protocol broker, and the `reference` measurements every result is judged against.
//!
//! Subcommands: `produce`, `consume` (catch-up), `e2e` (produce and consume together),
//! `reference` (this machine's disk and loopback limits), `compare A.json B.json`, and
//! `log-bench` (the storage engine alone). Module map: [`load`] runs the load and owns the
//! flags, [`workload`] draws records, [`kafka`] and [`native`] are the two targets,
//! [`stats`] measures, [`report`], [`plot`] and [`progress`] present, [`machine`] describes
//! the host, [`stamp`] keeps time.
//!
//! Depends on sluice-engine (runtime, batch format) and sluice-net (client library, QUIC
//! endpoints) only.

mod compare;
mod kafka;
mod load;
mod log_bench;
mod machine;
mod native;
mod plot;
mod progress;
mod reference;
mod report;
mod stamp;
mod stats;
mod workload;

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::load::{LoadArgs, Mode};

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

/// Where a load run writes its results.
#[derive(clap::Args, Debug)]
struct OutputArgs {
    /// Write the JSON report here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write the HDR interval log here [default: the JSON path with .hlog].
    #[arg(long)]
    hdr_log: Option<PathBuf>,
    /// Write the SVG plot here [default: the JSON path with .svg].
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Reference JSON from `sluice-perf reference`: results are stated as ratios to it.
    #[arg(long)]
    reference: Option<PathBuf>,
    /// The broker's data directory, to describe its disk in the report.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Free text stored in the report.
    #[arg(long)]
    label: Option<String>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Produce records (latency: produce acknowledgement).
    Produce {
        #[command(flatten)]
        load: LoadArgs,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Read a topic from its start offsets to the end offsets found at start (catch-up).
    Consume {
        #[command(flatten)]
        load: LoadArgs,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Produce and consume together (latency: consume time minus intended send time).
    E2e {
        #[command(flatten)]
        load: LoadArgs,
        #[command(flatten)]
        output: OutputArgs,
    },
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
    /// Print two JSON results side by side with their ratios.
    Compare {
        /// The baseline.
        a: PathBuf,
        /// The run compared with it.
        b: PathBuf,
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
        /// Measure a log in steady state: 256 MiB segments under 512 MiB of retention.bytes,
        /// first filled with 1 GiB that is not measured, retention applied after every roll, so
        /// the measured appends roll into recycled segment files.
        #[arg(long)]
        steady_state: bool,
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

fn write_json(path: Option<&Path>, text: &str) -> anyhow::Result<()> {
    if let Some(path) = path {
        std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Produce { load, output } => load_run(Mode::Produce, load, output),
        Command::Consume { load, output } => load_run(Mode::Consume, load, output),
        Command::E2e { load, output } => load_run(Mode::E2e, load, output),
        Command::Reference { dir, bytes, json } => {
            let reference = reference::measure(&dir, bytes)?;
            let text = serde_json::to_string_pretty(&reference)?;
            println!("{text}");
            write_json(json.as_deref(), &text)
        }
        Command::Compare { a, b } => {
            print!("{}", compare::run(&a, &b)?);
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
            steady_state,
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
                steady_state,
            })?;
            let text = serde_json::to_string_pretty(&report)?;
            println!("{text}");
            write_json(json.as_deref(), &text)
        }
    }
}

fn load_run(mode: Mode, load: LoadArgs, output: OutputArgs) -> anyhow::Result<()> {
    let reference = match &output.reference {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            Some(
                serde_json::from_str::<serde_json::Value>(&text)
                    .with_context(|| format!("{} is not JSON", path.display()))?,
            )
        }
        None => None,
    };
    let machine = machine::describe(output.data_dir.as_deref());
    let plan = load::Plan::new(mode, load)?;
    let measured = load::run(plan)?;
    let report = report::build(&measured, reference, machine, output.label.clone());
    report::print_summary(&report);
    let beside = |explicit: &Option<PathBuf>, extension: &str| {
        explicit
            .clone()
            .or_else(|| output.json.as_ref().map(|j| j.with_extension(extension)))
    };
    write_json(
        output.json.as_deref(),
        &serde_json::to_string_pretty(&report)?,
    )?;
    if let Some(path) = beside(&output.hdr_log, "hlog") {
        report::write_hdr_log(&measured, &path)?;
    }
    if let Some(path) = beside(&output.plot, "svg") {
        plot::draw(&measured, &report, &path)
            .with_context(|| format!("cannot draw {}", path.display()))?;
    }
    if report.errors > 0 {
        anyhow::bail!("{} records failed to produce", report.errors);
    }
    Ok(())
}
