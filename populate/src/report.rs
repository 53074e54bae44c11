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
    pub steps: Vec<StepOutcome>,
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
        if let Some((step, err)) = self.first_failure() {
            return Err(anyhow!("{} → {}: {}", step.label, step.place, err.message));
        }
        Ok(self)
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

    /// A printer to our stderr.
    pub fn stderr(steps: usize) -> Printer {
        Printer::new(steps, Box::new(std::io::stderr()))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PrinterState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
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

    /// A writer for one step's output.
    pub fn step(&self, step: usize) -> StepWriter<'_> {
        StepWriter {
            printer: self,
            step,
        }
    }
}

/// One step's output stream; see [`Printer`].
pub struct StepWriter<'a> {
    printer: &'a Printer,
    step: usize,
}

impl Write for StepWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.printer.write(self.step, buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
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
        };
        let report = Report {
            steps: vec![
                step("a", StepStatus::Done),
                step("b", StepStatus::Failed(StepError::message("first"))),
                step("c", StepStatus::Failed(StepError::message("second"))),
            ],
        };
        let err = report.into_result().unwrap_err().to_string();
        assert_eq!(err, "b → h:/var/src/b: first");
    }
}
