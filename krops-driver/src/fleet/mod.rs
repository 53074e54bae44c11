//! Fleets: one run of a driver for many hosts (`krops-deploy --fleet FILE`,
//! `krops-command --fleet FILE`; see README). FILE maps a host name to what
//! krops's writer for that driver takes (`target`, `source`, …). The whole
//! file is checked first; then every selected host runs as a child process
//! of the same tool in single-host mode, several at once, with each line of
//! its output prefixed with its name, and a summary ends the run.
//!
//! A host's run is the tool's own single-host mode, so a fleet does exactly
//! what running the tool once per host would: the command line's other
//! options reach every host unchanged, whatever options the tool has.

mod board;
mod file;
mod forward;

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, ExitStatus};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use mktarget::interrupt;
use mktarget::mutex::lock;
use mktarget::{Cmd, Origin};
use populate::{PopulateArgs, Results, ResultsTo, SecretDir, Style, Verbosity};

use board::*;
use file::*;
pub use file::{choices, glob_match, parse, select, Host, Setting, SettingKind};
pub use forward::{forwarded, host_args, Forwarded};

/// The fleet's own options; a driver flattens them into its command line
/// beside [`populate::PopulateArgs`]. (`--jobs` and `--on` also conflict with
/// `--target`: clap does not enforce `requires` of an argument that
/// conflicts with one given.)
#[derive(Debug, clap::Args)]
pub struct FleetArgs {
    /// Run on every host of FILE (`-`: stdin), a JSON object of host name → the writer's attributes (target, source, …)
    #[arg(long, value_name = "FILE", allow_hyphen_values = true)]
    pub fleet: Option<PathBuf>,
    /// With --fleet: how many hosts run at once (default: all, at most 8; up to what this machine's open-file limit allows)
    #[arg(long, value_name = "N", requires = "fleet", conflicts_with = "target", value_parser = clap::value_parser!(u16).range(1..))]
    pub jobs: Option<u16>,
    /// With --fleet: once N hosts failed, start no more (the running ones finish; the rest are not started)
    #[arg(long, value_name = "N", requires = "fleet", conflicts_with = "target", value_parser = clap::value_parser!(u16).range(1..))]
    pub max_failures: Option<u16>,
    /// With --fleet: only these hosts, by name or pattern (`*` and `?` match any characters: web*)
    #[arg(
        long,
        value_name = "NAME,…",
        requires = "fleet",
        conflicts_with = "target",
        value_delimiter = ','
    )]
    pub on: Vec<String>,
}

/// The ids of [`FleetArgs`]'s options, and of where the results go (each
/// host's go to a file of the fleet's), which no host's run gets.
pub(crate) const FLEET_OPTIONS: [&str; 8] = [
    "fleet",
    "jobs",
    "max_failures",
    "on",
    "json",
    "json_file",
    // Asked or read once for the whole fleet: see `sudo_password`.
    "ask_sudo_password",
    "sudo_password_file",
];

/// Hosts that run at once unless `--jobs` says otherwise: a stock sshd's
/// `MaxStartups` (10 before it drops new connections) on a bastion all
/// hosts go through, and a build target they share, stay within it.
pub const DEFAULT_JOBS: usize = 8;

/// The open files one running host costs the fleet's process: the pipes of
/// its stdout and stderr, with room to spare.
const FILES_PER_HOST: usize = 8;

/// The files the fleet's process keeps for itself (its own stdio, the
/// terminal, the sources' files).
const FILES_OF_OUR_OWN: usize = 64;

/// How many hosts can run at once on this machine: as many as its soft
/// open-file limit (`ulimit -n`, from `/proc/self/limits`) leaves room for.
pub fn machine_jobs() -> usize {
    jobs_allowed(&std::fs::read_to_string("/proc/self/limits").unwrap_or_default())
}

/// [`machine_jobs`] for the text of `/proc/self/limits`: at least 1; 64
/// when it names no open-file limit.
fn jobs_allowed(limits: &str) -> usize {
    let soft = limits
        .lines()
        .find_map(|line| line.strip_prefix("Max open files"))
        .and_then(|rest| rest.split_whitespace().next());
    match soft.map(|soft| (soft, soft.parse::<usize>())) {
        Some(("unlimited", _)) => usize::from(u16::MAX),
        Some((_, Ok(n))) => (n.saturating_sub(FILES_OF_OUR_OWN) / FILES_PER_HOST).max(1),
        _ => 64,
    }
}

/// A driver's `--fleet` mode: checks the fleet file, runs every selected
/// host as `tool` in single-host mode (first all with `--dry-run`, so that
/// nothing runs anywhere unless every host's input is good), and ends with
/// a summary on stderr; exit status 1 when any host failed.
///
/// `command` is the driver's clap command and `args` our arguments without
/// the program name: they give what every host's run gets.
pub fn run(
    tool: &'static str,
    fleet: &FleetArgs,
    settings: &[Setting],
    command: &clap::Command,
    args: &[String],
    populate: &PopulateArgs,
    results: &mut Results,
) -> Result<ExitCode> {
    results.fleet();
    let dry_run = populate.dry_run;
    let file = fleet.fleet.as_deref().context("--fleet is required")?;
    let origin = Origin::from_env();
    let home = std::env::var("HOME").ok().filter(|home| !home.is_empty());
    if let Some(password) = populate
        .sudo_password_file
        .as_deref()
        .filter(|f| populate::is_stdin(f) && file == Path::new("-"))
    {
        return Err(mktarget::tool::usage(format!(
            "--sudo-password-file {}: stdin carries the fleet here (--fleet -); give the fleet \
             as a file",
            password.display()
        )));
    }
    let hosts = parse(&read(file)?, settings, &origin, home.as_deref())?;
    let hosts = select(hosts, &fleet.on)?;
    let forwarded = forwarded(command, args);
    // Asked once (none for --dry-run); every host's run gets it on its stdin.
    let password = populate.sudo_password()?;
    let program = std::env::current_exe()
        .context("cannot find this tool's own executable to run each host")?
        .display()
        .to_string();
    // Removed at the end and on a signal.
    let dir = SecretDir::holding("krops-fleet.", "the fleet's sources files")?;
    let mut host_args = Vec::new();
    let mut hosts = hosts;
    for host in &mut hosts {
        let name = format!("{}.json", host.name);
        dir.create_file(Path::new(&name))?
            .write_all(&serde_json::to_vec(&host.sources)?)
            .with_context(|| format!("cannot write {name}"))?;
        let file = dir.path().join(name);
        // A setting read from a file (keys) gets one beside the sources.
        for (setting, words) in &mut host.settings {
            if let (SettingKind::JsonFile(_), Some(text)) = (setting.kind, words.first()) {
                let name = format!("settings/{}.{}.json", host.name, setting.key);
                dir.create_file(Path::new(&name))?
                    .write_all(text.as_bytes())
                    .with_context(|| format!("cannot write {name}"))?;
                *words = vec![format!(
                    "{}={}",
                    setting.option,
                    dir.path().join(name).display()
                )];
            }
        }
        host_args.push(self::host_args(host, &file, &forwarded)?);
    }
    // Each host writes its results beside its sources; we gather them.
    let wants_results = populate.output.json || populate.output.json_file.is_some();
    let results_file = |i: usize| dir.path().join(format!("{}.results.json", hosts[i].name));
    let limit = machine_jobs();
    let jobs = match fleet.jobs.map(usize::from) {
        Some(asked) if asked > limit => {
            eprintln!(
                "{tool}: warning: --jobs {asked}: this machine's open-file limit (ulimit -n) \
                 leaves room for {limit} hosts at once; running {limit}"
            );
            limit
        }
        Some(asked) => asked,
        None => hosts.len().min(DEFAULT_JOBS).min(limit),
    };
    // Hosts start in name order, `jobs` at once: the first `jobs` are
    // batch 1, the next batch 2, …
    let batch = |i: usize| i / jobs + 1;
    let count = hosts.len();
    if fleet.jobs.is_none() && count > 1 && jobs >= count {
        for warning in all_at_once(fleet.max_failures, &host_args, count) {
            eprintln!("{tool}: warning: {warning}");
        }
    }
    let style = populate.output.style();

    if !dry_run {
        // Every host checks its whole input the way its run will, running nothing.
        interrupt::doing(format!("checking the fleet's {count} hosts"));
        let quiet = Board::new(Style::plain(Verbosity::Quiet), &[]);
        let checks = in_parallel(count, jobs, |i| {
            let mut check = Cmd::new(&program).arg("--dry-run");
            if password.is_some() {
                check = check.arg("--ask-sudo-password");
            }
            let check = check.args(&host_args[i]);
            let stdout = (Sink::Kept, Stream::Stdout);
            run_host(&quiet, i, &hosts[i].name, &check, stdout, Sink::Kept)
        });
        let refused: Vec<usize> = (0..count).filter(|&i| !checks[i].ok()).collect();
        if !refused.is_empty() {
            for &i in &refused {
                let prefix = format!("{} | ", hosts[i].name);
                let mut stderr = std::io::stderr().lock();
                for line in String::from_utf8_lossy(&checks[i].stderr).lines() {
                    let _ = writeln!(stderr, "{prefix}{line}");
                }
                if let Err(why) = &checks[i].status {
                    let _ = writeln!(stderr, "{prefix}{why}");
                }
            }
            let names: Vec<&str> = refused.iter().map(|&i| hosts[i].name.as_str()).collect();
            bail!(
                "fleet: the input of {} refused (see above); nothing ran on any host",
                names.join(", ")
            );
        }
    }

    interrupt::doing(format!("the fleet's {count} hosts"));
    // On a signal, the handler says which hosts finished, and how.
    let progress = Arc::new(Mutex::new(vec![HostState::Waiting; count]));
    {
        let progress = Arc::clone(&progress);
        let names: Vec<String> = hosts.iter().map(|host| host.name.clone()).collect();
        interrupt::on_signal_report(move || {
            let rows: Vec<SummaryRow> = lock(&progress)
                .iter()
                .map(|progress| match progress {
                    HostState::Waiting => SummaryRow {
                        result: HostResult::NotStarted,
                        seconds: 0.0,
                    },
                    HostState::Running(started) => SummaryRow {
                        result: HostResult::Interrupted,
                        seconds: started.elapsed().as_secs_f64(),
                    },
                    HostState::Done(row) => row.clone(),
                })
                .collect();
            summary(tool, &names, &rows)
        });
    }
    let stdout = if dry_run { Sink::Kept } else { Sink::Prefixed };
    let stdout_to = if populate.output.results_to(None)? == Some(ResultsTo::Stdout) {
        Stream::Stderr
    } else {
        Stream::Stdout
    };
    let stderr = if style.live {
        Sink::Watched
    } else {
        Sink::Prefixed
    };
    let board = Board::new(style, &hosts);
    for i in 0..count {
        board.waiting(i, batch(i));
    }
    // `--max-failures`: once that many hosts failed, no new one starts.
    let failures = AtomicUsize::new(0);
    let max_failures = fleet.max_failures.map(usize::from);
    let held = || max_failures.is_some_and(|most| failures.load(Ordering::SeqCst) >= most);
    let stop = || interrupt::interrupted() || held();
    let outcomes = populate::parallel_each(count, jobs, stop, |i| {
        lock(&progress)[i] = HostState::Running(Instant::now());
        let mut command = Cmd::new(&program);
        if wants_results && !dry_run {
            command = command
                .arg("--json-file")
                .arg(results_file(i).display().to_string());
        }
        let command = match &password {
            Some(_) if dry_run => command.arg("--ask-sudo-password"),
            Some(password) => command
                .args(["--sudo-password-file", "/dev/stdin"])
                .first_line(password.clone()),
            None => command,
        };
        let command = command.args(&host_args[i]);
        board.started(i);
        let outcome = run_host(
            &board,
            i,
            &hosts[i].name,
            &command,
            (stdout, stdout_to),
            stderr,
        );
        board.ended(i, &outcome);
        let mut row = outcome.row();
        // A host the signal stopped is interrupted, not failed. (Asked
        // before taking the lock the handler's report takes.)
        if row.result != HostResult::Ok && interrupt::interrupted() {
            row.result = HostResult::Interrupted;
        }
        if matches!(row.result, HostResult::Failed(_)) {
            failures.fetch_add(1, Ordering::SeqCst);
        }
        lock(&progress)[i] = HostState::Done(row);
        outcome
    });
    interrupt::wait_if_interrupted();
    let not_started = max_failures.map(|most| {
        let failed = failures.load(Ordering::SeqCst);
        let hosts = if failed == 1 { "host" } else { "hosts" };
        format!("--max-failures {most}: {failed} {hosts} failed")
    });
    let rows: Vec<SummaryRow> = outcomes
        .iter()
        .enumerate()
        .map(|(i, outcome)| match outcome {
            Some(outcome) => outcome.row(),
            None => {
                let why = not_started.clone().unwrap_or_default();
                board.not_started(i, &why);
                SummaryRow {
                    result: HostResult::Held(why),
                    seconds: 0.0,
                }
            }
        })
        .collect();
    board.finish(&hosts, &outcomes);
    if dry_run {
        // Each host's plan as it would print it alone, one after another.
        let mut out = std::io::stdout().lock();
        if let Some(most) = max_failures {
            writeln!(
                out,
                "# --max-failures {most}: once {most} of these hosts failed, the hosts after them \
                 do not start"
            )?;
        }
        let batches = count > jobs || max_failures.is_some();
        for (i, (host, outcome)) in hosts.iter().zip(&outcomes).enumerate() {
            writeln!(out, "# ---- fleet host {} ----", host.name)?;
            let mut notes = Vec::new();
            if batches {
                notes.push(format!(
                    "batch {} of {} (hosts start in name order, {jobs} at once)",
                    batch(i),
                    batch(count - 1)
                ));
            }
            if !host.tags.is_empty() {
                notes.push(format!("tags: {}", host.tags.join(", ")));
            }
            if !notes.is_empty() {
                writeln!(out, "# {}", notes.join("; "))?;
            }
            if let Some(outcome) = outcome {
                out.write_all(&outcome.stdout)?;
            }
        }
        out.flush()?;
    }
    for (i, (host, outcome)) in hosts.iter().zip(&outcomes).enumerate() {
        let document: Option<serde_json::Value> = std::fs::read(results_file(i))
            .ok()
            .and_then(|text| serde_json::from_slice(&text).ok());
        let exit_code = outcome
            .as_ref()
            .and_then(|outcome| outcome.status.as_ref().ok().and_then(ExitStatus::code));
        let seconds = outcome.as_ref().map_or(0.0, |outcome| outcome.seconds);
        let elapsed = std::time::Duration::from_secs_f64(seconds);
        let fields = host_fields(
            host,
            outcome.as_ref().map(|_| batch(i)),
            match (outcome, &rows[i].result) {
                (None, HostResult::Held(why)) => Some(why.as_str()),
                _ => None,
            },
            document.as_ref(),
        );
        results.add_host(&host.name, exit_code, elapsed, document);
        results.host_fields(&host.name, fields);
    }
    let failed = rows
        .iter()
        .filter(|row| row.result != HostResult::Ok)
        .count();
    if !style.quiet() || failed > 0 {
        let names: Vec<String> = hosts.iter().map(|host| host.name.clone()).collect();
        eprint!("{}", summary(tool, &names, &rows));
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// What the default `--jobs` (every host at once, up to 8) undoes, said before a
/// run without `--jobs` (README: Many hosts at once): `--max-failures`
/// can hold back no host when all have started, and hosts that reboot
/// (a `--reboot` in their arguments, before a script's `--`) are all down
/// at once.
fn all_at_once(max_failures: Option<u16>, host_args: &[Vec<String>], count: usize) -> Vec<String> {
    let mut warnings = Vec::new();
    if let Some(most) = max_failures {
        warnings.push(format!(
            "--max-failures {most}: all {count} hosts start at once (no --jobs), so no host is \
             held back when one fails; give --jobs N to roll out N hosts at a time"
        ));
    }
    let rebooting = host_args
        .iter()
        .filter(|args| {
            args.iter()
                .take_while(|arg| *arg != "--")
                .any(|arg| arg == "--reboot")
        })
        .count();
    if rebooting > 1 {
        warnings.push(format!(
            "{rebooting} hosts reboot, all at once (no --jobs): give --jobs N to have at most N \
             down at a time"
        ));
    }
    warnings
}

/// What a fleet's document says of a host besides how its run ended: its
/// tags, its batch (`None`: not started), why it was not started, and from
/// its own document whether it rebooted, with the boot ids before and after.
fn host_fields(
    host: &Host,
    batch: Option<usize>,
    not_started: Option<&str>,
    document: Option<&serde_json::Value>,
) -> serde_json::Map<String, serde_json::Value> {
    use serde_json::{json, Value};
    let reboot = document.and_then(|doc| doc.get("reboot"));
    let of_reboot = |key: &str| {
        reboot
            .and_then(|r| r.get(key))
            .cloned()
            .unwrap_or(Value::Null)
    };
    let rebooted = reboot
        .and_then(|r| r.get("rebooted"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let fields = json!({
        "tags": host.tags,
        "batch": batch,
        "notStarted": not_started,
        "rebooted": rebooted,
        "bootIdBefore": of_reboot("bootIdBefore"),
        "bootIdAfter": of_reboot("bootIdAfter"),
    });
    match fields {
        Value::Object(map) => map,
        _ => unreachable!("an object"),
    }
}

/// The table at the end: host, result, seconds, after a line that counts
/// the results.
fn summary(tool: &str, names: &[String], rows: &[SummaryRow]) -> String {
    let count =
        |wanted: fn(&HostResult) -> bool| rows.iter().filter(|row| wanted(&row.result)).count();
    let ok = count(|r| *r == HostResult::Ok);
    let mut text = format!("{tool}: fleet: {ok} of {} hosts ok", names.len());
    for (n, what) in [
        (count(|r| matches!(r, HostResult::Failed(_))), "failed"),
        (count(|r| *r == HostResult::Interrupted), "interrupted"),
        (
            count(|r| matches!(r, HostResult::NotStarted | HostResult::Held(_))),
            "not started",
        ),
    ] {
        if n > 0 {
            text.push_str(&format!(", {n} {what}"));
        }
    }
    text.push('\n');
    let name_width = names.iter().map(String::len).max().unwrap_or(0);
    let results: Vec<String> = rows.iter().map(|row| row.result.text()).collect();
    let result_width = results.iter().map(String::len).max().unwrap_or(0);
    for ((name, row), result) in names.iter().zip(rows).zip(&results) {
        text.push_str(&format!(
            "  {name:name_width$}  {result:result_width$}  {:6.1} s\n",
            row.seconds
        ));
    }
    let held: Vec<&str> = names
        .iter()
        .zip(rows)
        .filter(|(_, row)| matches!(row.result, HostResult::Held(_)))
        .map(|(name, _)| name.as_str())
        .collect();
    if let Some(HostResult::Held(why)) = rows
        .iter()
        .map(|row| &row.result)
        .find(|result| matches!(result, HostResult::Held(_)))
    {
        text.push_str(&format!(
            "{tool}: fleet: stopped starting hosts ({why}); not started: {}\n",
            held.join(", ")
        ));
    }
    text
}

/// Our arguments without the program name, for [`run`] (clap has read
/// them, so every word a host's run gets is text).
pub fn args() -> Vec<String> {
    std::env::args_os()
        .skip(1)
        .map(|arg: OsString| arg.to_string_lossy().into_owned())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    use crate::fleet::file::tests::host;

    #[test]
    fn a_hosts_live_line_says_what_it_does_now_and_that_it_waits_for_the_lock() {
        let live = Style {
            live: true,
            color: false,
            verbosity: Verbosity::Normal,
        };
        let hosts = [host(json!({"target": "root@web1", "source": {}}))];
        let board = Board::new(live, &hosts);
        let message = || board.live.as_ref().unwrap().1[0].message();
        board.saw(
            0,
            b"2024-05-01T12:00:03Z populate: source a (file) \xe2\x86\x92 web1:/var/src/a\n",
        );
        assert_eq!(message(), "source a (file) → web1:/var/src/a");
        board.saw(0, b"sending incremental file list\n");
        assert_eq!(message(), "source a (file) → web1:/var/src/a");
        // The lock's line has no timestamp.
        board.saw(
            0,
            b"populate: waiting for the lock on web1:/var/src, held by bob@laptop (pid 7, run \
              5f3a1c) since 2024-06-01 12:03:04 UTC\n",
        );
        assert_eq!(
            message(),
            "waiting for the lock on web1:/var/src, held by bob@laptop (pid 7, run 5f3a1c) since \
             2024-06-01 12:03:04 UTC"
        );
        board.saw(0, b"populate: something else\n");
        assert!(message().starts_with("waiting for the lock"));
    }

    #[test]
    fn the_open_file_limit_says_how_many_hosts_run_at_once() {
        let limits = |soft: &str| {
            format!(
                "Limit                     Soft Limit           Hard Limit           Units\n\
                 Max processes             127431               127431               processes\n\
                 Max open files            {soft:<20} 524288               files\n"
            )
        };
        // ulimit -n 1024, the usual default: far more than the 8 of before.
        assert_eq!(jobs_allowed(&limits("1024")), 120);
        assert_eq!(jobs_allowed(&limits("524288")), 65528);
        assert_eq!(jobs_allowed(&limits("70")), 1);
        assert_eq!(jobs_allowed(&limits("unlimited")), 65535);
        assert_eq!(jobs_allowed(""), 64);
        assert!(machine_jobs() >= 1);
    }

    #[test]
    fn a_waiting_host_shows_its_batch_and_a_held_one_why() {
        let live = Style {
            live: true,
            color: false,
            verbosity: Verbosity::Normal,
        };
        let hosts = [
            host(json!({"target": "root@web1", "source": {}})),
            Host {
                name: "web2".into(),
                ..host(json!({"target": "root@web2", "source": {}}))
            },
        ];
        let board = Board::new(live, &hosts);
        let message = |i: usize| board.live.as_ref().unwrap().1[i].message();
        board.waiting(1, 2);
        assert_eq!(message(1), "  web2  waiting to start (batch 2)");
        board.not_started(1, "--max-failures 1: 1 host failed");
        assert_eq!(
            message(1),
            "- web2  not started (--max-failures 1: 1 host failed)"
        );
    }

    #[test]
    fn summary_names_the_hosts_max_failures_kept_from_starting() {
        let row = |result, seconds| SummaryRow { result, seconds };
        let held = || HostResult::Held("--max-failures 1: 1 host failed".into());
        let text = summary(
            "krops-deploy",
            &["a".into(), "b".into(), "c".into(), "d".into()],
            &[
                row(HostResult::Ok, 2.0),
                row(HostResult::Failed("exit status 1".into()), 3.5),
                row(held(), 0.0),
                row(held(), 0.0),
            ],
        );
        assert_eq!(
            text,
            "krops-deploy: fleet: 1 of 4 hosts ok, 1 failed, 2 not started\n\
             \x20 a  ok                                                2.0 s\n\
             \x20 b  failed (exit status 1)                            3.5 s\n\
             \x20 c  not started (--max-failures 1: 1 host failed)     0.0 s\n\
             \x20 d  not started (--max-failures 1: 1 host failed)     0.0 s\n\
             krops-deploy: fleet: stopped starting hosts (--max-failures 1: 1 host failed); not \
             started: c, d\n"
        );
    }

    #[test]
    fn summary_lists_result_and_seconds() {
        let hosts = [
            host(json!({"target": "a", "source": {}})),
            Host {
                name: "db-primary".into(),
                ..host(json!({"target": "b", "source": {}}))
            },
        ];
        let status =
            |code: i32| <ExitStatus as std::os::unix::process::ExitStatusExt>::from_raw(code << 8);
        let outcome = |code, seconds| HostOutcome {
            status: Ok(status(code)),
            seconds,
            stdout: vec![],
            stderr: vec![],
        };
        let names: Vec<String> = hosts.iter().map(|host| host.name.clone()).collect();
        let rows: Vec<SummaryRow> = [outcome(0, 1.25), outcome(3, 12.0)]
            .iter()
            .map(HostOutcome::row)
            .collect();
        let text = summary("krops-deploy", &names, &rows);
        assert_eq!(
            text,
            "krops-deploy: fleet: 1 of 2 hosts ok, 1 failed\n\
             \x20 web1        ok                         1.2 s\n\
             \x20 db-primary  failed (exit status 3)    12.0 s\n"
        );
        let row = |result, seconds| SummaryRow { result, seconds };
        let text = summary(
            "krops-command",
            &["a".into(), "b".into(), "c".into()],
            &[
                row(HostResult::Ok, 2.0),
                row(HostResult::Interrupted, 3.5),
                row(HostResult::NotStarted, 0.0),
            ],
        );
        assert_eq!(
            text,
            "krops-command: fleet: 1 of 3 hosts ok, 1 interrupted, 1 not started\n\
             \x20 a  ok              2.0 s\n\
             \x20 b  interrupted     3.5 s\n\
             \x20 c  not started     0.0 s\n"
        );
    }
}
