//! How a run shows itself on our stderr ([`Style`]).
//!
//! When stderr is a terminal (and `TERM` is not `dumb`), each step is a live
//! line: host, source, type, a spinner and its seconds, then ✓ or ✗; the
//! steps' own output is kept and shown in full under a failed step's line,
//! or as it comes with `--verbose`. Otherwise (a pipe, a file, CI), plain
//! lines: a timestamped line when each step starts and ends, and each
//! step's output as it comes, kept together in plan order ([`Printer`]).
//! `--quiet` shows only what a failure needs: the failed step's output (the
//! error line itself is the tool's).

use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use mktarget::mutex::{self, lock};

use crate::report::{Printer, StepOutcome, StepStatus};

/// How much a run says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verbosity {
    /// Errors only.
    Quiet,
    Normal,
    /// Every command's own output, also on a terminal.
    Verbose,
}

/// How a run shows itself on stderr.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Style {
    /// Live lines on a terminal, instead of plain log lines.
    pub live: bool,
    /// Colours in the live lines.
    pub color: bool,
    pub verbosity: Verbosity,
}

impl Style {
    /// Plain lines, as when stderr is not a terminal.
    pub fn plain(verbosity: Verbosity) -> Style {
        Style {
            live: false,
            color: false,
            verbosity,
        }
    }

    /// Live lines when stderr is a terminal that can show them (`TERM` set
    /// and not `dumb`) and not `--quiet`; colours unless `NO_COLOR` is set
    /// to something (no-color.org).
    pub fn detect(verbosity: Verbosity) -> Style {
        let term = std::env::var("TERM").unwrap_or_default();
        let capable = std::io::stderr().is_terminal() && !term.is_empty() && term != "dumb";
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|value| !value.is_empty());
        let color = capable && !no_color;
        // What indicatif draws goes through console, which decides on its own.
        console::set_colors_enabled_stderr(color);
        Style {
            live: capable && verbosity != Verbosity::Quiet,
            color,
            verbosity,
        }
    }

    pub fn quiet(&self) -> bool {
        self.verbosity == Verbosity::Quiet
    }

    fn paint(&self, style: console::Style, text: &str) -> String {
        style.force_styling(self.color).apply_to(text).to_string()
    }

    /// `✓` in green.
    pub fn check(&self) -> String {
        self.paint(console::Style::new().green().bold(), "✓")
    }

    /// `✗` in red.
    pub fn cross(&self) -> String {
        self.paint(console::Style::new().red().bold(), "✗")
    }

    /// `text` dimmed.
    pub fn dim(&self, text: &str) -> String {
        self.paint(console::Style::new().dim(), text)
    }

    /// A live line's spinner, running.
    pub fn spinner(&self, template: &str) -> ProgressStyle {
        ProgressStyle::with_template(template)
            .expect("the template is valid")
            .with_key(
                "secs",
                |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                    let _ = write!(w, "{}", seconds(state.elapsed()));
                },
            )
            .tick_chars("⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏ ")
    }

    /// A live line that only shows its message.
    pub fn still(&self) -> ProgressStyle {
        ProgressStyle::with_template("{msg}").expect("the template is valid")
    }

    /// A multi-line live display on stderr.
    pub fn multi(&self) -> MultiProgress {
        MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(10))
    }
}

/// `2.1 s`.
pub fn seconds(elapsed: Duration) -> String {
    format!("{:.1} s", elapsed.as_secs_f64())
}

/// A plain line's timestamp: RFC 3339, UTC, whole seconds
/// (`2024-05-01T12:00:03Z`).
pub fn timestamp(at: SystemTime) -> String {
    // humantime panics outside 1970..=9999: a clock set there shows the edge.
    let last = UNIX_EPOCH + Duration::from_secs(253_402_300_799);
    humantime::format_rfc3339_seconds(at.clamp(UNIX_EPOCH, last)).to_string()
}

/// What a plain line says after its timestamp, if it has one.
pub fn strip_timestamp(line: &str) -> Option<&str> {
    let (stamp, rest) = line.split_once(' ')?;
    let shape = "0000-00-00T00:00:00Z";
    let fits = stamp.len() == shape.len()
        && stamp.bytes().zip(shape.bytes()).all(|(b, s)| {
            if s == b'0' {
                b.is_ascii_digit()
            } else {
                b == s
            }
        });
    fits.then_some(rest)
}

/// What a run's plain log line says it does now, for a fleet's live line
/// of that host: a step's timestamped line, or a wait's (`populate:
/// waiting for the lock on …`, which has none), without the timestamp and
/// `populate: `.
pub fn doing_now(line: &str) -> Option<&str> {
    let line = line.trim_end();
    let waiting = || {
        line.strip_prefix("populate: ")
            .filter(|rest| rest.starts_with("waiting for the "))
    };
    let what = strip_timestamp(line).or_else(waiting)?;
    Some(what.strip_prefix("populate: ").unwrap_or(what))
}

/// A step as the display shows it.
#[derive(Clone, Debug)]
pub(crate) struct Row {
    /// The log's name for it: `source nixpkgs (git)`.
    pub label: String,
    /// Where it acts: `[HOST:]PATH`.
    pub place: String,
    /// The live line's columns: host, name (the source's, or what the
    /// step is), type.
    pub host: String,
    pub name: String,
    pub kind: String,
}

/// One plan's display; see the module comment.
pub(crate) struct Progress {
    style: Style,
    rows: Vec<Row>,
    /// Output that goes out in plan order: all of it in plain lines and
    /// with `--verbose`; a failed step's with `--quiet`.
    printer: Printer,
    /// Each step's output not shown as it came.
    kept: Mutex<Vec<Vec<u8>>>,
    live: Option<Live>,
}

struct Live {
    multi: MultiProgress,
    bars: Vec<ProgressBar>,
    /// How the finished steps' lines read, with their output when failed.
    ended: Mutex<Vec<Option<(String, bool)>>>,
}

/// Writes to stderr above a live display.
struct Above(MultiProgress);

impl Write for Above {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.suspend(|| std::io::stderr().write_all(buf))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Progress {
    /// A display of `rows` to our stderr as `style` says.
    pub fn new(style: Style, rows: Vec<Row>) -> Progress {
        if !style.live {
            return Progress::plain(style, rows, Box::new(std::io::stderr()));
        }
        let multi = style.multi();
        let widths = [
            rows.iter()
                .map(|r| r.host.chars().count())
                .max()
                .unwrap_or(0),
            rows.iter()
                .map(|r| r.name.chars().count())
                .max()
                .unwrap_or(0),
            rows.iter()
                .map(|r| r.kind.chars().count())
                .max()
                .unwrap_or(0),
        ];
        let bars = rows
            .iter()
            .map(|row| {
                let bar = multi.add(ProgressBar::new_spinner());
                bar.set_style(style.still());
                bar.set_prefix(columns(row, widths));
                bar.set_message(format!("  {}", style.dim(&columns(row, widths))));
                bar
            })
            .collect();
        let steps = rows.len();
        Progress {
            printer: Printer::new(steps, Box::new(Above(multi.clone()))),
            kept: Mutex::new(vec![Vec::new(); steps]),
            live: Some(Live {
                multi,
                bars,
                ended: Mutex::new(vec![None; steps]),
            }),
            style,
            rows,
        }
    }

    /// Plain lines (or `--quiet`) to `out`.
    pub fn plain(style: Style, rows: Vec<Row>, out: Box<dyn Write + Send>) -> Progress {
        let steps = rows.len();
        Progress {
            style: Style {
                live: false,
                ..style
            },
            printer: Printer::new(steps, out),
            kept: Mutex::new(vec![Vec::new(); steps]),
            live: None,
            rows,
        }
    }

    fn shows_output(&self) -> bool {
        match self.style.verbosity {
            Verbosity::Quiet => false,
            Verbosity::Normal => self.live.is_none(),
            Verbosity::Verbose => true,
        }
    }

    /// Step `i` started: its live line spins.
    pub fn start(&self, i: usize) {
        if let Some(live) = &self.live {
            let bar = &live.bars[i];
            bar.set_style(self.style.spinner("{spinner} {prefix}  {secs}"));
            bar.reset_elapsed();
            bar.enable_steady_tick(Duration::from_millis(100));
        }
    }

    /// Step `i`'s first plain line, stamped with when it started.
    pub fn header(&self, i: usize, at: SystemTime) {
        let shown = match self.style.verbosity {
            Verbosity::Quiet => false,
            Verbosity::Normal => self.live.is_none(),
            // Above the live lines, what the output below it is from.
            Verbosity::Verbose => true,
        };
        if shown {
            let row = &self.rows[i];
            let line = format!(
                "{} populate: {} → {}\n",
                timestamp(at),
                row.label,
                row.place
            );
            self.printer.write(i, line.as_bytes());
        }
    }

    /// Step `i`'s own output.
    pub fn output(&self, i: usize, bytes: &[u8]) {
        if self.shows_output() {
            self.printer.write(i, bytes);
        } else if let Some(kept) = lock(&self.kept).get_mut(i) {
            kept.extend_from_slice(bytes);
        }
    }

    /// A writer for step `i`'s output.
    pub fn step(&self, i: usize) -> StepOutput<'_> {
        StepOutput {
            progress: self,
            step: i,
        }
    }

    /// Step `i` ended (or never ran).
    pub fn end(&self, i: usize, outcome: &StepOutcome) {
        let failed = matches!(outcome.status, StepStatus::Failed(_));
        match &self.live {
            Some(live) => {
                let line = self.line(i, outcome);
                let bar = &live.bars[i];
                bar.disable_steady_tick();
                bar.set_style(self.style.still());
                bar.finish_with_message(line.clone());
                lock(&live.ended)[i] = Some((line, failed));
            }
            None if self.style.quiet() => {
                if failed {
                    let kept = std::mem::take(&mut lock(&self.kept)[i]);
                    self.printer.write(i, &kept);
                }
            }
            None => {
                if !matches!(outcome.status, StepStatus::NotRun) {
                    let line = format!(
                        "{} populate: {}: {}\n",
                        timestamp(SystemTime::now()),
                        outcome.label,
                        ending(outcome)
                    );
                    self.printer.write(i, line.as_bytes());
                }
            }
        }
        self.printer.finish(i);
    }

    /// A live line's last state: `✓ host  name  type  2.1 s  3 files changed, …`.
    fn line(&self, i: usize, outcome: &StepOutcome) -> String {
        let Some(live) = &self.live else {
            return String::new();
        };
        let columns = live.bars[i].prefix();
        let secs = seconds(outcome.elapsed);
        match &outcome.status {
            StepStatus::Done => {
                let details = outcome
                    .transfer
                    .as_ref()
                    .map(|t| format!("  {}", self.style.dim(&t.summary())))
                    .unwrap_or_default();
                format!("{} {columns}  {secs}{details}", self.style.check())
            }
            StepStatus::Unchanged => format!(
                "{} {columns}  {secs}  {}",
                self.style.check(),
                self.style.dim("unchanged")
            ),
            StepStatus::Failed(_) => format!("{} {columns}  {secs}  failed", self.style.cross()),
            StepStatus::NotRun => self.style.dim(&format!("- {columns}  not run")),
        }
    }

    /// The plan ended: a live display is replaced by its lines, each failed
    /// step's output under its line (unless `--verbose` showed it).
    pub fn finish(self) {
        let Some(live) = self.live else {
            return;
        };
        let _ = live.multi.clear();
        let ended = mutex::into_inner(live.ended);
        let kept = mutex::into_inner(self.kept);
        let mut text = String::new();
        for (i, ended) in ended.into_iter().enumerate() {
            let Some((line, failed)) = ended else {
                continue;
            };
            text.push_str(&line);
            text.push('\n');
            if failed && self.style.verbosity != Verbosity::Verbose {
                let output = String::from_utf8_lossy(&kept[i]);
                text.push_str(&output);
                if !output.is_empty() && !output.ends_with('\n') {
                    text.push('\n');
                }
            }
        }
        let _ = std::io::stderr().lock().write_all(text.as_bytes());
    }
}

/// How a plain line tells a step's end: `synced in 2.1 s (3 files changed,
/// 1234 bytes sent)`, `unchanged in 0.2 s`, `failed in 0.3 s`.
fn ending(outcome: &StepOutcome) -> String {
    let secs = seconds(outcome.elapsed);
    match &outcome.status {
        StepStatus::Done => match &outcome.transfer {
            Some(transfer) => format!("done in {secs} ({})", transfer.summary()),
            None => format!("done in {secs}"),
        },
        StepStatus::Unchanged => format!("unchanged in {secs}"),
        StepStatus::Failed(_) => format!("failed in {secs}"),
        StepStatus::NotRun => "not run".to_owned(),
    }
}

/// A live line's columns, padded to line up: host, name, type.
fn columns(row: &Row, widths: [usize; 3]) -> String {
    let [host, name, kind] = widths;
    format!("{:host$}  {:name$}  {:kind$}", row.host, row.name, row.kind)
}

/// One step's output stream; see [`Progress::output`].
pub(crate) struct StepOutput<'a> {
    progress: &'a Progress,
    step: usize,
}

impl Write for StepOutput<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.progress.output(self.step, buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A driver's final command starting: a plain timestamped line, or on a
/// terminal a line naming it above its own output.
pub fn final_started(style: Style, tool: &str, what: &str) {
    if style.quiet() {
        return;
    }
    if style.live {
        eprintln!("{} {what}", style.dim("→"));
    } else {
        eprintln!("{} {tool}: {what}", timestamp(SystemTime::now()));
    }
}

/// A driver's final command ended, `failure` saying how when it failed.
pub fn final_ended(style: Style, tool: &str, what: &str, failure: Option<&str>, elapsed: Duration) {
    if style.quiet() {
        return;
    }
    let secs = seconds(elapsed);
    if style.live {
        match failure {
            None => eprintln!("{} {what}  {secs}", style.check()),
            Some(how) => eprintln!("{} {what}  {secs}  failed ({how})", style.cross()),
        }
    } else {
        let result = match failure {
            None => format!("done in {secs}"),
            Some(how) => format!("failed ({how}) in {secs}"),
        };
        eprintln!("{} {tool}: {what}: {result}", timestamp(SystemTime::now()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let at = |secs: u64| timestamp(UNIX_EPOCH + Duration::from_secs(secs));
        assert_eq!(at(0), "1970-01-01T00:00:00Z");
        // `date -u -d @951782400`: a leap day.
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(at(1_714_564_803), "2024-05-01T12:00:03Z");
        assert_eq!(at(4_102_444_799), "2099-12-31T23:59:59Z");
        assert_eq!(timestamp(UNIX_EPOCH - Duration::from_secs(1)), at(0));
        assert_eq!(at(u64::from(u32::MAX) * 100), "9999-12-31T23:59:59Z");
        assert_eq!(
            strip_timestamp("2024-05-01T12:00:03Z populate: source a (file) → /x"),
            Some("populate: source a (file) → /x")
        );
        assert_eq!(strip_timestamp("populate: source a"), None);
        assert_eq!(strip_timestamp("2024-05-01 12:00:03 x"), None);
    }
}
