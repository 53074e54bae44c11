//! What a populate run did, step by step, as data (for the error a person
//! reads, and for progress displays and machine-readable reports), and the
//! printer that keeps each step's output together, in plan order, when
//! steps run at once.

use std::io::Write;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::anyhow;

/// How one step of a plan ended.
#[derive(Clone, Debug)]
pub struct StepOutcome {
    /// What the log calls the step: `source nixpkgs (git)`, `sentinel check`.
    pub label: String,
    /// The source's name, for source steps.
    pub name: Option<String>,
    /// The source type (`git`), or `sentinel` / `backup`.
    pub kind: String,
    /// Where on the target it acts: `[HOST:]PATH`.
    pub place: String,
    pub status: StepStatus,
    pub elapsed: Duration,
    /// What rsync did, for the steps that sync with rsync and got that far.
    pub transfer: Option<Transfer>,
}

/// What one rsync did, as it reported it with `--itemize-changes` and `-v`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Transfer {
    /// rsync's itemized lines, one a changed file (`>f+++++++++ a.nix`,
    /// `*deleting   old.nix`); none when nothing changed.
    pub changes: Vec<String>,
    /// The bytes it sent (`sent 1,234 bytes …`), when it said.
    pub bytes_sent: Option<u64>,
}

impl Transfer {
    /// Reads one line of rsync's output.
    pub fn read_line(&mut self, line: &str) {
        let line = line.trim_end_matches(['\n', '\r']);
        if is_itemized(line) {
            self.changes.push(line.to_owned());
        } else if let Some(sent) = sent_bytes(line) {
            self.bytes_sent = Some(sent);
        }
    }

    /// `2 files changed, 1234 bytes sent`.
    pub fn summary(&self) -> String {
        let files = match self.changes.len() {
            1 => "1 file changed".to_owned(),
            n => format!("{n} files changed"),
        };
        match self.bytes_sent {
            Some(bytes) => format!("{files}, {bytes} bytes sent"),
            None => files,
        }
    }
}

/// Whether `line` is one of rsync's itemized changes: an 11-character code
/// (`YXcstpoguax`: update type, file type, attributes) and the name, or
/// `*deleting` and the name.
pub(crate) fn is_itemized(line: &str) -> bool {
    let bytes = line.as_bytes();
    if bytes.len() < 13 || bytes[11] != b' ' || !line.is_char_boundary(11) {
        return false;
    }
    if let Some(message) = line[..11].strip_prefix('*') {
        return message.trim_end().bytes().all(|b| b.is_ascii_lowercase());
    }
    b"<>ch.".contains(&bytes[0])
        && b"fdLDS".contains(&bytes[1])
        && bytes[2..11].iter().all(|b| b".+ ?cstpoguaxn".contains(b))
}

/// The number in rsync's `sent 1,234 bytes  received 56 bytes …` (its
/// digit groups separated by `,` or `.` as the locale says).
fn sent_bytes(line: &str) -> Option<u64> {
    let rest = line.strip_prefix("sent ")?;
    let (number, after) = rest.split_once(' ')?;
    if !after.starts_with("bytes") {
        return None;
    }
    let digits: String = number.chars().filter(char::is_ascii_digit).collect();
    if digits.is_empty()
        || !number
            .chars()
            .all(|c| c.is_ascii_digit() || c == ',' || c == '.')
    {
        return None;
    }
    digits.parse().ok()
}

#[derive(Clone, Debug)]
pub enum StepStatus {
    /// It ran and succeeded.
    Done,
    /// It found its place up to date and left it (a pass store's stamp).
    Unchanged,
    Failed(StepError),
    /// An earlier failure (or a signal) stopped the run before it started.
    NotRun,
}

/// Why a step failed.
#[derive(Clone, Debug)]
pub struct StepError {
    /// The one command that failed, when known (`git fetch origin main`).
    pub command: Option<String>,
    /// How it exited (`exit status 128`), when a command failed.
    pub status: Option<String>,
    /// The end of its output (already shown as it came).
    pub tail: String,
    /// What the error line says after the step's name.
    pub message: String,
}

impl StepError {
    pub fn message(message: impl Into<String>) -> StepError {
        StepError {
            command: None,
            status: None,
            tail: String::new(),
            message: message.into(),
        }
    }
}

impl From<anyhow::Error> for StepError {
    fn from(err: anyhow::Error) -> StepError {
        match err.downcast_ref::<StepError>() {
            Some(step) if err.chain().count() == 1 => step.clone(),
            _ => StepError::message(format!("{err:#}")),
        }
    }
}

impl std::fmt::Display for StepError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for StepError {}

/// Every step's outcome, in plan order.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// The target path as messages name it: `[HOST:]PATH`.
    pub target: String,
    /// The whole target, as `mktarget` writes it: `[USER@]HOST[:PORT]PATH`.
    pub address: String,
    pub steps: Vec<StepOutcome>,
    /// How long the whole run took.
    pub elapsed: Duration,
    /// What stopped the run before its steps, when not a step (the lock).
    pub error: Option<String>,
}

impl Report {
    /// The first failed step in plan order, if any.
    pub fn first_failure(&self) -> Option<(&StepOutcome, &StepError)> {
        self.steps.iter().find_map(|step| match &step.status {
            StepStatus::Failed(err) => Some((step, err)),
            _ => None,
        })
    }

    /// `Ok` when no step failed, else the first failure as the error a
    /// person reads: `source nixpkgs (git) → host:/var/src/nixpkgs: …`.
    pub fn into_result(self) -> anyhow::Result<Report> {
        match self.error() {
            Some(error) => Err(anyhow!(error)),
            None => Ok(self),
        }
    }

    /// Why the run failed, as [`Report::into_result`] says it.
    pub fn error(&self) -> Option<String> {
        self.error.clone().or_else(|| {
            self.first_failure()
                .map(|(step, err)| format!("{} → {}: {}", step.label, step.place, err.message))
        })
    }
}

/// Writes each step's output to one stream, whole and in plan order: the
/// earliest unfinished step's output goes out as it comes; later steps'
/// output waits until every step before them has finished.
pub struct Printer {
    state: Mutex<PrinterState>,
}

struct PrinterState {
    out: Box<dyn Write + Send>,
    /// The step whose output goes out as it comes.
    head: usize,
    slots: Vec<Slot>,
}

#[derive(Default)]
struct Slot {
    held: Vec<u8>,
    finished: bool,
}

impl Printer {
    /// A printer for `steps` steps writing to `out` (our stderr, usually).
    pub fn new(steps: usize, out: Box<dyn Write + Send>) -> Printer {
        Printer {
            state: Mutex::new(PrinterState {
                out,
                head: 0,
                slots: (0..steps).map(|_| Slot::default()).collect(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PrinterState> {
        mktarget::mutex::lock(&self.state)
    }

    /// Step `step`'s output.
    pub fn write(&self, step: usize, bytes: &[u8]) {
        let mut state = self.lock();
        if step == state.head {
            // Our stderr going away must not abort a step halfway.
            let _ = state.out.write_all(bytes);
            let _ = state.out.flush();
        } else if let Some(slot) = state.slots.get_mut(step) {
            slot.held.extend_from_slice(bytes);
        }
    }

    /// Step `step` has no more output.
    pub fn finish(&self, step: usize) {
        let mut state = self.lock();
        if let Some(slot) = state.slots.get_mut(step) {
            slot.finished = true;
        }
        loop {
            let head = state.head;
            match state.slots.get(head) {
                Some(slot) if slot.finished => state.head += 1,
                _ => break,
            }
            let next = state.head;
            if let Some(slot) = state.slots.get_mut(next) {
                let held = std::mem::take(&mut slot.held);
                let _ = state.out.write_all(&held);
                let _ = state.out.flush();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn output_comes_out_whole_and_in_plan_order() {
        let out = Shared::default();
        let printer = Printer::new(3, Box::new(out.clone()));
        let text = || String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        printer.write(2, b"c1\n");
        printer.write(0, b"a1\n");
        printer.write(1, b"b1\n");
        assert_eq!(text(), "a1\n");
        printer.finish(2);
        printer.write(0, b"a2\n");
        assert_eq!(text(), "a1\na2\n");
        printer.finish(0);
        // Step 1 is now the head: its held output, then live.
        assert_eq!(text(), "a1\na2\nb1\n");
        printer.write(1, b"b2\n");
        assert_eq!(text(), "a1\na2\nb1\nb2\n");
        printer.finish(1);
        assert_eq!(text(), "a1\na2\nb1\nb2\nc1\n");
    }

    #[test]
    fn the_first_failure_in_plan_order_is_the_error() {
        let step = |label: &str, status| StepOutcome {
            label: label.into(),
            name: None,
            kind: "symlink".into(),
            place: format!("h:/var/src/{label}"),
            status,
            elapsed: Duration::ZERO,
            transfer: None,
        };
        let report = Report {
            target: "h:/var/src".into(),
            address: "root@h:22/var/src".into(),
            elapsed: Duration::ZERO,
            error: None,
            steps: vec![
                step("a", StepStatus::Done),
                step("b", StepStatus::Failed(StepError::message("first"))),
                step("c", StepStatus::Failed(StepError::message("second"))),
            ],
        };
        let err = report.into_result().unwrap_err().to_string();
        assert_eq!(err, "b → h:/var/src/b: first");
    }

    #[test]
    fn rsyncs_itemized_changes_and_bytes_sent_are_read() {
        let mut transfer = Transfer::default();
        for line in [
            "sending incremental file list",
            ".d..t...... ./",
            ">f+++++++++ configuration.nix",
            "cd+++++++++ modules/",
            ">f.st...... modules/a b.nix",
            "*deleting   old.nix",
            "cL+++++++++ link -> target",
            "",
            "sent 1,234,567 bytes  received 35 bytes  2,469,204.00 bytes/sec",
            "total size is 12  speedup is 0.00",
            "rsync: [sender] some error",
        ] {
            transfer.read_line(&format!("{line}\n"));
        }
        assert_eq!(
            transfer.changes,
            [
                ".d..t...... ./",
                ">f+++++++++ configuration.nix",
                "cd+++++++++ modules/",
                ">f.st...... modules/a b.nix",
                "*deleting   old.nix",
                "cL+++++++++ link -> target",
            ]
        );
        assert_eq!(transfer.bytes_sent, Some(1_234_567));
        assert_eq!(transfer.summary(), "6 files changed, 1234567 bytes sent");
        let mut nothing = Transfer::default();
        for line in [
            "sending incremental file list",
            "sent 52 bytes  received 12 bytes  128.00 bytes/sec",
        ] {
            nothing.read_line(line);
        }
        assert!(nothing.changes.is_empty());
        assert_eq!(nothing.summary(), "0 files changed, 52 bytes sent");
    }
}
