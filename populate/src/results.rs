//! The results of a run as one JSON document (`--json`, `--json-file`),
//! for scripts: per target and source what happened, the driver's final
//! command, and for a fleet, each host's. README "Machine-readable results"
//! documents the schema; keep the two in step.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::{json, Map, Value};

use crate::report::{Report, StepStatus};

/// The schema's version: it grows by fields; a change that breaks readers
/// gets a new number.
pub const VERSION: u64 = 1;

/// Where the document goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResultsTo {
    Stdout,
    File(PathBuf),
}

/// A run's results, gathered as it goes.
#[derive(Debug)]
pub struct Results {
    tool: String,
    began: Instant,
    targets: Vec<Value>,
    final_command: Option<Value>,
    failed: bool,
    /// Why the run failed when no error ended it (a deploy that was not
    /// confirmed ends with a status, not an error).
    failure: Option<String>,
    /// A fleet's hosts, by name; `None` for a single run.
    hosts: Option<BTreeMap<String, Value>>,
    /// More top-level fields a driver adds (e.g. a preview of what would
    /// change).
    pub extra: Map<String, Value>,
}

impl Results {
    pub fn new(tool: &str) -> Results {
        Results {
            tool: tool.to_owned(),
            began: Instant::now(),
            targets: Vec::new(),
            final_command: None,
            failed: false,
            failure: None,
            hosts: None,
            extra: Map::new(),
        }
    }

    /// One populate run's outcome.
    pub fn add_target(&mut self, report: &Report) {
        let error = report.error();
        let sources: Vec<Value> = report
            .steps
            .iter()
            .filter_map(|step| {
                let name = step.name.as_ref()?;
                let (status, error) = match &step.status {
                    StepStatus::Done => ("synced", Value::Null),
                    StepStatus::Unchanged => ("unchanged", Value::Null),
                    StepStatus::NotRun => ("not-run", Value::Null),
                    StepStatus::Failed(err) => (
                        "failed",
                        json!({
                            "message": err.message,
                            "command": err.command,
                            "status": err.status,
                        }),
                    ),
                };
                let transfer = step.transfer.as_ref();
                Some(json!({
                    "name": name,
                    "type": step.kind,
                    "status": status,
                    "seconds": seconds(step.elapsed),
                    "bytesSent": transfer.and_then(|t| t.bytes_sent),
                    "filesChanged": transfer.map(|t| t.changes.len()),
                    "changes": transfer.map(|t| &t.changes),
                    "error": error,
                }))
            })
            .collect();
        self.failed |= error.is_some();
        self.targets.push(json!({
            "target": report.target,
            "address": report.address,
            "ok": error.is_none(),
            "seconds": seconds(report.elapsed),
            "sources": sources,
            "error": error,
        }));
    }

    /// How the driver's final command (`what`) ended; `None`: it could not
    /// run.
    pub fn set_final(&mut self, what: &str, status: Option<ExitStatus>, elapsed: Duration) {
        let ok = status.is_some_and(|status| status.success());
        self.failed |= !ok;
        self.final_command = Some(json!({
            "what": what,
            "ok": ok,
            "exitCode": status.map(mktarget::command::exit_code),
            "seconds": seconds(elapsed),
        }));
    }

    /// The run failed after its final command ended, for `why` (the
    /// command failed; a deploy not confirmed, rolled back): the final
    /// command is not ok, whatever its exit code, and the document's
    /// `error` says why.
    pub fn final_failed(&mut self, why: &str) {
        self.failed = true;
        self.failure = Some(why.to_owned());
        if let Some(Value::Object(last)) = &mut self.final_command {
            last.insert("ok".into(), json!(false));
        }
    }

    /// A fleet host's outcome: how its run exited (`None`: it could not
    /// start, or a signal ended it) and its own document, if it wrote one.
    pub fn add_host(
        &mut self,
        name: &str,
        exit_code: Option<i32>,
        elapsed: Duration,
        results: Option<Value>,
    ) {
        let ok = exit_code == Some(0);
        self.failed |= !ok;
        self.hosts.get_or_insert_with(BTreeMap::new).insert(
            name.to_owned(),
            json!({
                "ok": ok,
                "exitCode": exit_code,
                "seconds": seconds(elapsed),
                "results": results,
            }),
        );
    }

    /// More fields of the fleet host `name`'s entry, added after
    /// [`Results::add_host`] (its tags, its batch, whether it rebooted).
    pub fn host_fields(&mut self, name: &str, fields: Map<String, Value>) {
        if let Some(Value::Object(host)) = self.hosts.as_mut().and_then(|hosts| hosts.get_mut(name))
        {
            host.extend(fields);
        }
    }

    /// Marks this a fleet's document, with no host yet.
    pub fn fleet(&mut self) {
        self.hosts.get_or_insert_with(BTreeMap::new);
    }

    /// The document, given how the run ended: an error stops it wherever it
    /// came (bad input, a failed source).
    pub fn to_json(&self, error: Option<&anyhow::Error>) -> Value {
        let error = error
            .map(|err| format!("{err:#}"))
            .or_else(|| self.failure.clone());
        let mut doc = Map::new();
        doc.insert("version".into(), json!(VERSION));
        doc.insert("tool".into(), json!(self.tool));
        doc.insert("ok".into(), json!(error.is_none() && !self.failed));
        doc.insert("seconds".into(), json!(seconds(self.began.elapsed())));
        match &self.hosts {
            Some(hosts) => {
                doc.insert("hosts".into(), json!(hosts));
            }
            None => {
                doc.insert("targets".into(), json!(self.targets));
                doc.insert("final".into(), json!(self.final_command));
            }
        }
        for (key, value) in &self.extra {
            doc.insert(key.clone(), value.clone());
        }
        doc.insert("error".into(), json!(error));
        Value::Object(doc)
    }

    /// Writes the document to `to`, one line. After a signal, none: the
    /// handler ends the run (a step its stopping failed would read as
    /// the connection lost), and this waits for it.
    pub fn write(&self, to: &ResultsTo, error: Option<&anyhow::Error>) -> Result<()> {
        mktarget::interrupt::wait_if_interrupted();
        let mut text = serde_json::to_string(&self.to_json(error))?;
        text.push('\n');
        match to {
            ResultsTo::Stdout => {
                let mut out = std::io::stdout().lock();
                out.write_all(text.as_bytes())
                    .and_then(|()| out.flush())
                    .context("cannot write the results to stdout")
            }
            ResultsTo::File(path) => std::fs::write(path, text)
                .with_context(|| format!("cannot write the results to {}", path.display())),
        }
    }
}

/// Seconds, to the millisecond.
fn seconds(elapsed: Duration) -> f64 {
    (elapsed.as_secs_f64() * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{StepError, StepOutcome, Transfer};

    fn step(name: Option<&str>, status: StepStatus, transfer: Option<Transfer>) -> StepOutcome {
        StepOutcome {
            label: name.map_or("sentinel check".into(), |n| format!("source {n} (file)")),
            name: name.map(Into::into),
            kind: "file".into(),
            place: "h:/var/src".into(),
            status,
            elapsed: Duration::from_millis(1500),
            transfer,
        }
    }

    #[test]
    fn a_target_lists_its_sources_and_its_first_failure() {
        let mut results = Results::new("populate");
        results.add_target(&Report {
            target: "h:/var/src".into(),
            address: "deploy@h:2222/var/src".into(),
            elapsed: Duration::from_secs(2),
            error: None,
            steps: vec![
                step(None, StepStatus::Done, None),
                step(
                    Some("a"),
                    StepStatus::Done,
                    Some(Transfer {
                        changes: vec![">f+++++++++ x".into()],
                        bytes_sent: Some(99),
                    }),
                ),
                step(
                    Some("b"),
                    StepStatus::Failed(StepError::message("it broke")),
                    None,
                ),
                step(Some("c"), StepStatus::NotRun, None),
            ],
        });
        let doc = results.to_json(None);
        assert_eq!(doc["ok"], false);
        assert!(doc.get("hosts").is_none());
        let target = &doc["targets"][0];
        assert_eq!(target["error"], "source b (file) → h:/var/src: it broke");
        assert_eq!(target["address"], "deploy@h:2222/var/src");
        let sources = target["sources"].as_array().unwrap();
        assert_eq!(sources.len(), 3, "{doc}");
        assert_eq!(
            sources[0],
            json!({"name": "a", "type": "file", "status": "synced", "seconds": 1.5,
                   "bytesSent": 99, "filesChanged": 1, "changes": [">f+++++++++ x"],
                   "error": null})
        );
        assert_eq!(sources[1]["error"]["message"], "it broke");
        assert_eq!(sources[2]["status"], "not-run");
        assert_eq!(doc["final"], Value::Null);
    }

    #[test]
    fn a_final_command_that_exited_0_can_still_fail_the_run() {
        let mut results = Results::new("krops-deploy");
        let exited_0 = std::process::Command::new("true").status().unwrap();
        results.set_final("nixos-rebuild switch", Some(exited_0), Duration::ZERO);
        assert_eq!(results.to_json(None)["ok"], true);
        results.final_failed("not confirmed: rolled back");
        let doc = results.to_json(None);
        assert_eq!(doc["ok"], false);
        assert_eq!(doc["error"], "not confirmed: rolled back");
        assert_eq!(doc["final"]["ok"], false);
        assert_eq!(doc["final"]["exitCode"], 0);
    }

    #[test]
    fn extra_fields_join_the_document() {
        let mut results = Results::new("krops-deploy");
        results
            .extra
            .insert("preview".into(), json!({"changes": []}));
        let doc = results.to_json(Some(&anyhow::anyhow!("bad input")));
        assert_eq!(doc["preview"], json!({"changes": []}));
        assert_eq!(doc["error"], "bad input");
        assert_eq!(doc["ok"], false);
    }
}
