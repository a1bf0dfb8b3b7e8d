//! `sluice`: the one command-line program (broker, topics, produce, consume, groups, cluster).
//!
//! Exit codes: 0 success, 1 runtime failure, 2 usage error; errors are one line on stderr.
//! This binary is the only place that picks concrete types, reads the environment and parses
//! flags (STYLE §2).

mod broker;
mod config;
mod format;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "sluice", version, about = "Sluice event streaming platform")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a broker.
    Broker(config::BrokerArgs),
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
    init_logging();
    let result = match cli.command {
        Command::Broker(args) => args.resolve().and_then(broker::run),
    };
    if let Err(error) = result {
        eprintln!("error: {}", one_line(&error));
        std::process::exit(1);
    }
}

/// Joins an error chain into one lowercase line: `context: cause: cause`.
fn one_line(error: &anyhow::Error) -> String {
    error
        .chain()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(": ")
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SLUICE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}
