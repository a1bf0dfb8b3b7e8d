//! The live progress line: an indicatif spinner on a terminal, a plain line every few
//! seconds otherwise (so logs of scripted runs still show progress). Rates are computed
//! between updates from the summed live counters.

use std::cell::Cell;
use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};

use crate::load::Mode;
use crate::stats::Totals;

/// Seconds between plain progress lines when stderr is not a terminal.
const PLAIN_LINE_SECONDS: f64 = 5.0;

/// The progress display of one run (lives on the control thread).
pub struct Progress {
    bar: Option<ProgressBar>,
    mode: Mode,
    last: Cell<(f64, Totals)>,
    last_line: Cell<f64>,
}

impl Progress {
    /// A progress display for a `mode` run.
    pub fn new(mode: Mode) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new_spinner();
            bar.set_style(
                ProgressStyle::with_template("{spinner} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar
        });
        Progress {
            bar,
            mode,
            last: Cell::new((0.0, Totals::default())),
            last_line: Cell::new(0.0),
        }
    }

    /// Shows the counters at `seconds` into the run.
    pub fn update(&self, seconds: f64, totals: &Totals) {
        let (then, before) = self.last.get();
        let span = seconds - then;
        if span < 0.2 {
            return;
        }
        self.last.set((seconds, *totals));
        let rate = |now: u64, was: u64| now.saturating_sub(was) as f64 / span;
        let produced = format!(
            "produce {:>9.0} rec/s {:>8.1} MB/s (acked {}, errors {})",
            rate(totals.acked_records, before.acked_records),
            rate(totals.acked_bytes, before.acked_bytes) / 1e6,
            totals.acked_records,
            totals.errors,
        );
        let consumed = format!(
            "consume {:>9.0} rec/s {:>8.1} MB/s (read {})",
            rate(totals.consumed_records, before.consumed_records),
            rate(totals.consumed_bytes, before.consumed_bytes) / 1e6,
            totals.consumed_records,
        );
        let text = match self.mode {
            Mode::Produce => format!("{seconds:>6.1}s {produced}"),
            Mode::Consume => format!("{seconds:>6.1}s {consumed}"),
            Mode::E2e => format!("{seconds:>6.1}s {produced} | {consumed}"),
        };
        match &self.bar {
            Some(bar) => {
                bar.set_message(text);
                bar.tick();
            }
            None => {
                if seconds - self.last_line.get() >= PLAIN_LINE_SECONDS {
                    self.last_line.set(seconds);
                    eprintln!("{text}");
                }
            }
        }
    }

    /// Ends the display.
    pub fn finish(&self, totals: &Totals) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
        eprintln!(
            "done: {} records acknowledged, {} consumed, {} errors",
            totals.acked_records, totals.consumed_records, totals.errors
        );
    }
}
