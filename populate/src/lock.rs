//! The lock on a target (README: Sources, the lock): two runs against the same target path
//! must not write at once, nor run two nixos-rebuilds. A run holds the lock
//! from before its first write until its final command has ended.
//!
//! The lock is `flock` on `PATH/.populate-lock`, held by a small script on
//! the target ([`script`]) for as long as its stdin stays open: a session of
//! the run's shared ssh connection (a local `/bin/sh` for a local target;
//! under sudo, like the other steps, when the target says so). When the tool
//! ends, or dies, its end of that stdin closes, the script exits and the
//! lock goes with it: a lock held by a process, never a file that outlives
//! a crash. The lock file itself stays, holding the last holder's name, pid
//! and start time in one fixed-size line, which a waiting run prints
//! (`populate: waiting for the lock on HOST:/var/src, held by …`).
//!
//! A driver's final command runs under the lock on the target itself
//! ([`final_guard`]): Ctrl-C or `kill -9` of the tool end its ssh, not the
//! command there, and the lock then lasts until that command has ended.
//!
//! Nothing is locked when the target path or (without `--force`) its
//! sentinel is missing: a lock file must not appear in a directory populate
//! does not own. The sentinel check then says what is wrong.

use std::io::{BufRead, BufReader, Read, Write};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context, Result};
use mktarget::command::{describe, Child, ProcessError, Stdio};
use mktarget::shell::quote;
use mktarget::{interrupt, Session};

/// The lock file, beside the sentinel (names starting with `.populate` are
/// populate's own: no source can be called so).
pub const LOCK_FILE: &str = ".populate-lock";

/// Held by a driver's final command while it runs under the lock
/// ([`final_guard`]), for the lock script to wait for once let go.
pub const FINAL_FILE: &str = ".populate-lock-final";

/// The guard of a driver's final command; see [`final_guard`].
const FINAL_GUARD: &str = include_str!("lock-final.sh");

/// What the lock script's lines on stdout start with.
const MARKER: &str = "krops-lock ";

/// What the lock script prints after each script it runs in its session
/// ([`script`]'s `batch`, or one sent on its stdin), then the script's exit
/// status and a newline.
const BATCHED: &str = "\x1ekrops-lock-batched ";

/// How the lock script prints [`BATCHED`] and the exit status of what it
/// ran.
const SAY_BATCHED: &str = "printf '\\036krops-lock-batched %s\\n' \"$?\"\n";

/// Where `needle` first is in `hay`.
fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len())
        .position(|window| window == needle)
}

/// How long a released lock's script gets to end before it is stopped.
const RELEASE_GRACE: Duration = Duration::from_secs(5);

/// The width of the holder's line in the lock file (the newline included):
/// every holder overwrites the same bytes, so the file never grows and is
/// written through the locked descriptor, never through its path.
const HOLDER_WIDTH: usize = 200;

/// Whether a run takes the lock, and how long it waits for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Locking {
    /// `--no-lock`.
    Off,
    /// Wait at most this many seconds (`--lock-timeout`), else as long as
    /// it takes.
    Wait(Option<u32>),
}

/// How taking the lock ended.
#[derive(Debug)]
pub(crate) enum Taken {
    /// The script holds it until this is dropped.
    Held { process: Box<LockProcess> },
    /// Another lock of this very run holds it: the same machine and path
    /// reached under two names (say, a build target that is the target).
    Ours,
    /// The target path or its sentinel is missing: nothing to lock.
    Nothing,
    /// The ssh connection failed: the sentinel check, the first step, says
    /// so the way every step does.
    Unreachable,
}

impl Taken {
    /// Runs the batch the lock script was given ([`script`]'s `batch`) in
    /// its session, once: its output (every part's, with their markers)
    /// and exit status. None when there is no such batch to run (not
    /// held by our script, no batch given, or run already).
    pub(crate) fn run_batch(&mut self, session: &Session) -> Option<Result<(Vec<u8>, i32)>> {
        match self {
            Taken::Held { process } => {
                let ask: &[u8] = match process.batch.take()? {
                    BatchRuns::WhenAsked => b"batch\n",
                    // It is running already.
                    BatchRuns::AtOnce => b"",
                };
                process.run(session, ask, "")
            }
            _ => None,
        }
    }

    /// Runs `text`, a script (a batch: [`crate::script::batch`]), in the
    /// lock's session, under the lock: its output and exit status, as
    /// [`Taken::run_batch`]. None when the lock is not held by our script:
    /// the caller runs it in a session of its own.
    pub(crate) fn run_script(
        &mut self,
        session: &Session,
        text: &str,
    ) -> Option<Result<(Vec<u8>, i32)>> {
        match self {
            Taken::Held { process } => {
                let command = format!("script {}\n", text.len());
                process.run(session, command.as_bytes(), text)
            }
            _ => None,
        }
    }
}

/// The first batch the lock script runs once held (see [`script`]): the
/// sentinel check and what is batched with it, and when it runs.
#[derive(Clone, Copy, Debug)]
pub(crate) struct FirstBatch<'a> {
    pub(crate) text: &'a str,
    pub(crate) runs: BatchRuns,
}

/// When the lock script runs its [`FirstBatch`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BatchRuns {
    /// When its stdin says `batch`: a driver takes every target's lock
    /// (`lock_all`) before anything writes.
    WhenAsked,
    /// As soon as the lock is held: the run's only lock, so the batch's
    /// output follows `held`, a round trip sooner.
    AtOnce,
}

/// The script holding the lock; dropping it lets go.
#[derive(Debug)]
pub(crate) struct LockProcess {
    started: Child,
    /// What started it, and its stderr: why its session ended, if it did.
    cmd: mktarget::command::Cmd,
    stderr: Gate,
    /// Its stdin: the lock is held as long as this is open.
    stdin: Option<os_pipe::PipeWriter>,
    /// Its stdout after `held`: what the scripts it runs print.
    out: Option<BufReader<os_pipe::PipeReader>>,
    /// The batch it was given, until it is read ([`Taken::run_batch`]).
    batch: Option<BatchRuns>,
    /// Where the lock is, for messages.
    place: String,
}

impl LockProcess {
    /// See [`Taken::run_batch`] and [`Taken::run_script`]: says `command`
    /// and `text` on the script's stdin and reads what it prints up to the
    /// script's end marker. After a failure to, its session is not used
    /// again.
    fn run(
        &mut self,
        session: &Session,
        command: &[u8],
        text: &str,
    ) -> Option<Result<(Vec<u8>, i32)>> {
        let stdout = self.out.as_mut()?;
        let stdin = self.stdin.as_mut()?;
        let what = format!("lock on {}", self.place);
        let ran = (|| {
            stdin
                .write_all(command)
                .and_then(|()| stdin.write_all(text.as_bytes()))
                .and_then(|()| stdin.flush())
                .with_context(|| format!("the {what}: cannot start the checks in its session"))?;
            let mut out = Vec::new();
            loop {
                let from = out.len();
                let read = stdout
                    .read_until(b'\n', &mut out)
                    .with_context(|| format!("the {what}: reading what the checks said"))?;
                if read == 0 {
                    // The connection was lost, say: ssh's words, as for
                    // a session of its own.
                    let status = self.started.wait_for(RELEASE_GRACE);
                    let failed = status.map(|status| ProcessError {
                        stderr: self.stderr.tail(RELEASE_GRACE),
                        shown: false,
                        ..self.cmd.failure(status)
                    });
                    if let Some(message) =
                        failed.and_then(|failed| session.connection_failure(&failed))
                    {
                        bail!("{message}");
                    }
                    bail!("the {what}: its session ended before the checks in it did");
                }
                let line = &out[from..];
                if let Some(at) = find(line, BATCHED.as_bytes()) {
                    let code = std::str::from_utf8(&line[at + BATCHED.len()..])
                        .ok()
                        .and_then(|code| code.trim_end().parse().ok())
                        .unwrap_or(1);
                    out.truncate(from + at);
                    return Ok((out, code));
                }
            }
        })();
        if ran.is_err() {
            self.out = None;
        }
        Some(ran)
    }

    /// Closes the script's stdin and waits for it to end (it stops waiting
    /// or lets go of the lock); stops it if it does not.
    fn release(&mut self) -> Option<std::process::ExitStatus> {
        self.stdin.take();
        let status = self.started.wait_for(RELEASE_GRACE);
        if status.is_none() {
            self.started.terminate(RELEASE_GRACE);
        }
        status
    }
}

impl Drop for LockProcess {
    fn drop(&mut self) {
        if self.stdin.is_some() {
            self.release();
        }
    }
}

/// Who holds a lock: `alice@laptop (pid 1234, run 5f3a1c)`, as this run
/// writes it into the lock file (with `since TIME` after it). Printable
/// ASCII only: it is one line of a fixed width. The user is `$LOGNAME`,
/// else (cron, systemd units, `env -i`) the name of our uid.
pub(crate) fn holder_id(session: &Session) -> String {
    let origin = session.origin();
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let user = origin.user.clone().unwrap_or_else(|| {
        let uid = nix::unistd::getuid();
        match nix::unistd::User::from_uid(uid) {
            Ok(Some(user)) => user.name,
            _ => format!("uid {uid}"),
        }
    });
    let id = format!(
        "{}@{} (pid {}, run {:06x})",
        user,
        origin.host,
        std::process::id(),
        nanos & 0xff_ffff
    );
    printable(&id, 120)
}

/// This run's [`holder_id`], the same for all its locks and final
/// commands: one per process (a fleet runs each host in a process of its
/// own).
pub(crate) fn this_run(session: &Session) -> &'static str {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| holder_id(session))
}

/// The words that start a driver's final command on `session`'s target
/// under this run's lock ([`mktarget::Session::command_under`]), so the
/// lock lasts as long as the command there, also when this run's tool
/// ends first: Ctrl-C or `kill -9` stop the ssh of a remote command, not
/// the command. `lock-final.sh` holds [`FINAL_FILE`] while the command
/// runs, which the lock script, once let go, waits for before it lets go
/// of the lock (or, when the lock script is gone already, takes the lock
/// itself); it refuses to run the command when another run holds the
/// lock, and says in the lock file that the run's final command holds it.
pub fn final_guard(session: &Session) -> Vec<String> {
    vec![
        "/bin/sh".to_owned(),
        "-c".to_owned(),
        FINAL_GUARD.to_owned(),
        "krops-lock".to_owned(),
        session.target().path.clone(),
        this_run(session).to_owned(),
        (HOLDER_WIDTH - 1).to_string(),
    ]
}

/// `text` with anything but printable ASCII as `?`, cut to `max` chars.
fn printable(text: &str, max: usize) -> String {
    text.chars()
        .map(|c| {
            if c == ' ' || c.is_ascii_graphic() {
                c
            } else {
                '?'
            }
        })
        .take(max)
        .collect()
}

/// How messages name what is locked: `HOST:PATH`.
fn place(session: &Session) -> String {
    session.display_path(&session.target().path).into_owned()
}

/// The script that takes and holds the lock on `session`'s target path.
/// It prints, each on a line of its own after [`MARKER`]: `waiting HOLDER`
/// whenever it waits and the holder changed, then one of `held` (and keeps
/// it until its stdin closes), `none` (nothing to lock), `timeout`, or
/// `error MESSAGE`. `force` is populate's `--force`: the path is made first.
///
/// `batch` is a batch script ([`crate::script::batch`]: the sentinel check
/// and what is batched with it) the script runs once held, in its own
/// session (see [`Taken::run_batch`]): a session fewer a run, and so a few
/// round trips fewer. It runs only under the lock, and only when the run
/// starts: at once when it is the run's only lock, else when its stdin
/// says `batch` (a driver takes every target's lock before any writes:
/// `lock_all`). Once held, the script also runs
/// every script its stdin sends as `script LENGTH` and then LENGTH bytes
/// (see [`Taken::run_script`]), one after another: the run's other
/// batches, its git checkouts and derivations, each a session fewer.
pub(crate) fn script(
    session: &Session,
    force: bool,
    timeout: Option<u32>,
    id: &str,
    batch: Option<FirstBatch<'_>>,
) -> String {
    let path = &session.target().path;
    let lock = format!("{path}/{LOCK_FILE}");
    let shown = session.display_path(&lock).into_owned();
    let mut s = format!(
        "set -u\n\
         krops_p={p}\nkrops_s={s}\nkrops_l={l}\nkrops_f={f}\n\
         say() {{ printf '{MARKER}%s\\n' \"$*\"; }}\n\
         if ! command -v flock >/dev/null 2>&1; then\n  \
         say error 'flock is not installed on the target (it comes with util-linux): install it, or run with --no-lock'\n  \
         exit 1\nfi\n",
        p = quote(path),
        s = quote(&format!("{path}/.populate")),
        l = quote(&lock),
        f = quote(&format!("{path}/{FINAL_FILE}")),
    );
    if force {
        // The sentinel check makes it too, and says why when it cannot.
        s.push_str("mkdir -p -- \"$krops_p\" 2>/dev/null || :\n");
    }
    s.push_str("if ! test -d \"$krops_p\"; then say none; exit 0; fi\n");
    if !force {
        s.push_str(
            "if test -L \"$krops_s\" || ! test -e \"$krops_s\"; then say none; exit 0; fi\n",
        );
    }
    // The lock file is never followed: a symlink there is replaced. A
    // watcher reads stdin (saved on fd 3, as a background list's own stdin
    // is /dev/null) and ends the script when it closes, also while it
    // waits for the lock; the holder then writes its line through the
    // locked descriptor and waits for the watcher.
    s.push_str(&format!(
        "if test -L \"$krops_l\"; then\n  \
         printf 'populate: replacing the symlink at %s (a lock file is never followed)\\n' {shown} >&2\n  \
         rm -f -- \"$krops_l\" || {{ say error 'cannot remove the symlink at '{shown}; exit 1; }}\n\
         fi\n\
         if test -e \"$krops_l\" && ! test -f \"$krops_l\"; then\n  \
         say error {shown}' is not a regular file: remove it (populate keeps its lock there)'\n  \
         exit 1\nfi\n\
         if ! (exec 9<>\"$krops_l\") 2>/dev/null; then\n  \
         say error 'cannot open '{shown}' for writing: run as a user who may write there (or with sudo), or with --no-lock'\n  \
         exit 1\nfi\n\
         exec 9<>\"$krops_l\"\n\
         exec 3<&0\n\
         {{ while read -r _ <&3; do :; done; kill -TERM $$ 2>/dev/null; }} >/dev/null 2>&1 9>&- &\n\
         krops_w=$!\n\
         trap 'kill \"$krops_w\" 2>/dev/null' EXIT\n\
         exec 3<&-\n\
         krops_rc=0\nflock -n 9 || krops_rc=$?\n\
         if test \"$krops_rc\" != 0; then\n",
        shown = quote(&shown),
    ));
    if let Some(seconds) = timeout {
        s.push_str(&format!("  krops_end=$(( $(date +%s) + {seconds} ))\n"));
    }
    s.push_str(&format!(
        "  krops_told='not told yet'\n  \
         while :; do\n    \
         if test \"$krops_rc\" != 1; then\n      \
         say error 'flock failed on '{shown}\" (exit status $krops_rc)\"\n      \
         exit 1\n    fi\n    \
         krops_holder=\n    \
         test -L \"$krops_l\" || krops_holder=$(head -n 1 -- \"$krops_l\" 2>/dev/null) || :\n    \
         if test \"$krops_holder\" != \"$krops_told\"; then\n      \
         say waiting \"$krops_holder\"\n      krops_told=$krops_holder\n    fi\n",
        shown = quote(&shown),
    ));
    if timeout.is_some() {
        s.push_str(
            "    if test $(( krops_end - $(date +%s) )) -le 0; then say timeout; exit 0; fi\n",
        );
    }
    // Held: the watcher goes (a builtin's loop, so nothing of it is left
    // reading stdin), and the script reads stdin itself until it closes.
    // Then, when a final command still runs under the lock (lock-final.sh
    // holds FINAL_FILE), the lock stays until it ends: the line says so,
    // and the lock goes before FINAL_FILE, so that a final command that
    // gets FINAL_FILE finds the lock free or another's, never this one
    // about to go. After `held` nobody reads the script's output.
    s.push_str(&format!(
        "    krops_rc=0\n    flock -w 1 9 || krops_rc=$?\n    \
         test \"$krops_rc\" = 0 && break\n  \
         done\nfi\n\
         kill \"$krops_w\" 2>/dev/null\n\
         wait \"$krops_w\" 2>/dev/null\n\
         trap - EXIT\n\
         printf '%-{w}.{w}s\\n' {id}\" since $(date '+%Y-%m-%d %H:%M:%S %Z')\" >&9\n\
         if test -L \"$krops_f\"; then rm -f -- \"$krops_f\"; fi\n\
         (umask 022 && : >>\"$krops_f\") 2>/dev/null\n\
         say held\n\
         {at_once}\
         {batch}\
         exec >/dev/null 2>&1\n\
         cat\n\
         if (exec 8<\"$krops_f\") 2>/dev/null; then\n  \
         exec 8<\"$krops_f\"\n  \
         if ! flock -n 8; then\n    \
         krops_holder=\n    \
         test -L \"$krops_l\" || krops_holder=$(head -n 1 -- \"$krops_l\") || :\n    \
         krops_holder=${{krops_holder%\"${{krops_holder##*[! ]}}\"}}\n    \
         printf '%-{w}.{w}s\\n' \"$krops_holder; its tool has ended\" 1<>\"$krops_l\"\n    \
         flock 8\n  \
         fi\nfi\n\
         exec 9>&-\n",
        w = HOLDER_WIDTH - 1,
        id = quote(id),
        at_once = match batch {
            Some(FirstBatch {
                text,
                runs: BatchRuns::AtOnce,
            }) => format!("{}{SAY_BATCHED}", subshell(text)),
            _ => String::new(),
        },
        batch = commands(batch.filter(|batch| batch.runs == BatchRuns::WhenAsked)),
    ));
    s
}

/// `batch` as the lock script runs it: in a subshell, so a script's
/// settings, names and exits stay its own; not holding the lock's
/// descriptor, nor reading stdin.
fn subshell(batch: &str) -> String {
    format!("(\n{batch}\n) 9>&- </dev/null\n")
}

/// What the lock script does once held ([`script`]): it runs `batch`, if
/// any, when its stdin says `batch`, and each script its stdin sends as
/// `script LENGTH`, until its stdin says anything else or closes.
fn commands(batch: Option<FirstBatch<'_>>) -> String {
    let first = batch.map_or_else(String::new, |batch| {
        format!("batch)\n{};;\n    ", subshell(batch.text))
    });
    // A script sent on stdin is read by `head -c` (GNU's reads no byte
    // past it), a `.` keeping its last newlines from `$(…)`; one cut
    // short (the tool gone while sending it) never runs.
    format!(
        "while IFS= read -r krops_go; do\n  \
         case $krops_go in\n    \
         {first}\
         'script '[0-9]*)\n      \
         krops_n=${{krops_go#script }}\n      \
         krops_text=$(head -c \"$krops_n\" && echo .) || break\n      \
         krops_text=${{krops_text%.}}\n      \
         test \"$(printf %s \"$krops_text\" | wc -c)\" = \"$krops_n\" || break\n      \
         (eval \"$krops_text\") 9>&- </dev/null\n      \
         ;;\n    \
         *) break ;;\n  \
         esac\n  \
         {SAY_BATCHED}\
         done\n"
    )
}

/// Takes the lock on `session`'s target path, waiting as `timeout` says
/// and saying what it waits for (unless `quiet`: `-q` prints errors
/// only); see [`Taken`]. `id` is this run's [`holder_id`].
pub(crate) fn take(
    session: &Session,
    force: bool,
    timeout: Option<u32>,
    id: &str,
    quiet: bool,
    batch: Option<FirstBatch<'_>>,
) -> Result<Taken> {
    // The sentinel check says why (see Plan::lock).
    if session.connect().is_err() {
        return Ok(Taken::Unreachable);
    }
    let place = place(session);
    let what = format!("lock on {place}");
    let cmd = session.shell(&script(session, force, timeout, id, batch));
    let mut started = cmd
        .spawn(Stdio::piped())
        .with_context(|| format!("cannot take the {what}"))?;
    let (stdin, stdout, stderr) = started.take_pipes();
    let stderr = Gate::new(stderr);
    let mut process = LockProcess {
        started,
        cmd: cmd.clone(),
        stderr: stderr.clone(),
        stdin: Some(stdin),
        out: None,
        batch: None,
        place: place.clone(),
    };
    let mut lines = BufReader::new(stdout);
    let mut waiting_since: Option<Instant> = None;
    let mut holder = String::new();
    loop {
        let mut line = String::new();
        let read = lines
            .read_line(&mut line)
            .with_context(|| format!("reading what the {what} says"))?;
        if read == 0 {
            // It ended without a verdict.
            let status = process.release();
            interrupt::wait_if_interrupted();
            if status.is_some_and(|status| cmd.connection_failed(status)) {
                // ssh's message shows again with the sentinel check's error.
                stderr.set(Mode::Drop);
                return Ok(Taken::Unreachable);
            }
            stderr.set(Mode::Pass);
            let how = status.map_or_else(|| "did not end".to_owned(), describe);
            bail!("{what}: taking it failed ({how}; its message, if any, is above)");
        }
        stderr.set(Mode::Pass);
        let line = line.trim_end_matches('\n');
        let Some(said) = line.strip_prefix(MARKER) else {
            // Not the script's: a login shell's chatter, say.
            eprintln!("{line}");
            continue;
        };
        let (word, rest) = said.split_once(' ').unwrap_or((said, ""));
        match word {
            "held" => {
                if let Some(since) = waiting_since.filter(|_| !quiet) {
                    eprintln!(
                        "populate: got the {what} after {} s",
                        since.elapsed().as_secs()
                    );
                }
                process.batch = batch.map(|batch| batch.runs);
                process.out = Some(lines);
                return Ok(Taken::Held {
                    process: Box::new(process),
                });
            }
            "none" => {
                process.release();
                return Ok(Taken::Nothing);
            }
            "waiting" => {
                let text = printable(rest.trim(), HOLDER_WIDTH);
                if text.starts_with(id) {
                    process.release();
                    return Ok(Taken::Ours);
                }
                holder = if text.is_empty() {
                    "another run (it has not said who yet)".to_owned()
                } else {
                    text
                };
                interrupt::doing(format!("waiting for the {what}"));
                if !quiet {
                    eprintln!("populate: waiting for the {what}, held by {holder}");
                }
                waiting_since.get_or_insert_with(Instant::now);
            }
            "timeout" => {
                process.release();
                bail!(
                    "{what}: another run holds it ({holder}); gave up after {} s \
                     (--lock-timeout {}); nothing was synced",
                    waiting_since.map_or(0, |since| since.elapsed().as_secs()),
                    timeout.unwrap_or(0)
                );
            }
            "error" => {
                process.release();
                bail!("{what}: {}", printable(rest, 400));
            }
            _ => eprintln!("{line}"),
        }
    }
}

/// What happens to the lock script's stderr (ssh's, sudo's messages).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Kept until the script said something: if ssh fails to connect, the
    /// sentinel check says so (with ssh's message) as the run's first step.
    Hold,
    /// To our stderr, what was held first.
    Pass,
    /// Dropped.
    Drop,
}

/// The lock script's stderr, read by a thread of its own: the mode, what
/// it holds, and the tail of what it passed on.
#[derive(Clone)]
struct Gate(Arc<(Mutex<GateState>, Condvar)>);

/// A [`Gate`]'s mode, what it holds, the tail of what it passed on, and
/// whether the stream has ended (its reader saw the end, or failed).
struct GateState {
    mode: Mode,
    held: Vec<u8>,
    tail: Vec<u8>,
    ended: bool,
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Gate")
    }
}

/// How much of what the lock script's stderr passed on [`Gate`] keeps.
const GATE_TAIL: usize = 4096;

impl Gate {
    fn new(mut from: os_pipe::PipeReader) -> Gate {
        let state = GateState {
            mode: Mode::Hold,
            held: Vec::new(),
            tail: Vec::new(),
            ended: false,
        };
        let gate = Gate(Arc::new((Mutex::new(state), Condvar::new())));
        let reader = gate.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = from.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let mut state = reader.lock();
                match state.mode {
                    Mode::Hold => state.held.extend_from_slice(&buf[..n]),
                    Mode::Pass => {
                        let _ = std::io::stderr().write_all(&buf[..n]);
                        let tail = &mut state.tail;
                        tail.extend_from_slice(&buf[..n]);
                        let over = tail.len().saturating_sub(GATE_TAIL);
                        tail.drain(..over);
                    }
                    Mode::Drop => {}
                }
            }
            reader.lock().ended = true;
            reader.0 .1.notify_all();
        });
        gate
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        self.0
             .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The last of what it passed on (once the script said something),
    /// to its end: ssh's last words come as it exits, so they are waited
    /// for, at most `grace` (a process ssh started may hold the stream).
    fn tail(&self, grace: Duration) -> Vec<u8> {
        let state = self.lock();
        let (state, _) = self
            .0
             .1
            .wait_timeout_while(state, grace, |state| !state.ended)
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        state.tail.clone()
    }

    fn set(&self, mode: Mode) {
        let mut state = self.lock();
        if state.mode == Mode::Hold {
            let held = std::mem::take(&mut state.held);
            if mode == Mode::Pass {
                let _ = std::io::stderr().write_all(&held);
            }
            state.mode = mode;
        }
    }
}

/// What `--dry-run`'s script says about the lock the real run takes.
pub(crate) fn dry_run_note(session: &Session, locking: Locking) -> String {
    match locking {
        Locking::Off => "# --no-lock: the real run takes no lock on the target\n".to_owned(),
        Locking::Wait(timeout) => {
            let lock = format!("{}/{LOCK_FILE}", session.target().path);
            let wait = match timeout {
                Some(seconds) => format!("waiting at most {seconds} s for it"),
                None => "waiting for it as long as another run holds it".to_owned(),
            };
            format!(
                "# The real run first takes the lock on {} (flock, held until the run and its final command end; \
                 {wait}). This script takes none.\n",
                session.display_path(&lock)
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mktarget::{Multiplex, Origin, Target};

    use mktarget::testing::origin;

    fn local(path: &std::path::Path) -> Session {
        let target = Target::parse(path.to_str().unwrap(), &origin()).unwrap();
        Session::open(&target, &origin(), Multiplex::Off).unwrap()
    }

    #[test]
    fn the_script_is_valid_sh() {
        let session = local(std::path::Path::new("/var/src with 'quotes'"));
        let tricky = "set -efu\ncase x in x) echo ')' ;; esac\n";
        let cases = [
            (false, None, None),
            (true, Some(0), None),
            (true, Some(30), Some(asked(tricky))),
            (false, Some(30), Some(at_once(tricky))),
        ];
        for (force, timeout, batch) in cases {
            let text = script(&session, force, timeout, "a@b (pid 1, run 000001)", batch);
            let out = std::process::Command::new("/bin/sh")
                .args(["-n", "-c", &text])
                .output()
                .unwrap();
            assert!(out.status.success(), "{text}\n{out:?}");
        }
    }

    #[test]
    fn the_final_guard_is_valid_sh_and_gets_path_run_and_width() {
        let session = local(std::path::Path::new("/var/src"));
        let guard = final_guard(&session);
        assert_eq!(guard[..2], ["/bin/sh", "-c"]);
        assert_eq!(guard[3..5], ["krops-lock", "/var/src"]);
        assert_eq!(guard[5], this_run(&session));
        assert_eq!(guard[6], "199");
        let out = std::process::Command::new("/bin/sh")
            .args(["-n", "-c", &guard[2]])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    }

    #[test]
    fn a_holder_without_logname_is_named_by_its_uid() {
        let nobody = Origin {
            user: None,
            host: "laptop".into(),
        };
        let target = Target::parse("/var/src", &nobody).unwrap();
        let session = Session::open(&target, &nobody, Multiplex::Off).unwrap();
        let id = holder_id(&session);
        let uid = nix::unistd::getuid();
        let name = nix::unistd::User::from_uid(uid)
            .unwrap()
            .map_or(format!("uid {uid}"), |user| user.name);
        assert!(id.starts_with(&format!("{name}@laptop (pid ")), "{id}");
    }

    #[test]
    fn holder_ids_are_one_printable_line() {
        assert_eq!(printable("a\nb\u{1b}[31mé", 100), "a?b?[31m?");
        assert_eq!(printable("abcdef", 3), "abc");
    }

    #[test]
    fn a_second_taker_waits_and_the_first_lets_go_when_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("src");
        let session = local(&path);
        // Without --force nor a sentinel there is nothing to lock.
        assert!(matches!(
            take(&session, false, None, "me", false, None).unwrap(),
            Taken::Nothing
        ));
        assert!(!path.exists());
        let first = match take(&session, true, None, "first (pid 1)", false, None).unwrap() {
            Taken::Held { process } => *process,
            other => panic!("{other:?}"),
        };
        let text = std::fs::read_to_string(path.join(LOCK_FILE)).unwrap();
        assert!(text.starts_with("first (pid 1) since "), "{text:?}");
        assert_eq!(text.len(), HOLDER_WIDTH);
        // Another taker gives up; this run's own second taker sees itself.
        let err = take(&session, true, Some(0), "second", false, None).unwrap_err();
        let err = format!("{err:#}");
        assert!(
            err.contains("held by") || err.contains("first (pid 1)"),
            "{err}"
        );
        assert!(err.contains("--lock-timeout 0"), "{err}");
        assert!(matches!(
            take(&session, true, Some(0), "first (pid 1)", false, None).unwrap(),
            Taken::Ours
        ));
        drop(first);
        let again = take(&session, true, Some(0), "second", false, None).unwrap();
        assert!(matches!(again, Taken::Held { .. }), "{again:?}");
    }

    #[test]
    fn a_batch_given_to_the_lock_runs_once_under_it_when_asked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("src");
        let session = local(&path);
        let batch =
            "set -efu\nif flock -n 9 2>/dev/null; then exit 9; fi\nprintf 'out\\n'\nexit 3\n";
        let mut held = take(
            &session,
            true,
            None,
            "me (pid 1)",
            false,
            Some(asked(batch)),
        )
        .unwrap();
        let (out, code) = held.run_batch(&session).unwrap().unwrap();
        // It ran with the lock held by its script, not by itself (fd 9 is
        // closed for it: `flock -n 9` fails), and said its own status.
        assert_eq!(
            (String::from_utf8(out).unwrap().as_str(), code),
            ("out\n", 3)
        );
        assert!(held.run_batch(&session).is_none(), "once");
        // Scripts sent on its stdin run there too, one after another, and
        // keep what they print to the last newline.
        for (text, said, status) in [
            (batch, "out\n", 3),
            ("printf 'two\\n\\n'\nexit 0\n\n\n", "two\n\n", 0),
            ("echo \"it's $(echo é)\"; exit 5", "it's é\n", 5),
        ] {
            let (out, code) = held.run_script(&session, text).unwrap().unwrap();
            assert_eq!(
                (String::from_utf8(out).unwrap().as_str(), code),
                (said, status)
            );
        }
        // Another taker still waits: the lock is held after the batch.
        assert!(take(&session, true, Some(0), "other", false, None).is_err());
        drop(held);
        assert!(matches!(
            take(&session, true, Some(0), "other", false, None).unwrap(),
            Taken::Held { .. }
        ));
        // Not asked: the batch never runs.
        let ran = dir.path().join("ran");
        let touch = format!("touch {}", quote(ran.to_str().unwrap()));
        let held = take(
            &session,
            true,
            None,
            "me (pid 1)",
            false,
            Some(asked(&touch)),
        )
        .unwrap();
        drop(held);
        assert!(!ran.exists());
    }

    #[test]
    fn a_batch_run_at_once_needs_no_asking_and_runs_once_under_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("src");
        let session = local(&path);
        let ran = dir.path().join("ran");
        // It runs as soon as the lock is held, before anything is asked;
        // it appends, so a second run would show.
        let batch = format!(
            "set -efu\nif flock -n 9 2>/dev/null; then exit 9; fi\necho x >> {}\necho out\nexit 4\n",
            quote(ran.to_str().unwrap())
        );
        let take_it = || {
            let batch = Some(at_once(&batch));
            take(&session, true, None, "me (pid 1)", false, batch).unwrap()
        };
        let mut held = take_it();
        let (out, code) = held.run_batch(&session).unwrap().unwrap();
        assert_eq!(
            (String::from_utf8(out).unwrap().as_str(), code),
            ("out\n", 4)
        );
        assert!(held.run_batch(&session).is_none(), "once");
        let (out, code) = held.run_script(&session, "echo after").unwrap().unwrap();
        assert_eq!(
            (String::from_utf8(out).unwrap().as_str(), code),
            ("after\n", 0)
        );
        drop(held);
        assert_eq!(std::fs::read_to_string(&ran).unwrap(), "x\n");
        // Never read: it ran all the same, and the lock goes as ever.
        drop(take_it());
        assert_eq!(std::fs::read_to_string(&ran).unwrap(), "x\nx\n");
        assert!(matches!(
            take(&session, true, Some(0), "other", false, None).unwrap(),
            Taken::Held { .. }
        ));
    }

    fn asked(text: &str) -> FirstBatch<'_> {
        FirstBatch {
            text,
            runs: BatchRuns::WhenAsked,
        }
    }

    fn at_once(text: &str) -> FirstBatch<'_> {
        FirstBatch {
            text,
            runs: BatchRuns::AtOnce,
        }
    }
}
