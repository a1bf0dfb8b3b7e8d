//! `sluice`: the one command-line program (broker, topics, produce, consume, groups, cluster).
//!
//! Exit codes: 0 success, 1 runtime failure, 2 usage error; errors are one line on stderr.
//! This binary is the only place that picks concrete types, reads the environment and parses
//! flags (STYLE §2).

mod broker;
mod cli;
mod config;
mod format;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "sluice", version, about = "Sluice event streaming platform")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once at start-up; the size of the largest variant costs nothing worth boxing for.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
enum Command {
    /// Run a broker.
    Broker(Box<config::BrokerArgs>),
    /// Create, list, describe, delete and configure topics.
    #[command(subcommand)]
    Topic(cli::topic::TopicCommand),
    /// Produce standard input to a topic, one record per line.
    Produce(cli::produce::ProduceArgs),
    /// Print a topic's records to standard output, one per line.
    Consume(cli::consume::ConsumeArgs),
    /// List, describe, reset the offsets of, and delete consumer groups.
    #[command(subcommand)]
    Group(cli::group::GroupCommand),
    /// The controller quorum and the brokers of the cluster.
    #[command(subcommand)]
    Cluster(cli::cluster::ClusterCommand),
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
    // Client commands log only warnings by default: their stderr is for errors.
    init_logging(if matches!(cli.command, Command::Broker(_)) {
        "info"
    } else {
        "warn"
    });
    let result = match cli.command {
        Command::Broker(args) => args.resolve().and_then(broker::run),
        Command::Topic(command) => cli::topic::main(command),
        Command::Produce(args) => cli::produce::main(args),
        Command::Consume(args) => cli::consume::main(args),
        Command::Group(command) => cli::group::main(command),
        Command::Cluster(command) => cli::cluster::main(command),
    };
    if let Err(error) = result {
        eprintln!("error: {}", one_line(&error));
        std::process::exit(1);
    }
}

/// Joins an error chain into one lowercase line: `context: cause: cause`. A cause whose text
/// its parent already includes (errors that print their source) is not repeated.
fn one_line(error: &anyhow::Error) -> String {
    let mut line = String::new();
    let mut previous = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if !previous.is_empty() && previous.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
        previous = text;
    }
    line
}

fn init_logging(default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SLUICE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}
