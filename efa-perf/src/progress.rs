//! A one-line progress display for size sweeps, on stderr and only when stderr is a terminal.

use std::io::{IsTerminal, Write};
use std::time::Instant;

/// Progress over a known number of steps.
pub struct Progress {
    enabled: bool,
    total: usize,
    label: String,
    start: Instant,
}

impl Progress {
    /// A display for `total` steps; silent unless stderr is a terminal and there is more than one step.
    pub fn new(label: &str, total: usize) -> Self {
        Self {
            enabled: total > 1 && std::io::stderr().is_terminal(),
            total,
            label: label.into(),
            start: Instant::now(),
        }
    }

    /// Shows that step `index` (from 0) is starting, on a message of `bytes`.
    pub fn step(&self, index: usize, bytes: u64) {
        if self.enabled {
            let mut err = std::io::stderr().lock();
            let _ = write!(
                err,
                "\r\x1b[2K{}: size {} ({}/{}), {:.0} s",
                self.label,
                crate::svg::size_label(bytes as f64),
                index + 1,
                self.total,
                self.start.elapsed().as_secs_f64()
            );
            let _ = err.flush();
        }
    }

    /// Clears the line before other output goes to the terminal.
    pub fn clear(&self) {
        if self.enabled {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K");
            let _ = err.flush();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.clear();
    }
}
