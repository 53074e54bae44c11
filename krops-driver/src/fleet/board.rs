//! The terminal board of a fleet run: each host's live line, its output
//! prefixed with its name, and how each host's run ended.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::ExitStatus;
use std::time::Instant;

use indicatif::{MultiProgress, ProgressBar};
use mktarget::command::{Out, Stdio};
use mktarget::interrupt;
use mktarget::Cmd;
use populate::{Style, Verbosity};

use super::file::*;

/// Where a host's stdout or stderr goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Sink {
    /// Line by line to ours, each line prefixed with `HOST | `.
    Prefixed,
    /// Kept, to be shown later or not at all.
    Kept,
    /// Kept, each line telling the host's live line what it does now
    /// (a terminal's display); with `--verbose` also prefixed to ours.
    Watched,
}

/// How one host's run ended.
#[derive(Debug)]
pub(crate) struct HostOutcome {
    /// How the run exited, or why it could not run.
    pub(crate) status: std::result::Result<ExitStatus, String>,
    pub(crate) seconds: f64,
    pub(crate) stdout: Vec<u8>,
    pub(crate) stderr: Vec<u8>,
}

impl HostOutcome {
    pub(crate) fn ok(&self) -> bool {
        self.status.as_ref().is_ok_and(ExitStatus::success)
    }

    pub(crate) fn row(&self) -> SummaryRow {
        let result = match &self.status {
            Ok(status) if status.success() => HostResult::Ok,
            Ok(status) => HostResult::Failed(mktarget::command::describe(*status)),
            Err(why) => HostResult::Failed(why.clone()),
        };
        SummaryRow {
            result,
            seconds: self.seconds,
        }
    }
}

/// A fleet's view on our stdout and stderr: plain prefixed lines, or on a
/// terminal a live line per host with what it does now.
pub(crate) struct Board {
    pub(crate) style: Style,
    pub(crate) live: Option<(MultiProgress, Vec<ProgressBar>)>,
}

impl Board {
    pub(crate) fn new(style: Style, hosts: &[Host]) -> Board {
        if !style.live {
            return Board { style, live: None };
        }
        let multi = style.multi();
        let width = hosts.iter().map(|h| h.name.len()).max().unwrap_or(0);
        let bars = hosts
            .iter()
            .map(|host| {
                let bar = multi.add(ProgressBar::new_spinner());
                bar.set_style(style.still());
                bar.set_prefix(format!("{:width$}", host.name));
                bar.set_message(format!("  {}", style.dim(&format!("{:width$}", host.name))));
                bar
            })
            .collect();
        Board {
            style,
            live: Some((multi, bars)),
        }
    }

    /// Writes to our stdout or stderr (above the live lines).
    pub(crate) fn write(&self, stream: Stream, bytes: &[u8]) {
        let write = || {
            // One write per line, so hosts' lines never mix; a closed
            // stream of ours must not stop the host halfway.
            let _ = match stream {
                Stream::Stdout => std::io::stdout().lock().write_all(bytes),
                Stream::Stderr => std::io::stderr().lock().write_all(bytes),
            };
        };
        match &self.live {
            Some((multi, _)) => multi.suspend(write),
            None => write(),
        }
    }

    /// Host `i` waits for its turn, in batch `batch`.
    pub(crate) fn waiting(&self, i: usize, batch: usize) {
        if let Some((_, bars)) = &self.live {
            bars[i].set_message(format!(
                "  {}  {}",
                self.style.dim(&bars[i].prefix()),
                self.style.dim(&format!("waiting to start (batch {batch})"))
            ));
        }
    }

    /// Host `i` was never started, for this reason.
    pub(crate) fn not_started(&self, i: usize, why: &str) {
        if let Some((_, bars)) = &self.live {
            bars[i].finish_with_message(format!("- {}  not started ({why})", bars[i].prefix()));
        }
    }

    pub(crate) fn started(&self, i: usize) {
        if let Some((_, bars)) = &self.live {
            bars[i].set_style(self.style.spinner("{spinner} {prefix}  {secs}  {msg}"));
            bars[i].set_message("");
            bars[i].reset_elapsed();
            bars[i].enable_steady_tick(std::time::Duration::from_millis(100));
        }
    }

    /// A line host `i` printed: a step's plain line tells what it does now.
    pub(crate) fn saw(&self, i: usize, line: &[u8]) {
        if let Some((_, bars)) = &self.live {
            let line = String::from_utf8_lossy(line);
            if let Some(what) = populate::doing_now(&line) {
                bars[i].set_message(what.to_owned());
            }
        }
    }

    pub(crate) fn ended(&self, i: usize, outcome: &HostOutcome) {
        if let Some((_, bars)) = &self.live {
            let mark = if outcome.ok() {
                self.style.check()
            } else {
                self.style.cross()
            };
            bars[i].disable_steady_tick();
            bars[i].set_style(self.style.still());
            bars[i].finish_with_message(format!(
                "{mark} {}  {:.1} s  {}",
                bars[i].prefix(),
                outcome.seconds,
                outcome.row().result.text()
            ));
        }
    }

    /// Replaces the live lines with each failed host's line and output
    /// (unless `--verbose` showed it as it came).
    pub(crate) fn finish(self, hosts: &[Host], outcomes: &[Option<HostOutcome>]) {
        let Some((multi, bars)) = self.live else {
            return;
        };
        let _ = multi.clear();
        let mut stderr = std::io::stderr().lock();
        for ((host, outcome), bar) in hosts.iter().zip(outcomes).zip(&bars) {
            let Some(outcome) = outcome else {
                let _ = writeln!(stderr, "{}", bar.message());
                continue;
            };
            if outcome.ok() {
                continue;
            }
            let _ = writeln!(stderr, "{}", bar.message());
            if self.style.verbosity != Verbosity::Verbose {
                for line in String::from_utf8_lossy(&outcome.stderr).lines() {
                    let _ = writeln!(stderr, "{} | {line}", host.name);
                }
            }
        }
    }
}

/// One host's line of the summary.
#[derive(Clone, Debug)]
pub(crate) struct SummaryRow {
    pub(crate) result: HostResult,
    pub(crate) seconds: f64,
}

/// How a host's run ended, as the summary says it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum HostResult {
    Ok,
    /// With how (`exit status 1`).
    Failed(String),
    /// Stopped by a signal to the fleet.
    Interrupted,
    /// A signal came before it started.
    NotStarted,
    /// `--max-failures` kept it from starting, as this says.
    Held(String),
}

impl HostResult {
    pub(crate) fn text(&self) -> String {
        match self {
            HostResult::Ok => "ok".to_owned(),
            HostResult::Failed(how) => format!("failed ({how})"),
            HostResult::Interrupted => "interrupted".to_owned(),
            HostResult::NotStarted => "not started".to_owned(),
            HostResult::Held(why) => format!("not started ({why})"),
        }
    }
}

/// Where each host's run is, for the summary a signal prints.
#[derive(Clone, Debug)]
pub(crate) enum HostState {
    Waiting,
    Running(Instant),
    Done(SummaryRow),
}

/// Copies `from` to our stdout or stderr line by line with `prefix`, or
/// keeps it (see [`Sink`]); host `i`'s.
pub(crate) fn pump(
    from: impl Read,
    board: &Board,
    i: usize,
    prefix: &str,
    stream: Stream,
    sink: Sink,
) -> Vec<u8> {
    let mut reader = BufReader::new(from);
    let mut kept = Vec::new();
    let mut line = Vec::new();
    let verbose = board.style.verbosity == Verbosity::Verbose;
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        if sink != Sink::Prefixed {
            kept.extend_from_slice(&line);
        }
        if sink == Sink::Watched {
            board.saw(i, &line);
        }
        if sink == Sink::Kept || (sink == Sink::Watched && !verbose) {
            continue;
        }
        let mut out = Vec::with_capacity(prefix.len() + line.len() + 1);
        out.extend_from_slice(prefix.as_bytes());
        out.extend_from_slice(&line);
        if !out.ends_with(b"\n") {
            out.push(b'\n');
        }
        board.write(stream, &out);
    }
    kept
}

#[derive(Clone, Copy, Debug)]
pub(crate) enum Stream {
    Stdout,
    Stderr,
}

/// Runs `command` for host `i`, its output going as the sinks say (its
/// stdout to our stderr when `stdout_to` says so: ours carries the results).
pub(crate) fn run_host(
    board: &Board,
    i: usize,
    name: &str,
    command: &Cmd,
    (stdout, stdout_to): (Sink, Stream),
    stderr: Sink,
) -> HostOutcome {
    let started = Instant::now();
    let prefix = format!("{name} | ");
    let pipes = os_pipe::pipe().and_then(|out| Ok((out, os_pipe::pipe()?)));
    let ((out_reader, out_writer), (err_reader, err_writer)) = match pipes {
        Ok(pipes) => pipes,
        Err(err) => {
            return HostOutcome {
                status: Err(format!("cannot make a pipe: {err}")),
                seconds: 0.0,
                stdout: Vec::new(),
                stderr: Vec::new(),
            }
        }
    };
    std::thread::scope(|scope| {
        let out = scope.spawn(|| pump(out_reader, board, i, &prefix, stdout_to, stdout));
        let err = scope.spawn(|| pump(err_reader, board, i, &prefix, Stream::Stderr, stderr));
        let stdio = Stdio::new(Out::file(out_writer), Out::file(err_writer));
        let status = command
            .run(stdio)
            .map(|ran| ran.status)
            .map_err(|err| format!("{err:#}"));
        HostOutcome {
            status,
            stdout: out.join().unwrap_or_default(),
            stderr: err.join().unwrap_or_default(),
            seconds: started.elapsed().as_secs_f64(),
        }
    })
}

/// Runs `each` for every host, at most `jobs` at once; the results in the
/// hosts' order. After a signal no new host starts (the handler ends us).
pub(crate) fn in_parallel<T: Send>(
    count: usize,
    jobs: usize,
    each: impl Fn(usize) -> T + Sync,
) -> Vec<T> {
    let results = populate::parallel_each(count, jobs, interrupt::interrupted, each);
    interrupt::wait_if_interrupted();
    results
        .into_iter()
        .map(|result| result.expect("every host ran"))
        .collect()
}
