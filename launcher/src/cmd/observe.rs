//! Seeing a computation from `run` and `submit`: the progress bar (or, off a
//! terminal, a progress line on the log every 10 s), and the performance
//! report and trace written when it ends.

use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle, TermLike};
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use taskfarm::protocol::PrefixProgress;
use taskfarm::report::Recording;
use taskfarm::telemetry::progress_since;
use taskfarm::{util, Client, ClientError};
use crate::*;

#[derive(Args)]
pub(crate) struct ObserveArgs {
    /// Show the progress bar even when standard error is not a terminal [default: a bar on a terminal; otherwise a
    /// progress line on the log every 10 s].
    #[arg(long, conflicts_with = "quiet")]
    pub(crate) progress: bool,
    /// No progress bar and no progress lines.
    #[arg(long)]
    pub(crate) quiet: bool,
    /// When the computation ends, write a self-contained HTML report to FILE: task stream, per-prefix durations,
    /// transfers, spills, workers (everything the cluster ran meanwhile, as Dask's performance_report).
    #[arg(long, value_name = "FILE")]
    pub(crate) performance_report: Option<PathBuf>,
    /// When the computation ends, write its task runs to FILE in Chrome's trace-event format (open it in
    /// https://ui.perfetto.dev or chrome://tracing): one complete event per task run.
    #[arg(long, value_name = "FILE")]
    pub(crate) trace: Option<PathBuf>,
}

/// Off a terminal, how often a progress line goes to the log.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// A terminal on standard error for a forced bar (`--progress` when stderr
/// is a file or a pipe): indicatif draws nothing on a non-terminal itself.
#[derive(Debug)]
struct Stderr;

impl TermLike for Stderr {
    fn width(&self) -> u16 {
        100
    }
    fn move_cursor_up(&self, n: usize) -> std::io::Result<()> {
        if n > 0 { self.write_str(&format!("\x1b[{n}A")) } else { Ok(()) }
    }
    fn move_cursor_down(&self, n: usize) -> std::io::Result<()> {
        if n > 0 { self.write_str(&format!("\x1b[{n}B")) } else { Ok(()) }
    }
    fn move_cursor_right(&self, n: usize) -> std::io::Result<()> {
        if n > 0 { self.write_str(&format!("\x1b[{n}C")) } else { Ok(()) }
    }
    fn move_cursor_left(&self, n: usize) -> std::io::Result<()> {
        if n > 0 { self.write_str(&format!("\x1b[{n}D")) } else { Ok(()) }
    }
    fn write_line(&self, s: &str) -> std::io::Result<()> {
        self.write_str(&format!("{s}\n"))
    }
    fn write_str(&self, s: &str) -> std::io::Result<()> {
        std::io::stderr().write_all(s.as_bytes())
    }
    fn clear_line(&self) -> std::io::Result<()> {
        self.write_str("\r\x1b[2K")
    }
    fn flush(&self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// Totals over the prefixes: (total, done, failed).
fn sums(p: &[PrefixProgress]) -> (u64, u64, u64) {
    p.iter().fold((0, 0, 0), |a, x| (a.0 + x.total, a.1 + x.done, a.2 + x.erred))
}

/// "inc 500/1000, sum 0/1 (+3 more prefixes), 2 failed": the biggest
/// prefixes first.
pub(crate) fn describe(p: &[PrefixProgress]) -> String {
    let mut v: Vec<&PrefixProgress> = p.iter().filter(|x| x.total > 0 || x.done > 0).collect();
    v.sort_by(|a, b| b.total.cmp(&a.total).then(a.prefix.cmp(&b.prefix)));
    let mut parts: Vec<String> = v.iter().take(4).map(|x| format!("{} {}/{}", x.prefix, x.done.min(x.total.max(x.done)), x.total)).collect();
    if v.len() > 4 {
        parts.push(format!("+{} more prefixes", v.len() - 4));
    }
    let failed = sums(p).2;
    let mut s = parts.join(", ");
    if failed > 0 {
        s.push_str(&format!(" · {failed} failed"));
    }
    s
}

/// Install the progress display on `client` as the flags and standard
/// error ask.
pub(crate) fn install_progress(client: &mut Client, a: &ObserveArgs) {
    if a.quiet {
        return;
    }
    let started = Instant::now();
    if a.progress || std::io::stderr().is_terminal() {
        let target = if std::io::stderr().is_terminal() { ProgressDrawTarget::stderr_with_hz(10) } else { ProgressDrawTarget::term_like_with_hz(Box::new(Stderr), 10) };
        // The bar shows what is left: the "still waiting for ..." notes
        // (lines that break the bar) come every minute, not every 10 s.
        client.note_every = client.note_every.max(Duration::from_secs(60));
        let bar = ProgressBar::with_draw_target(Some(0), target);
        bar.set_style(
            ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} tasks ({eta} left) {msg}").expect("the template parses").progress_chars("=> "),
        );
        client.progress = Some(Box::new(move |p: &[PrefixProgress], last: bool| {
            let (total, done, _) = sums(p);
            bar.set_message(describe(p));
            bar.set_length(total.max(done));
            bar.set_position(done);
            if last {
                // Leaves the bar as it is (finish() would show it full).
                bar.abandon();
            }
        }));
    } else {
        let mut next = started + LOG_EVERY;
        client.progress = Some(Box::new(move |p: &[PrefixProgress], last: bool| {
            let now = Instant::now();
            // Short computations say nothing; long ones say where they are
            // every 10 s, and their end.
            if now >= next || (last && now >= started + LOG_EVERY) {
                next = now + LOG_EVERY;
                let (total, done, _) = sums(p);
                tracing::info!(target: "taskfarm::progress", "{done}/{total} tasks done after {:.0} s: {}", started.elapsed().as_secs_f64(), describe(p));
            }
        }));
    }
}

/// What [`finish_recording`] needs from before the computation; `None`
/// when no report or trace was asked for.
pub(crate) struct Baseline {
    since: u64,
    started_us: u64,
    progress: Vec<PrefixProgress>,
    before: taskfarm::protocol::StatusReport,
}

pub(crate) fn start_recording(client: &mut Client, a: &ObserveArgs) -> Result<Option<Baseline>, Fail> {
    if a.performance_report.is_none() && a.trace.is_none() {
        return Ok(None);
    }
    let since = client.telemetry(u64::MAX)?.next;
    Ok(Some(Baseline { since, started_us: util::unix_micros(), progress: client.progress_now()?, before: client.status()? }))
}

/// Write the report and trace asked for (a failure to write one is an
/// error of the command, after the results are printed).
pub(crate) fn finish_recording(client: &mut Client, a: &ObserveArgs, base: Option<Baseline>, title: &str) -> Result<(), Fail> {
    let Some(base) = base else { return Ok(()) };
    let lost = |e: ClientError| Fail::from(e);
    let telemetry = client.telemetry(base.since).map_err(lost)?;
    let now = client.progress_now().map_err(lost)?;
    let after = client.status().map_err(lost)?;
    let r = Recording { title: title.to_string(), started_us: base.started_us, ended_us: util::unix_micros(), progress: progress_since(&base.progress, &now), telemetry, before: base.before, after };
    if let Some(path) = &a.performance_report {
        std::fs::write(path, taskfarm::report::performance_report_html(&r)).map_err(|e| Fail::env(format!("cannot write the performance report {}: {e}", path.display())))?;
        note!("taskfarm: performance report written to {}", path.display());
    }
    if let Some(path) = &a.trace {
        std::fs::write(path, taskfarm::report::trace_json(&r)).map_err(|e| Fail::env(format!("cannot write the trace {}: {e}", path.display())))?;
        note!("taskfarm: trace written to {} (open it in https://ui.perfetto.dev or chrome://tracing)", path.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describe_names_the_biggest_prefixes_and_failures() {
        let p = |name: &str, total, done, erred| PrefixProgress { prefix: name.into(), total, done, erred, ..Default::default() };
        let v = vec![p("a", 1, 1, 0), p("b", 10, 3, 2), p("c", 5, 0, 0), p("d", 2, 0, 0), p("e", 3, 0, 0)];
        assert_eq!(describe(&v), "b 3/10, c 0/5, e 0/3, d 0/2, +1 more prefixes · 2 failed");
    }
}
