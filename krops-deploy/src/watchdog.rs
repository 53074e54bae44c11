//! The confirmed switch of `--confirm-timeout` (README: See what a deploy changes): shell text that
//! runs on the target, and the deployer's side of it.
//!
//! Before activating, the target starts a watchdog ([`Watchdog::start_script`])
//! that outlives the ssh session. After activation, the deployer confirms
//! over a new ssh connection ([`Watchdog::confirm_script`]), which proves
//! that new logins still work; without a confirmation within the timeout
//! after activation, the watchdog rolls back and records what it did, which
//! the deployer then reads ([`Watchdog::result_script`]).
//!
//! The watchdog and the deployer agree through one symlink, `DIR/verdict`,
//! which whoever comes first creates (`ln -s` fails when it exists):
//! `confirmed` by the deployer, `rollback` by the watchdog at its deadline or
//! by the deployer when it withholds the confirmation (a failed check or
//! activation). A confirmation that arrives as the deadline passes therefore
//! either counts or is refused, never both.

use std::io::{Read, Write};
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use mktarget::command::Stdio;
use mktarget::shell::quote;
use mktarget::Session;

/// Where the watchdog keeps its state and finds the system: NixOS's paths
/// ([`Paths::nixos`]); other values only for running the scripts in a test.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Paths {
    /// The root-only directory of the watchdogs' state.
    pub state: String,
    /// The running system.
    pub current_system: String,
    /// The system profile, whose generations `switch` adds.
    pub profile: String,
    /// Exists when systemd runs the machine.
    pub systemd: String,
}

impl Paths {
    pub fn nixos() -> Paths {
        Paths {
            state: "/run/krops".to_owned(),
            current_system: "/run/current-system".to_owned(),
            profile: "/nix/var/nix/profiles/system".to_owned(),
            systemd: "/run/systemd/system".to_owned(),
        }
    }
}

/// The operations a watchdog can undo.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    /// Undone with `nixos-rebuild switch --rollback`.
    Switch,
    /// Undone by activating the system that ran before, again.
    Test,
}

impl Operation {
    /// The operation named `name`, if a watchdog can undo it.
    pub fn from_name(name: &str) -> Option<Operation> {
        match name {
            "switch" => Some(Operation::Switch),
            "test" => Some(Operation::Test),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Operation::Switch => "switch",
            Operation::Test => "test",
        }
    }
}

/// One deploy's watchdog.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Watchdog {
    /// A fresh name per deploy (hex digits).
    pub id: String,
    /// Seconds after activation within which the confirmation must come.
    pub timeout: u32,
    pub operation: Operation,
    pub paths: Paths,
    /// `--quiet`: the deployer's side says only what went wrong.
    pub quiet: bool,
}

/// What the watchdog ended with, as it records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Confirmed,
    /// Rolled back, how.
    RolledBack(String),
    /// Nothing to roll back: the running system had not changed.
    Unchanged(String),
    /// Rolling back failed, what and how.
    Failed(String),
}

impl Outcome {
    /// Reads a result line (`rolled-back nixos-rebuild switch --rollback`).
    pub fn parse(line: &str) -> Option<Outcome> {
        let line = line.trim_end();
        let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
        let rest = rest.to_owned();
        Some(match word {
            "confirmed" => Outcome::Confirmed,
            "rolled-back" => Outcome::RolledBack(rest),
            "unchanged" => Outcome::Unchanged(rest),
            "failed" => Outcome::Failed(rest),
            _ => return None,
        })
    }
}

/// The watchdog itself, run detached with its parameters as `$1`…`$8`.
/// It waits for the end of activation (DIR/activated, or the activating
/// shell gone), then up to TIMEOUT seconds for a verdict; at the deadline
/// it gives its own (`rollback`). On `rollback` it undoes the deploy, unless
/// the running system is still the one recorded before activation.
const WATCHDOG: &str = r#"dir=$1 timeout=$2 operation=$3 watch=$4 current=$5 profile=$6 id=$7 state=$8
log() { printf '%s %s\n' "$(date '+%Y-%m-%dT%H:%M:%S')" "$*" >>"$dir/log"; }
# The state's log first: whoever reads DIR/result finds the line there too.
finish() {
  printf '%s %s %s\n' "$(date '+%Y-%m-%dT%H:%M:%S')" "$id" "$*" >>"$state/log"
  printf '%s\n' "$*" >"$dir/result.new" && mv -f "$dir/result.new" "$dir/result"
  if command -v logger >/dev/null 2>&1; then logger -t krops-watchdog -- "$id $*" || :; fi
}
# Who runs it, for a later deploy to tell whether it still decides.
printf '%s\n' "$$" >"$dir/pid"
log "krops watchdog $id: $operation, rolled back unless confirmed within $timeout s after activation"
ended=
while [ ! -L "$dir/verdict" ]; do
  # Its directory gone (removed by hand, or a new boot's /run): nothing is
  # left to decide, and no verdict could be written.
  [ -d "$dir" ] || exit 1
  now=$(date +%s)
  if [ -z "$ended" ]; then
    if [ -e "$dir/activated" ] || ! kill -0 "$watch" 2>/dev/null; then
      ended=$now
      log "activation over: waiting $timeout s for the confirmation"
    fi
  fi
  if [ -n "$ended" ] && [ $((now - ended)) -ge "$timeout" ]; then
    ln -s rollback "$dir/verdict" 2>/dev/null || [ -L "$dir/verdict" ] || exit 1
  else
    sleep 1
  fi
done
verdict=$(readlink "$dir/verdict")
if [ "$verdict" = confirmed ]; then
  finish confirmed
  # Gone at once, so a retry of the confirmation finds it in the log and
  # never in a directory half removed (its verdict gone, the rest not yet).
  mv "$dir" "$dir.gone" && rm -rf "$dir.gone"
  exit 0
fi
previous=$(cat "$dir/previous-system")
generation=$(cat "$dir/previous-generation")
if [ -e "$current" ]; then running=$(readlink -f "$current"); else running=; fi
if [ -n "$previous" ] && [ "$running" = "$previous" ]; then
  finish "unchanged the running system is still $previous"
  exit 0
fi
rollback() {
  if [ "$operation" = switch ] && { [ -z "$generation" ] || [ "$(readlink "$profile")" != "$generation" ]; }; then
    how='nixos-rebuild switch --rollback'
    log "no confirmation: rolling back with $how"
    # --no-flake: the machine's own flake (/etc/nixos/flake.nix) has no say.
    nixos-rebuild switch --rollback --no-flake
  elif [ -n "$previous" ]; then
    how="$previous/bin/switch-to-configuration test"
    log "no confirmation: activating the previous system again with $how"
    "$previous/bin/switch-to-configuration" test
  else
    how="no previous system ($current did not exist)"
    return 1
  fi
}
rollback </dev/null >>"$dir/log" 2>&1
status=$?
if [ "$status" = 0 ]; then
  finish "rolled-back $how"
else
  finish "failed $how: exit status $status"
fi
"#;

/// What the confirmation script says first on stdout, once it runs on the
/// target: until a try says so, what it prints (ssh's messages) is held, so
/// that a connection that fails the same way every second is told once.
const CONNECTED: &str = "krops-confirm-connected";

/// How the confirmation script ends: the exit statuses it uses.
pub const CONFIRMED: i32 = 0;
/// The check failed; the confirmation was withheld (verdict `rollback`).
pub const CHECK_FAILED: i32 = 10;
/// The watchdog had already given its verdict: too late.
pub const TOO_LATE: i32 = 11;
/// The watchdog's directory is gone.
pub const GONE: i32 = 12;
/// How the activation script of [`Watchdog::guard`] ends when its
/// watchdog could not start: nothing was activated, and it said why in one
/// error line.
pub const NOT_STARTED: i32 = 70;
/// No result yet.
const PENDING: i32 = 3;
/// [`Watchdog::start_script`]: another deploy's watchdog has not decided.
const PENDING_OTHER: i32 = 4;

impl Watchdog {
    /// A watchdog with a fresh name, for `operation`.
    pub fn new(timeout: u32, operation: Operation) -> Result<Watchdog> {
        Ok(Watchdog {
            id: fresh_id()?,
            timeout,
            operation,
            paths: Paths::nixos(),
            quiet: false,
        })
    }

    /// What the target does when the deployer is stopped from the
    /// activation on, for the interrupt message.
    pub fn aftermath(&self, on: &str) -> String {
        format!(
            "the deploy is not confirmed: unless it already was, the watchdog on {on} rolls it \
             back {} s after the activation ends (its record: {}/log there)",
            self.timeout, self.paths.state
        )
    }

    /// Its directory on the target: STATE/ID, root's only.
    pub fn dir(&self) -> String {
        format!("{}/{}", self.paths.state, self.id)
    }

    /// Shell text, run on the target as root right before activation in the
    /// script that activates, that starts the watchdog detached (with
    /// `systemd-run` where systemd runs, else with `setsid` and `nohup`),
    /// watching that script's shell. It runs in a subshell, failing when
    /// the watchdog cannot start; the script must then not activate. It
    /// also fails, with [`PENDING_OTHER`] after saying why, while the
    /// watchdog of an earlier deploy (one interrupted, or to another target
    /// path) still waits for its confirmation: its rollback, at its
    /// deadline, would undo this deploy, confirmed or not.
    pub fn start_script(&self) -> String {
        let p = &self.paths;
        let (current, profile) = (quote(&p.current_system), quote(&p.profile));
        format!(
            "(\n\
             set -eu\n\
             umask 077\n\
             state={state} dir={dir}\n\
             mkdir -p \"$state\"\n\
             chmod 700 \"$state\"\n\
             for other in \"$state\"/*/; do\n\
             \x20 [ -f \"${{other}}pid\" ] && [ ! -e \"${{other}}result\" ] || continue\n\
             \x20 pid=$(cat \"${{other}}pid\" 2>/dev/null) || continue\n\
             \x20 other=${{other%/}}\n\
             \x20 if kill -0 \"$pid\" 2>/dev/null && tr '\\0' ' ' <\"/proc/$pid/cmdline\" 2>/dev/null | grep -qF \"${{other##*/}}\"; then\n\
             \x20   echo \"the watchdog of an earlier deploy ($other) has not decided yet: \
             it rolls that deploy back unless confirmed, which would undo this one; nothing was activated \
             (its record: $other/log; try again once it has decided)\" >&2\n\
             \x20   exit {PENDING_OTHER}\n\
             \x20 fi\n\
             done\n\
             mkdir \"$dir\"\n\
             if [ -e {current} ]; then readlink -f {current}; fi >\"$dir/previous-system\"\n\
             if [ -L {profile} ]; then readlink {profile}; fi >\"$dir/previous-generation\"\n\
             set -- \"$dir\" {timeout} {operation} \"$$\" {current} {profile} {id} \"$state\"\n\
             watchdog={watchdog}\n\
             if [ -d {systemd} ] && command -v systemd-run >/dev/null 2>&1; then\n\
             \x20 systemd-run --quiet --collect --unit={unit} --setenv=PATH=\"$PATH\" \
             /bin/sh -c \"$watchdog\" krops-watchdog \"$@\"\n\
             else\n\
             \x20 if command -v setsid >/dev/null 2>&1; then detach=setsid; else detach=; fi\n\
             \x20 $detach nohup /bin/sh -c \"$watchdog\" krops-watchdog \"$@\" </dev/null >>\"$dir/log\" 2>&1 &\n\
             fi\n\
             )",
            state = quote(&p.state),
            dir = quote(&self.dir()),
            timeout = self.timeout,
            operation = self.operation.name(),
            id = quote(&self.id),
            watchdog = quote(WATCHDOG),
            systemd = quote(&p.systemd),
            unit = quote(&format!("krops-watchdog-{}", self.id)),
        )
    }

    /// `activate` wrapped for a confirmed activation on the target: the
    /// watchdog starts first (when it cannot, nothing is activated, and the
    /// script says why in one error line and exits [`NOT_STARTED`]), then
    /// `activate` runs in a subshell; the watchdog is told that it ended
    /// (DIR/activated), and the script exits with its status, also when
    /// that cannot be told (a redirection that fails on `true`, unlike on
    /// `:`, does not end the shell).
    pub fn guard(&self, activate: &str) -> String {
        // What the start said (mkdir's error, say) joins that one line.
        format!(
            "started=0\n\
             why=$( {{ {start}\n}} 2>&1 >/dev/null ) || started=$?\n\
             why=$(printf '%s' \"$why\" | tr '\\n' ' ')\n\
             if [ \"$started\" = {PENDING_OTHER} ]; then\n\
             \x20 printf 'krops-deploy: error: %s\\n' \"${{why% }}\" >&2\n\
             \x20 exit {NOT_STARTED}\n\
             fi\n\
             if [ \"$started\" != 0 ]; then\n\
             \x20 printf 'krops-deploy: error: cannot start the confirmation watchdog in %s (it needs root%s): nothing was activated\\n' {state} \"${{why:+: ${{why% }}}}\" >&2\n\
             \x20 exit {NOT_STARTED}\n\
             fi\n\
             (\n{activate}\n)\n\
             status=$?\n\
             true 2>/dev/null >{activated}\n\
             exit \"$status\"\n",
            start = self.start_script(),
            state = quote(&self.paths.state),
            activated = quote(&format!("{}/activated", self.dir())),
        )
    }

    /// Run by the deployer over a new connection: says [`CONNECTED`] on
    /// stdout, runs `check` (if any; its output goes to stderr) and confirms
    /// when it succeeds, else withholds the confirmation. Exits
    /// [`CONFIRMED`], [`CHECK_FAILED`], [`TOO_LATE`] or [`GONE`]. When its
    /// stdin closes first (the deployer gave up on this try at its deadline,
    /// or was stopped), it stops the check, all of its process group, and
    /// itself, and gives no verdict: the watchdog decides. A confirmation counts the moment its `ln` succeeds: the
    /// watchdog may finish and remove its directory right after. A retry
    /// after an earlier try confirmed (its answer lost with its connection)
    /// finds that in the verdict or, once the directory is gone, in the
    /// state's log, and exits [`CONFIRMED`] too.
    pub fn confirm_script(&self, check: Option<&str>) -> String {
        let check = match check {
            // The check runs in a session of its own where `setsid` can
            // (util-linux; `-w` keeps its exit status), so that all of it
            // can be stopped. A background list's stdin is /dev/null: the
            // watcher reads ours saved on fd 3, with a builtin (nothing of
            // it is left reading once it is killed). It outlives a SIGTERM
            // to the script's process group (how the deployer stops a try
            // on a local target), so that it still stops the check. A check
            // that ignores SIGTERM (or a child of it that does) gets SIGKILL
            // 3 s later, from a process of the watcher's that the script,
            // should it end first, does not stop. What the check leaves
            // running in its session once it ended (`daemon &`) is killed:
            // holding the check's stderr, it would keep the confirmation
            // from finishing until --confirm-timeout.
            Some(check) => format!(
                "\x20 exec 3<&0\n\
                 \x20 if setsid -w true >/dev/null 2>&1; then detach='setsid -w'; else detach=; fi\n\
                 \x20 $detach /bin/sh -c {} krops-check </dev/null >&2 3<&- &\n\
                 \x20 check=$!\n\
                 \x20 {{ trap '' TERM; while read -r _ <&3; do :; done; (sleep 3; kill -KILL -\"$check\" || kill -KILL \"$check\") & kill -TERM -\"$check\" || kill -TERM \"$check\"; kill -TERM $$; }} </dev/null >/dev/null 2>&1 &\n\
                 \x20 watcher=$!\n\
                 \x20 exec 3<&-\n\
                 \x20 status=0\n\
                 \x20 wait \"$check\" || status=$?\n\
                 \x20 kill -KILL \"$watcher\" 2>/dev/null\n\
                 \x20 kill -KILL -\"$check\" 2>/dev/null\n\
                 \x20 if [ \"$status\" != 0 ]; then\n\
                 \x20   ln -s rollback \"$dir/verdict\" 2>/dev/null\n\
                 \x20   exit {CHECK_FAILED}\n\
                 \x20 fi\n",
                quote(check)
            ),
            None => String::new(),
        };
        format!(
            "echo {CONNECTED}\n\
             dir={dir}\n\
             if [ -d \"$dir\" ] && [ ! -L \"$dir/verdict\" ]; then\n\
             {check}\
             \x20 ln -s confirmed \"$dir/verdict\" 2>/dev/null && exit {CONFIRMED}\n\
             fi\n\
             [ \"$(readlink \"$dir/verdict\" 2>/dev/null)\" = confirmed ] && exit {CONFIRMED}\n\
             grep -q '^[^ ]* '{id}' confirmed$' {log} 2>/dev/null && exit {CONFIRMED}\n\
             [ -d \"$dir\" ] || exit {GONE}\n\
             exit {TOO_LATE}\n",
            dir = quote(&self.dir()),
            id = quote(&self.id),
            log = quote(&format!("{}/log", self.paths.state)),
        )
    }

    /// Run by the deployer when it withholds the confirmation: the watchdog
    /// rolls back now rather than at its deadline. Exits 0 when the verdict
    /// is `rollback`.
    pub fn withhold_script(&self) -> String {
        format!(
            "dir={dir}\n\
             [ -d \"$dir\" ] || exit {GONE}\n\
             ln -s rollback \"$dir/verdict\" 2>/dev/null\n\
             [ \"$(readlink \"$dir/verdict\")\" = rollback ]\n",
            dir = quote(&self.dir()),
        )
    }

    /// Prints the watchdog's result line, from its directory or, once that
    /// is gone, from the state's log (written first, so a directory removed
    /// between the two looks is no gap); exits 3 while there is none yet and
    /// [`GONE`] when there is no trace of it.
    pub fn result_script(&self) -> String {
        format!(
            "dir={dir}\n\
             if line=$(cat \"$dir/result\" 2>/dev/null); then printf '%s\\n' \"$line\"; exit 0; fi\n\
             if [ -d \"$dir\" ]; then exit {PENDING}; fi\n\
             line=$(sed -n 's/^[^ ]* '{id}' //p' {log} 2>/dev/null | tail -n 1)\n\
             if [ -n \"$line\" ]; then printf '%s\\n' \"$line\"; exit 0; fi\n\
             exit {GONE}\n",
            dir = quote(&self.dir()),
            id = quote(&self.id),
            log = quote(&format!("{}/log", self.paths.state)),
        )
    }
}

/// 128 random bits in hex, from the kernel.
fn fresh_id() -> Result<String> {
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut random| random.read_exact(&mut bytes))
        .context("cannot read /dev/urandom for the watchdog's name")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// How often the deployer tries a new connection while it may.
const RETRY: Duration = Duration::from_secs(1);

/// How long after the timeout the deployer keeps trying to learn what the
/// watchdog did (a rollback is a whole activation).
pub const REPORT_GRACE: Duration = Duration::from_secs(300);

/// How a try over a new connection ended.
#[derive(Debug, PartialEq, Eq)]
enum Try {
    Exited(i32),
    /// Connection failed (ssh's 255), or stopped by a signal.
    NoAnswer,
    /// Still running at the deadline, and stopped (the check, say, or a
    /// connection that hangs); what the target makes of it, the watchdog
    /// records.
    TimedOut,
}

/// Shows on stderr what tries over new connections printed, except a
/// failed connection's message that the last failed try printed too: a
/// target that refuses logins is retried every second.
#[derive(Debug, Default)]
struct Echo {
    last_failure: Vec<u8>,
}

impl Echo {
    fn show(&mut self, output: &std::process::Output, connected: bool) {
        let mut stderr = std::io::stderr().lock();
        if connected {
            self.last_failure.clear();
            let _ = stderr.write_all(&output.stdout);
            let _ = stderr.write_all(&output.stderr);
        } else if output.stderr != self.last_failure {
            let _ = stderr.write_all(&output.stderr);
            self.last_failure = output.stderr.clone();
        }
    }
}

/// How much a try's output is held before [`CONNECTED`] (ssh's messages):
/// beyond that, it is shown as it comes.
const HOLD_BYTES: usize = 64 * 1024;

/// A try's output on its way to our stderr: held until the script on the
/// target says [`CONNECTED`] (or there is much of it), then passed on as
/// it comes, never kept whole (a check may print gigabytes).
#[derive(Debug, Default)]
struct Flow {
    /// Passing it on.
    live: bool,
    /// What was held, stderr's and stdout's in the order they came.
    held: Vec<u8>,
    /// The start of stdout while it may still be [`CONNECTED`]'s line.
    first_line: Option<Vec<u8>>,
}

impl Flow {
    fn put(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        if !self.live && self.held.len() + bytes.len() > HOLD_BYTES {
            self.go_live();
        }
        if self.live {
            let _ = std::io::stderr().write_all(bytes);
        } else {
            self.held.extend_from_slice(bytes);
        }
    }

    fn go_live(&mut self) {
        self.live = true;
        let held = std::mem::take(&mut self.held);
        let _ = std::io::stderr().write_all(&held);
    }

    /// Takes stdout's `bytes`: its first line, when it is [`CONNECTED`],
    /// is the script's, not shown.
    fn stdout(&mut self, bytes: &[u8]) {
        let Some(mut line) = self.first_line.take() else {
            return self.put(bytes);
        };
        line.extend_from_slice(bytes);
        match line.iter().position(|&b| b == b'\n') {
            Some(end) if &line[..end] == CONNECTED.as_bytes() => {
                self.go_live();
                self.put(&line[end + 1..]);
            }
            None if line.len() <= CONNECTED.len() => self.first_line = Some(line),
            _ => self.put(&line),
        }
    }
}

fn lock_flow(flow: &std::sync::Mutex<Flow>) -> std::sync::MutexGuard<'_, Flow> {
    flow.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Runs `script` on the target over a new connection, stopping it at
/// `deadline`; what it prints is shown as it comes once the script runs
/// there (see [`Flow`]; before, what a failed connection said goes to
/// `echo`). Its stdin stays open while it runs: the confirmation script
/// stops its check when it closes.
fn try_fresh(session: &Session, script: &str, deadline: Instant, echo: &mut Echo) -> Try {
    let cmd = session.fresh_command(script, &[]);
    let piped = match cmd.spawn(Stdio::piped()) {
        Ok(piped) => piped,
        Err(err) => {
            eprintln!("krops-deploy: {err:#}");
            return Try::NoAnswer;
        }
    };
    let mut started = piped;
    let (stdin, mut stdout, mut stderr) = started.take_pipes();
    let flow = std::sync::Mutex::new(Flow {
        first_line: Some(Vec::new()),
        ..Flow::default()
    });
    let pump = |from: &mut dyn Read, is_stdout: bool| {
        let mut buf = [0u8; 8192];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 {
                break;
            }
            let mut flow = lock_flow(&flow);
            if is_stdout {
                flow.stdout(&buf[..n]);
            } else {
                flow.put(&buf[..n]);
            }
        }
    };
    let result = std::thread::scope(|scope| {
        scope.spawn(|| pump(&mut stdout, true));
        scope.spawn(|| pump(&mut stderr, false));
        let result = loop {
            match started.try_wait() {
                Ok(Some(status)) => break classify(&cmd, status),
                Ok(None) if Instant::now() < deadline && !mktarget::interrupt::interrupted() => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Ok(None) if !mktarget::interrupt::interrupted() => {
                    started.terminate(Duration::from_secs(2));
                    break Try::TimedOut;
                }
                _ => {
                    started.terminate(Duration::from_secs(2));
                    break Try::NoAnswer;
                }
            }
        };
        drop(stdin);
        result
    });
    let mut flow = flow.into_inner().unwrap_or_else(|p| p.into_inner());
    if let Some(line) = flow.first_line.take() {
        flow.put(&line);
    }
    if !flow.live {
        let output = std::process::Output {
            status: std::process::ExitStatus::default(),
            stdout: Vec::new(),
            stderr: flow.held,
        };
        echo.show(&output, result != Try::NoAnswer);
    } else {
        echo.last_failure.clear();
    }
    result
}

fn classify(cmd: &mktarget::Cmd, status: ExitStatus) -> Try {
    match status.code() {
        Some(code) if !cmd.connection_failed(status) => Try::Exited(code),
        _ => Try::NoAnswer,
    }
}

/// What the deployer saw of a confirmed activation.
#[derive(Debug, PartialEq, Eq)]
pub enum Confirmation {
    /// Confirmed over a new connection: the new system stays.
    Confirmed,
    /// Not confirmed, for this reason; what the watchdog then did, if the
    /// deployer could learn it.
    NotConfirmed { reason: String, outcome: Learned },
}

/// What the deployer learnt of the watchdog when it did not confirm.
#[derive(Debug, PartialEq, Eq)]
pub enum Learned {
    /// The watchdog's result.
    Outcome(Outcome),
    /// The target has no trace of the watchdog: it never started (nothing
    /// was activated then), or its record was removed; nothing rolls back.
    Gone,
    /// The target could not be asked in time.
    Nothing,
}

impl Watchdog {
    /// The deployer's side after activation: confirm over new connections
    /// (retried until the timeout; after `activated` failed, withhold
    /// instead), then, when not confirmed, wait for the watchdog's result.
    pub fn conclude(
        &self,
        session: &Session,
        check: Option<&str>,
        activated: bool,
    ) -> Confirmation {
        let on = session.machine();
        mktarget::interrupt::doing(if activated {
            format!("the confirmation of the deploy over a new ssh connection to {on}")
        } else {
            format!("withholding the confirmation from {on}")
        });
        let timeout = Duration::from_secs(self.timeout.into());
        let deadline = Instant::now() + timeout;
        let mut echo = Echo::default();
        let reason = if !activated {
            eprintln!(
                "krops-deploy: the activation failed: withholding the confirmation, so the \
                 watchdog on {on} rolls back if the running system changed"
            );
            while Instant::now() < deadline && !mktarget::interrupt::interrupted() {
                // Withheld, or no watchdog to withhold from (it never
                // started): asking again changes nothing.
                if matches!(
                    try_fresh(session, &self.withhold_script(), deadline, &mut echo),
                    Try::Exited(0 | GONE)
                ) {
                    break;
                }
                std::thread::sleep(RETRY);
            }
            "the activation failed".to_owned()
        } else {
            if !self.quiet {
                eprintln!(
                    "krops-deploy: confirming over a new ssh connection to {on} (the watchdog \
                     rolls back {} s after activation unless confirmed)",
                    self.timeout
                );
            }
            let script = self.confirm_script(check);
            let mut reason = format!("no new ssh connection to {on} within {} s", self.timeout);
            while Instant::now() < deadline && !mktarget::interrupt::interrupted() {
                match try_fresh(session, &script, deadline, &mut echo) {
                    Try::Exited(CONFIRMED) => {
                        mktarget::interrupt::aftermath(format!(
                            "the deploy on {on} was confirmed: the new system stays"
                        ));
                        if !self.quiet {
                            eprintln!(
                                "krops-deploy: confirmed over a new ssh connection to {on}: the \
                                 new system stays"
                            );
                        }
                        return Confirmation::Confirmed;
                    }
                    Try::Exited(CHECK_FAILED) => {
                        reason = "the check failed".to_owned();
                        break;
                    }
                    Try::Exited(TOO_LATE) => {
                        reason = format!(
                            "the confirmation came too late (more than {} s after activation)",
                            self.timeout
                        );
                        break;
                    }
                    Try::Exited(GONE) => {
                        reason = format!("the watchdog's record {} is gone", self.dir());
                        break;
                    }
                    Try::Exited(code) => {
                        reason = format!(
                            "confirming on {on} failed (exit status {code}; its message, if any, \
                             is above)"
                        );
                    }
                    Try::TimedOut => {
                        reason = format!(
                            "the confirmation over a new ssh connection to {on}{} did not \
                             finish within {} s",
                            if check.is_some() {
                                ", with its check,"
                            } else {
                                ""
                            },
                            self.timeout
                        );
                    }
                    Try::NoAnswer => {}
                }
                std::thread::sleep(RETRY);
            }
            reason
        };
        // Stopped by a signal: not a reason to give, the handler says why.
        mktarget::interrupt::wait_if_interrupted();
        mktarget::interrupt::doing(format!("waiting to learn from {on} whether it rolled back"));
        eprintln!(
            "krops-deploy: not confirmed ({reason}): waiting to learn from {on} whether it \
             rolled back"
        );
        let outcome = self.wait_for_outcome(session, deadline + REPORT_GRACE, &mut echo);
        mktarget::interrupt::wait_if_interrupted();
        Confirmation::NotConfirmed { reason, outcome }
    }

    /// Asks for the watchdog's result over new connections until `until`.
    fn wait_for_outcome(&self, session: &Session, until: Instant, echo: &mut Echo) -> Learned {
        let script = self.result_script();
        while Instant::now() < until && !mktarget::interrupt::interrupted() {
            let cmd = session.fresh_command(&script, &[]);
            if let Ok(output) = cmd.run(Stdio::capture()).map(std::process::Output::from) {
                let connected = !cmd.connection_failed(output.status);
                if !output.status.success() || !connected {
                    echo.show(
                        &std::process::Output {
                            stdout: Vec::new(),
                            ..output.clone()
                        },
                        connected,
                    );
                }
                if output.status.success() {
                    if let Some(outcome) = Outcome::parse(&String::from_utf8_lossy(&output.stdout))
                    {
                        return Learned::Outcome(outcome);
                    }
                } else if connected && output.status.code() == Some(GONE) {
                    return Learned::Gone;
                }
            }
            std::thread::sleep(RETRY);
        }
        Learned::Nothing
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::write_executable;
    use std::path::Path;
    use std::process::{Command, Output};

    /// A watchdog whose paths are in `root`, with `nixos-rebuild` a
    /// stand-in in `root/bin` that records its arguments.
    fn watchdog(root: &Path, operation: Operation, timeout: u32) -> Watchdog {
        let bin = root.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        let rebuild = bin.join("nixos-rebuild");
        write_executable(
            &rebuild,
            "#!/bin/sh\necho \"$*\" >>\"$(dirname \"$0\")/../rebuilds\"\n",
        );
        let path = |name: &str| root.join(name).display().to_string();
        Watchdog {
            id: fresh_id().unwrap(),
            timeout,
            operation,
            paths: Paths {
                state: path("run/krops"),
                current_system: path("run/current-system"),
                profile: path("profiles/system"),
                systemd: path("run/systemd/system"),
            },
            quiet: false,
        }
    }

    /// Runs `script` with its stdin open until it ended, as the deployer
    /// runs the confirmation (which stops its check when stdin closes).
    fn sh(root: &Path, script: &str) -> Output {
        use std::process::Stdio;
        let mut child = Command::new("/bin/sh")
            .args(["-c", script])
            .env(
                "PATH",
                format!("{}:/usr/bin:/bin", root.join("bin").display()),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take();
        let mut out = child.stdout.take().unwrap();
        let mut err = child.stderr.take().unwrap();
        let out = std::thread::spawn(move || {
            let mut text = Vec::new();
            out.read_to_end(&mut text).unwrap();
            text
        });
        let err = std::thread::spawn(move || {
            let mut text = Vec::new();
            err.read_to_end(&mut text).unwrap();
            text
        });
        let status = child.wait().unwrap();
        drop(stdin);
        Output {
            status,
            stdout: out.join().unwrap(),
            stderr: err.join().unwrap(),
        }
    }

    /// A "system": a directory whose switch-to-configuration records calls.
    fn system(root: &Path, name: &str) -> String {
        let dir = root.join(name);
        std::fs::create_dir_all(dir.join("bin")).unwrap();
        let switch = dir.join("bin/switch-to-configuration");
        write_executable(
            &switch,
            &format!("#!/bin/sh\necho \"{name} $*\" >>\"$(dirname \"$0\")/../../activations\"\n"),
        );
        dir.display().to_string()
    }

    fn link(target: &str, at: &str) {
        let _ = std::fs::remove_file(at);
        std::os::unix::fs::symlink(target, at).unwrap();
    }

    /// Waits (bounded, not timed) for the watchdog's result line.
    fn result(root: &Path, watchdog: &Watchdog) -> String {
        for _ in 0..600 {
            let out = sh(root, &watchdog.result_script());
            if out.status.success() {
                return String::from_utf8(out.stdout).unwrap();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("the watchdog never recorded a result");
    }

    fn read(path: &Path) -> String {
        std::fs::read_to_string(path).unwrap_or_default()
    }

    #[test]
    fn a_confirmed_activation_is_kept_and_its_record_removed() {
        let root = tempfile::tempdir().unwrap();
        let root = root.path();
        let w = watchdog(root, Operation::Switch, 30);
        let out = sh(root, &w.guard("echo activating"));
        assert!(out.status.success(), "{out:?}");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "activating\n");
        let state = root.join("run/krops");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&state).unwrap().permissions().mode() & 0o777,
            0o700
        );
        let confirm = sh(root, &w.confirm_script(Some("test -d /")));
        assert_eq!(confirm.status.code(), Some(CONFIRMED), "{confirm:?}");
        assert_eq!(result(root, &w), "confirmed\n");
        for _ in 0..600 {
            if !Path::new(&w.dir()).exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(!Path::new(&w.dir()).exists());
        assert_eq!(read(&root.join("rebuilds")), "");
        // A retry, as after a confirmation whose answer was lost, finds it
        // confirmed in the log; a watchdog never started is gone.
        assert_eq!(
            sh(root, &w.confirm_script(Some("exit 1"))).status.code(),
            Some(CONFIRMED)
        );
        let other = Watchdog {
            id: fresh_id().unwrap(),
            ..w.clone()
        };
        assert_eq!(
            sh(root, &other.confirm_script(None)).status.code(),
            Some(GONE)
        );
    }

    /// The processes whose command line names `id`.
    fn running_with(id: &str) -> Vec<String> {
        std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|entry| {
                let entry = entry.ok()?;
                let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
                String::from_utf8_lossy(&cmdline)
                    .contains(id)
                    .then(|| entry.file_name().to_string_lossy().into_owned())
            })
            .collect()
    }

    #[test]
    fn a_check_given_up_on_at_the_deadline_is_stopped_on_a_local_target_too() {
        let root = tempfile::tempdir().unwrap();
        let root = root.path();
        let w = watchdog(root, Operation::Switch, 600);
        assert!(sh(root, &w.guard("true")).status.success());
        let origin = mktarget::Origin {
            user: Some("alice".into()),
            host: "laptop".into(),
        };
        let target = mktarget::Target::parse("/var/src", &origin).unwrap();
        let session = Session::open(&target, &origin, mktarget::Multiplex::Off).unwrap();
        // Unique: what its processes are found by.
        let marker = format!("krops-unit-check-{}", w.id);
        let check = format!("sleep 1000 & wait; : {marker}");
        let deadline = Instant::now() + Duration::from_secs(1);
        let tried = try_fresh(
            &session,
            &w.confirm_script(Some(&check)),
            deadline,
            &mut Echo::default(),
        );
        assert_eq!(tried, Try::TimedOut);
        for _ in 0..200 {
            if running_with(&marker).is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(
            running_with(&marker).is_empty(),
            "{:?}",
            running_with(&marker)
        );
        // No verdict was given: the watchdog still waits, until withheld.
        assert!(!Path::new(&w.dir()).join("verdict").exists());
        assert!(sh(root, &w.withhold_script()).status.success());
        result(root, &w);
    }

    #[test]
    fn a_watchdog_whose_directory_is_gone_ends() {
        let root = tempfile::tempdir().unwrap();
        let w = watchdog(root.path(), Operation::Switch, 1);
        // The activation waits (bounded) until the watchdog has started and
        // logged, then removes its directory, before the 1 s deadline can
        // pass: no timing of this test's own decides what is seen.
        let dir = quote(&w.dir());
        let activate = format!(
            "i=0\n\
             until grep -q 'krops watchdog' {dir}/log 2>/dev/null; do\n\
             \x20 i=$((i + 1)); [ \"$i\" -lt 600 ] || exit 9; sleep 0.05\n\
             done\n\
             rm -rf {dir}"
        );
        let out = sh(root.path(), &w.guard(&activate));
        assert!(out.status.success(), "the watchdog never logged: {out:?}");
        // Before the fix it looped for ever, without sleeping, once its
        // deadline had passed and no verdict could be written.
        for _ in 0..600 {
            if running_with(&w.id).is_empty() {
                assert_eq!(read(&root.path().join("rebuilds")), "");
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("the watchdog still runs: {:?}", running_with(&w.id));
    }

    #[test]
    fn no_confirmation_rolls_a_switch_back_and_says_so() {
        let root = tempfile::tempdir().unwrap();
        let root = root.path();
        let w = watchdog(root, Operation::Switch, 1);
        let (old, new) = (system(root, "old"), system(root, "new"));
        std::fs::create_dir_all(root.join("run")).unwrap();
        link(&old, &w.paths.current_system);
        // The activation switches to the new system; nobody confirms.
        let activate = format!("ln -sfn {} {}", quote(&new), quote(&w.paths.current_system));
        let out = sh(root, &w.guard(&activate));
        assert!(out.status.success(), "{out:?}");
        assert_eq!(
            Outcome::parse(&result(root, &w)),
            Some(Outcome::RolledBack(
                "nixos-rebuild switch --rollback".to_owned()
            ))
        );
        assert_eq!(
            read(&root.join("rebuilds")),
            "switch --rollback --no-flake\n"
        );
        assert!(read(&Path::new(&w.dir()).join("log")).contains("no confirmation"));
        assert!(read(&root.join("run/krops/log")).contains(&format!(" {} rolled-back", w.id)));
        // Too late now.
        let confirm = sh(root, &w.confirm_script(None));
        assert_eq!(confirm.status.code(), Some(TOO_LATE));
    }

    #[test]
    fn a_failing_check_withholds_the_confirmation_and_a_test_goes_back() {
        let root = tempfile::tempdir().unwrap();
        let root = root.path();
        let w = watchdog(root, Operation::Test, 600);
        let (old, new) = (system(root, "old"), system(root, "new"));
        std::fs::create_dir_all(root.join("run")).unwrap();
        link(&old, &w.paths.current_system);
        let activate = format!("ln -sfn {} {}", quote(&new), quote(&w.paths.current_system));
        assert!(sh(root, &w.guard(&activate)).status.success());
        let confirm = sh(
            root,
            &w.confirm_script(Some("echo 'it'\\''s down'; exit 3")),
        );
        assert_eq!(confirm.status.code(), Some(CHECK_FAILED), "{confirm:?}");
        assert_eq!(String::from_utf8_lossy(&confirm.stderr), "it's down\n");
        // Long before the 600 s: the withheld confirmation is a verdict.
        assert_eq!(
            Outcome::parse(&result(root, &w)),
            Some(Outcome::RolledBack(format!(
                "{old}/bin/switch-to-configuration test"
            )))
        );
        assert_eq!(read(&root.join("activations")), "old test\n");
    }

    #[test]
    fn nothing_is_rolled_back_when_the_running_system_did_not_change() {
        let root = tempfile::tempdir().unwrap();
        let root = root.path();
        let w = watchdog(root, Operation::Switch, 600);
        let old = system(root, "old");
        std::fs::create_dir_all(root.join("run")).unwrap();
        link(&old, &w.paths.current_system);
        // The activation failed before it changed anything.
        let out = sh(root, &w.guard("exit 4"));
        assert_eq!(out.status.code(), Some(4));
        assert!(sh(root, &w.withhold_script()).status.success());
        assert_eq!(
            Outcome::parse(&result(root, &w)),
            Some(Outcome::Unchanged(format!(
                "the running system is still {old}"
            )))
        );
        assert_eq!(read(&root.join("rebuilds")), "");
    }

    #[test]
    fn a_switch_that_left_the_profile_alone_is_undone_without_touching_it() {
        let root = tempfile::tempdir().unwrap();
        let root = root.path();
        let w = watchdog(root, Operation::Switch, 600);
        let (old, new) = (system(root, "old"), system(root, "new"));
        std::fs::create_dir_all(root.join("run")).unwrap();
        std::fs::create_dir_all(root.join("profiles")).unwrap();
        link(&old, &w.paths.current_system);
        link("system-7-link", &w.paths.profile);
        let activate = format!("ln -sfn {} {}", quote(&new), quote(&w.paths.current_system));
        assert!(sh(root, &w.guard(&activate)).status.success());
        assert!(sh(root, &w.withhold_script()).status.success());
        assert_eq!(
            Outcome::parse(&result(root, &w)),
            Some(Outcome::RolledBack(format!(
                "{old}/bin/switch-to-configuration test"
            )))
        );
        assert_eq!(read(&root.join("rebuilds")), "");
    }

    #[test]
    fn without_root_nothing_is_activated() {
        let root = tempfile::tempdir().unwrap();
        let root = root.path();
        let mut w = watchdog(root, Operation::Switch, 600);
        // A state directory that cannot be made.
        std::fs::write(root.join("file"), "").unwrap();
        w.paths.state = root.join("file/krops").display().to_string();
        let out = sh(root, &w.guard("echo ACTIVATED"));
        assert_eq!(out.status.code(), Some(NOT_STARTED));
        assert!(!String::from_utf8_lossy(&out.stdout).contains("ACTIVATED"));
        // One line, with mkdir's reason in it.
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.starts_with("krops-deploy: error: cannot start the confirmation watchdog in ")
                && stderr.contains("(it needs root: mkdir: ")
                && stderr.ends_with("): nothing was activated\n")
                && stderr.lines().count() == 1,
            "{stderr}"
        );
    }

    #[test]
    fn a_watchdog_still_deciding_stops_the_next_deploy_from_activating() {
        let root = tempfile::tempdir().unwrap();
        let root = root.path();
        let (old, new) = (system(root, "old"), system(root, "new"));
        std::fs::create_dir_all(root.join("run")).unwrap();
        let first = watchdog(root, Operation::Switch, 600);
        link(&old, &first.paths.current_system);
        // The first deploy activated and was never confirmed (its deployer
        // interrupted): its watchdog waits for its deadline.
        let activate = format!(
            "ln -sfn {} {}",
            quote(&new),
            quote(&first.paths.current_system)
        );
        assert!(sh(root, &first.guard(&activate)).status.success());
        for _ in 0..600 {
            if Path::new(&first.dir()).join("pid").exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // A second deploy activating now would be undone by the first's
        // rollback, even once confirmed: it activates nothing.
        let second = Watchdog {
            id: fresh_id().unwrap(),
            ..first.clone()
        };
        let out = sh(root, &second.guard("echo ACTIVATED"));
        assert_eq!(out.status.code(), Some(NOT_STARTED), "{out:?}");
        assert!(!String::from_utf8_lossy(&out.stdout).contains("ACTIVATED"));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(&format!(
                "earlier deploy ({}) has not decided yet",
                first.dir()
            )) && stderr.contains("nothing was activated")
                && !stderr.contains("needs root")
                && stderr.starts_with("krops-deploy: error: the watchdog of an earlier deploy")
                && stderr.lines().count() == 1,
            "{stderr}"
        );
        assert!(!Path::new(&second.dir()).exists());
        // Once the first has decided, the next deploy goes ahead.
        assert!(sh(root, &first.withhold_script()).status.success());
        assert!(matches!(
            Outcome::parse(&result(root, &first)),
            Some(Outcome::RolledBack(_))
        ));
        let out = sh(root, &second.guard("echo ACTIVATED"));
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "ACTIVATED\n",
            "{out:?}"
        );
        assert!(sh(root, &second.withhold_script()).status.success());
        result(root, &second);
    }

    #[test]
    fn outcomes_parse() {
        assert_eq!(Outcome::parse("confirmed\n"), Some(Outcome::Confirmed));
        assert_eq!(
            Outcome::parse("failed x: exit status 1"),
            Some(Outcome::Failed("x: exit status 1".into()))
        );
        assert_eq!(Outcome::parse("what"), None);
        assert_eq!(fresh_id().unwrap().len(), 32);
        assert_ne!(fresh_id().unwrap(), fresh_id().unwrap());
    }
}
