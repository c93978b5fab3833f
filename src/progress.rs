//! Progress of long runs: an `indicatif` bar when stderr is a terminal,
//! plain periodic log lines when it is not (cron, systemd, a pipe).

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::time::{Duration, Instant};

/// How often a log line is written when stderr is not a terminal.
pub const LOG_EVERY: Duration = Duration::from_secs(10);

/// Progress of one entity's rows.
pub enum Progress {
    Bar(ProgressBar),
    Log {
        label: String,
        total: u64,
        done: u64,
        started: Instant,
        last: Instant,
    },
}

impl Progress {
    /// Starts showing progress of `label` towards an estimated `total`
    /// (0 when the catalog has no estimate).
    pub fn start(label: &str, total: u64) -> Progress {
        if std::io::stderr().is_terminal() {
            let bar = ProgressBar::with_draw_target(
                (total > 0).then_some(total),
                ProgressDrawTarget::stderr(),
            );
            let template = if total > 0 {
                "{prefix} [{bar:30}] {human_pos}/~{human_len} rows, {per_sec}, ETA {eta}"
            } else {
                "{prefix} {spinner} {human_pos} rows, {per_sec}"
            };
            if let Ok(style) = ProgressStyle::with_template(template) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.set_prefix(label.to_string());
            bar.enable_steady_tick(Duration::from_millis(200));
            Progress::Bar(bar)
        } else {
            tracing::info!("{label}: starting, about {total} rows by the catalog's estimate");
            let now = Instant::now();
            Progress::Log {
                label: label.to_string(),
                total,
                done: 0,
                started: now,
                last: now,
            }
        }
    }

    pub fn add(&mut self, rows: u64) {
        match self {
            Progress::Bar(b) => {
                b.inc(rows);
                if b.length().is_some_and(|l| b.position() > l) {
                    b.set_length(b.position());
                }
            }
            Progress::Log { done, last, .. } => {
                *done += rows;
                if last.elapsed() >= LOG_EVERY {
                    *last = Instant::now();
                    self.log_line();
                }
            }
        }
    }

    fn log_line(&self) {
        if let Progress::Log {
            label,
            total,
            done,
            started,
            ..
        } = self
        {
            let secs = started.elapsed().as_secs_f64().max(1e-3);
            let rate = *done as f64 / secs;
            let eta = if *total > *done && rate > 0.0 {
                format!(", ETA {:.0}s", (*total - *done) as f64 / rate)
            } else {
                String::new()
            };
            tracing::info!("{label}: {done}/~{total} rows, {rate:.0} rows/s{eta}");
        }
    }

    pub fn finish(self) {
        match self {
            Progress::Bar(b) => b.finish(),
            log @ Progress::Log { .. } => log.log_line(),
        }
    }
}

/// The peak resident set size of this process (VmHWM), in bytes.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
