//! Keys in a driver's run (README: Keys): `--keys FILE`, and the stages
//! that send them: the pre-activation keys (and the keys directories set
//! up) before the final command, the post-activation ones (and the chown of
//! keys whose user the activation made) only after it succeeded, or all of
//! them at once (`krops-deploy --keys-only`, and after a reboot:
//! [`send_all`]).

use std::cell::RefCell;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use mktarget::tool::usage;
use mktarget::Session;
use populate::keys::{self, Batch, Delivered, Keys, Outcome, UploadAt};
use populate::{Results, Style};

use crate::fleet::{Setting, SettingKind};
use crate::{Flow, Reporting, Stage};

/// The fleet setting and writer attribute `keys` of both drivers: the keys
/// object, which the host's run reads with `--keys FILE`.
pub const SETTING: Setting = Setting {
    key: "keys",
    option: "--keys",
    kind: SettingKind::JsonFile(check),
    unless: &[],
};

/// A fleet host's `keys`, checked as `--keys` checks its file.
fn check(value: &serde_json::Value) -> Result<()> {
    let home = std::env::var("HOME").ok().filter(|home| !home.is_empty());
    keys::from_json(value, home.as_deref()).map(|_| ())
}

/// `--keys FILE`, which both drivers take.
#[derive(Debug, Default, clap::Args)]
pub struct KeysArgs {
    /// Also deliver these keys (a JSON object of key name → its content source and place; README: Keys) to tmpfs on the target, each with its owner and mode
    #[arg(long, value_name = "FILE")]
    pub keys: Option<PathBuf>,
}

impl KeysArgs {
    /// The keys `--keys` names, checked, with what they need here; none
    /// without `--keys`. A bad file is a mistake on the command line (exit 2).
    /// `target` is the target path, which no key may go into; with
    /// `sources_on_stdin`, stdin is the sources', not the keys'.
    pub fn read(&self, target: &str, sources_on_stdin: bool) -> Result<Keys> {
        let Some(file) = &self.keys else {
            return Ok(Keys::default());
        };
        let stdin = ["/dev/stdin", "/dev/fd/0", "/proc/self/fd/0"];
        if sources_on_stdin && stdin.iter().any(|name| file.as_os_str() == *name) {
            return Err(usage(format!(
                "--keys {}: stdin carries the sources; give them with --sources FILE",
                file.display()
            )));
        }
        let home = std::env::var("HOME").ok().filter(|home| !home.is_empty());
        let keys = keys::read(file, home.as_deref())
            .and_then(|keys| keys.check_here().map(|()| keys))
            .and_then(|keys| keys.check_outside(target).map(|()| keys))
            .map_err(|err| usage(format!("{err:#}")))?;
        Ok(keys)
    }
}

/// The keys of one target's run, and what was done with them so far.
pub struct Delivery {
    session: Arc<Session>,
    keys: Keys,
    done: RefCell<Vec<Delivered>>,
}

impl Delivery {
    pub fn new(session: &Arc<Session>, keys: Keys) -> Rc<Delivery> {
        Rc::new(Delivery {
            session: Arc::clone(session),
            keys,
            done: RefCell::new(Vec::new()),
        })
    }

    /// Keys whose user or group did not exist when they were sent.
    fn pending(&self) -> Vec<String> {
        let done = self.done.borrow();
        let mut pending: Vec<String> = Vec::new();
        for d in done.iter() {
            if let Some(key) = &d.key {
                pending.retain(|k| k != key);
                if d.outcome == Outcome::Pending {
                    pending.push(key.clone());
                }
            }
        }
        pending
    }

    fn send(&self, what: &str, send: &Batch, reporting: &mut Reporting) -> Result<()> {
        let done = run_send(&self.session, what, send, reporting)?;
        self.done.borrow_mut().extend(done);
        record(&self.done.borrow(), reporting.results);
        Ok(())
    }
}

/// Sends `send` to `session`'s target, says so in the log (each key's
/// outcome a line) and returns what the target did.
fn run_send(
    session: &Session,
    what: &str,
    send: &Batch,
    reporting: &mut Reporting,
) -> Result<Vec<Delivered>> {
    session.connect().with_context(|| what.to_owned())?;
    mktarget::interrupt::doing(what);
    populate::final_started(reporting.style, reporting.tool, what);
    let began = Instant::now();
    let mut log = Vec::new();
    let done = send.run(session, &mut log);
    if !reporting.style.quiet() || done.is_err() {
        let _ = std::io::Write::write_all(&mut std::io::stderr(), &log);
    }
    let done = done.with_context(|| what.to_owned())?;
    if !reporting.style.quiet() {
        for d in &done {
            eprintln!("{}: {d}", reporting.tool);
        }
    }
    populate::final_ended(reporting.style, reporting.tool, what, None, began.elapsed());
    Ok(done)
}

/// The results' `keys`: what every send of the run did.
fn record(done: &[Delivered], results: &mut Results) {
    results.extra.insert("keys".to_owned(), keys::to_json(done));
}

/// The stage before the final command: the keys directories set up and
/// the pre-activation keys sent; a key whose user does not exist yet is
/// installed root-owned, to be chowned by [`after`].
pub fn before(delivery: &Rc<Delivery>) -> Stage {
    let what = format!(
        "sending the pre-activation keys to {}",
        delivery.session.machine()
    );
    let script = pre_activation(delivery).script_text(&delivery.session);
    let delivery = Rc::clone(delivery);
    let shown = what.clone();
    Stage::here_shown_as(script, move |reporting, _| {
        delivery.send(&what, &pre_activation(&delivery), reporting)?;
        Ok(Flow::Next)
    })
    .shown(shown)
}

/// What [`before`] sends: the keys directories, and the pre-activation
/// keys, none strict (their users may come with the activation).
fn pre_activation(delivery: &Delivery) -> Batch<'_> {
    Batch {
        keys: &delivery.keys,
        sent: delivery.keys.at(UploadAt::PreActivation),
        strict: false,
        dirs: true,
    }
}

/// The stage after a successful final command: the post-activation keys,
/// and again the keys [`before`] left root-owned, now with their user and
/// group (one that still does not exist is an error naming the key).
pub fn after(delivery: &Rc<Delivery>) -> Stage {
    let send = Batch {
        keys: &delivery.keys,
        sent: delivery.keys.at(UploadAt::PostActivation),
        strict: true,
        dirs: false,
    };
    let what = format!(
        "sending the post-activation keys to {} (and chowning the keys whose user or group \
         the activation made)",
        delivery.session.machine()
    );
    let script = send.script_text(&delivery.session);
    let delivery = Rc::clone(delivery);
    let shown = format!("{what}, only when it succeeded");
    Stage::here_shown_as(script, move |reporting, status| {
        if status.is_some_and(|status| !status.success()) {
            return Ok(Flow::Next);
        }
        let pending = delivery.pending();
        let sent: Vec<_> = delivery
            .keys
            .keys
            .iter()
            .filter(|k| k.upload_at == UploadAt::PostActivation || pending.contains(&k.name))
            .collect();
        if sent.is_empty() {
            return Ok(Flow::Next);
        }
        let machine = delivery.session.machine();
        let what = if pending.is_empty() {
            format!("sending the post-activation keys to {machine}")
        } else if delivery.keys.at(UploadAt::PostActivation).is_empty() {
            format!("chowning the keys whose user or group the activation made on {machine}")
        } else {
            what
        };
        let send = Batch {
            keys: &delivery.keys,
            sent,
            strict: true,
            dirs: false,
        };
        delivery.send(&what, &send, reporting)?;
        Ok(Flow::Next)
    })
    .shown(shown)
}

/// The stages a deploy's keys add around its `stages` (the final commands):
/// [`before`] first, [`after`] last; none without keys.
pub fn around(delivery: Option<&Rc<Delivery>>, stages: Vec<Stage>) -> Vec<Stage> {
    let Some(delivery) = delivery.filter(|d| !d.keys.is_empty()) else {
        return stages;
    };
    let mut all = vec![before(delivery)];
    all.extend(stages);
    all.push(after(delivery));
    all
}

/// The one stage of `--keys-only`: every key sent now, whenever it is
/// uploaded otherwise (there is no activation); a missing user is an error.
pub fn only(delivery: &Rc<Delivery>) -> Stage {
    let what = format!("sending the keys to {}", delivery.session.machine());
    let script = all(&delivery.keys).script_text(&delivery.session);
    let delivery = Rc::clone(delivery);
    let shown = what.clone();
    Stage::here_shown_as(script, move |reporting, _| {
        delivery.send(&what, &all(&delivery.keys), reporting)?;
        Ok(Flow::Next)
    })
    .shown(shown)
}

fn all(keys: &Keys) -> Batch<'_> {
    Batch {
        keys,
        sent: keys.keys.iter().collect(),
        strict: true,
        dirs: true,
    }
}

/// Sends every key of `keys` to `session`'s target at once, as
/// `--keys-only` does: what a machine needs after a reboot emptied its
/// tmpfs (the post-activation keys included: the system is active). Logs
/// as `style` says and records each key's outcome in `results` (`keys`).
pub fn send_all(
    tool: &'static str,
    session: &Arc<Session>,
    keys: &Keys,
    style: Style,
    results: &mut Results,
) -> Result<Vec<Delivered>> {
    let mut reporting = Reporting {
        tool,
        style,
        results_on_stdout: false,
        results,
        locked: false,
    };
    let what = format!("sending the keys to {}", session.machine());
    let done = run_send(session, &what, &all(keys), &mut reporting)?;
    record(&done, reporting.results);
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mktarget::testing::{session, target};

    #[test]
    fn a_dry_run_shows_the_send_without_content() {
        let session = Arc::new(session(&target("root@t/var/src")));
        let keys = keys::from_json(
            &serde_json::json!({
                "db": {"pass": {"dir": "/p", "name": "hosts/t/db"}, "user": "postgres"},
                "tls": {"keyFile": "/secret/tls.key", "uploadAt": "post-activation"},
            }),
            None,
        )
        .unwrap();
        let delivery = Delivery::new(&session, keys);
        let stages = crate::Stages::new(Vec::new(), around(Some(&delivery), Vec::new()));
        let script = stages.script().unwrap();
        assert!(
            script.contains("# then sending the pre-activation keys to root@t"),
            "{script}"
        );
        assert!(
            script.contains("pass show hosts/t/db > \"$tmp_dir\"/0"),
            "{script}"
        );
        assert!(
            script.contains("cat /secret/tls.key > \"$tmp_dir\"/0"),
            "{script}"
        );
        assert!(script.contains("krops_keys()"), "{script}");
        let out = std::process::Command::new("sh")
            .args(["-n", "-c", &script])
            .output()
            .unwrap();
        assert!(out.status.success(), "{script}");
    }
}
