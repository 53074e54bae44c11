//! File trees synced together. The trees of a run that may share an rsync
//! ([`Joinable`]: directories without filters of their own, of the same
//! options) sync in one: one ssh session, one remote rsync and one login
//! shell on the target for all of them instead of one each, which is what
//! a target with a heavy shell rc file, and a fleet on a few cores, pay
//! for. Each tree keeps its own step: rsync's itemized changes are told
//! apart by the tree's name, the first component of every name `-R` sends.
//! When the shared rsync fails for another reason than the connection,
//! each tree syncs alone, for its own result and error.

use std::io::Write;

use anyhow::{Context, Result};
use mktarget::command::Stdio;
use mktarget::Session;

use crate::progress::Progress;
use crate::report::{is_itemized, StepError, Transfer};
use crate::source::file::{rsync_together, JoinOptions, Joinable};
use crate::step::{step_failure, Lines};

/// What a run syncs at once: one step, or trees synced together.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Unit {
    One(usize),
    Together(Vec<usize>),
}

/// How many trees one rsync syncs at most.
pub(crate) const MAX_TREES: usize = 64;

/// How long the claims of one rsync's trees are at most: its remote shell
/// runs them, and that script is one word of rsync's command line (at
/// most [`mktarget::command::MAX_ARG_BYTES`], the prelude too).
pub(crate) const MAX_CLAIM_BYTES: usize = 64 * 1024;

/// The steps of `queue` as units, in order: the trees that `joinable`
/// says may sync together (their options, and the length of their claim),
/// two or more of the same options, sync in one unit where the first of
/// them is, at most [`MAX_TREES`] and [`MAX_CLAIM_BYTES`] of claims a unit.
pub(crate) fn units(
    queue: &[usize],
    joinable: impl Fn(usize) -> Option<(JoinOptions, usize)>,
) -> Vec<Unit> {
    let mut units: Vec<Unit> = Vec::new();
    // The unit that trees of these options join next, and its claims' length.
    let mut groups: Vec<(JoinOptions, usize, usize)> = Vec::new();
    for &i in queue {
        let Some((options, bytes)) = joinable(i) else {
            units.push(Unit::One(i));
            continue;
        };
        let open = groups.iter_mut().find(|(like, at, sum)| {
            *like == options
                && *sum + bytes <= MAX_CLAIM_BYTES
                && matches!(&units[*at], Unit::Together(members) if members.len() < MAX_TREES)
        });
        match open {
            Some((_, at, sum)) => {
                *sum += bytes;
                if let Unit::Together(members) = &mut units[*at] {
                    members.push(i);
                }
            }
            None => {
                groups.retain(|(like, _, _)| *like != options);
                groups.push((options, units.len(), bytes));
                units.push(Unit::Together(vec![i]));
            }
        }
    }
    for unit in &mut units {
        if let Unit::Together(members) = unit {
            if let [only] = members[..] {
                *unit = Unit::One(only);
            }
        }
    }
    units
}

/// How syncing trees together ended.
pub(crate) enum Synced {
    /// rsync ended well: what it did to each tree, in order, or why that
    /// tree failed all the same (its directory here went away meanwhile).
    Done(Vec<std::result::Result<Transfer, StepError>>),
    /// The connection failed, or a signal came: every tree fails with it.
    Failed(StepError),
    /// rsync failed otherwise, or could not start: each tree syncs alone,
    /// after what the shared rsync did to each, in order.
    Alone(Vec<Transfer>),
}

/// Syncs `trees` (step index, tree; two or more, of the same options)
/// to their places under `p` on `session`'s target in one rsync, each
/// tree's part of its output going to its step in `progress` as it comes.
pub(crate) fn sync(
    session: &Session,
    progress: &Progress,
    p: &str,
    trees: &[(usize, &Joinable)],
) -> Result<Synced> {
    // The names rsync sends are the stage's: a symlink NAME to each tree.
    let stage = tempfile::Builder::new()
        .prefix("krops-together.")
        .tempdir()
        .context("cannot make a directory for the trees' names")?;
    // rsync -R takes the names after the first `/./` of a source: the
    // stage's own path has none once canonical (TMPDIR may be anything).
    let at = std::fs::canonicalize(stage.path())
        .context("cannot find the directory for the trees' names")?;
    for (_, tree) in trees {
        std::os::unix::fs::symlink(&tree.local, at.join(&tree.name))
            .with_context(|| format!("cannot name {} for rsync", tree.local.display()))?;
    }
    let joinables: Vec<&Joinable> = trees.iter().map(|&(_, tree)| tree).collect();
    let cmd = rsync_together(session, &joinables, &at, p);
    let mut dispatch = Dispatch {
        lines: Lines::default(),
        to: Routes {
            progress,
            members: trees
                .iter()
                .map(|(i, tree)| Member {
                    step: *i,
                    name: format!("{}/", tree.name),
                    staged: format!("{}/{}/", at.display(), tree.name),
                    local: format!("{}/", tree.local.display()),
                    there: format!("{p}/{}", tree.name),
                })
                .collect(),
            transfers: vec![Transfer::default(); trees.len()],
            all: format!("populate: the rsync of {} trees together: ", trees.len()),
        },
    };
    let ran = cmd.run(Stdio::tee(&mut dispatch))?;
    dispatch.finish();
    match ran.checked() {
        Ok(_) => {
            // A tree that is gone was not sent (see `rsync_together`).
            let results = trees
                .iter()
                .zip(dispatch.to.transfers)
                .map(|((_, tree), transfer)| {
                    if tree.local.is_dir() {
                        Ok(transfer)
                    } else {
                        Err(StepError::message(format!(
                            "{} is no longer a directory here (it went away while populate \
                             ran); nothing of it was synced",
                            tree.local.display()
                        )))
                    }
                })
                .collect();
            Ok(Synced::Done(results))
        }
        Err(failed)
            if mktarget::interrupt::interrupted()
                || session.connection_failure(&failed).is_some() =>
        {
            Ok(Synced::Failed(step_failure(session, &failed)))
        }
        Err(failed) => {
            let note = format!(
                "populate: the rsync of {} trees together failed ({}); each syncs alone now\n",
                trees.len(),
                mktarget::command::describe(failed.status)
            );
            for (i, _) in trees {
                progress.output(*i, note.as_bytes());
            }
            Ok(Synced::Alone(dispatch.to.transfers))
        }
    }
}

/// A tree of the shared rsync, as its output names it.
struct Member {
    /// Its step.
    step: usize,
    /// `NAME/`: how its files' names begin.
    name: String,
    /// `STAGE/NAME/`: how rsync's messages name it here...
    staged: String,
    /// ... and how an rsync of it alone would: its path here, with `/`.
    local: String,
    /// `P/NAME`: how messages name its place on the target.
    there: String,
}

impl Member {
    /// Whether `text` names the tree's place on the target: `P/NAME`,
    /// then the end, `/`, or what ends a name in a message.
    fn named_there(&self, text: &str) -> bool {
        text.match_indices(self.there.as_str()).any(|(at, found)| {
            text[at + found.len()..]
                .chars()
                .next()
                .is_none_or(|c| "/ :,;)'\"".contains(c))
        })
    }
}

/// Passes the shared rsync's output on, line by line: an itemized change
/// to its tree's step, without the tree's name (`>f+++++++++ NAME/a.nix`
/// as `>f+++++++++ a.nix`, the tree itself as `./`, as an rsync of the
/// tree alone says it); a message naming a file of a tree here (by its
/// path here) or its place on the target to its step; rsync's first line
/// to every step; anything else (its totals) to the first, said to be of
/// all.
struct Dispatch<'a> {
    lines: Lines,
    to: Routes<'a>,
}

/// Where [`Dispatch`] sends each line.
struct Routes<'a> {
    progress: &'a Progress,
    members: Vec<Member>,
    transfers: Vec<Transfer>,
    /// What a line of all the trees' starts with.
    all: String,
}

impl Routes<'_> {
    fn route(&mut self, line: &[u8]) {
        let text = String::from_utf8_lossy(line);
        if is_itemized(&text) {
            let (code, name) = text.split_at(12);
            let member = self
                .members
                .iter()
                .position(|member| name.starts_with(member.name.as_str()));
            if let Some(k) = member {
                let rest = &name[self.members[k].name.len()..];
                let line = format!("{code}{}", if rest.is_empty() { "./" } else { rest });
                self.transfers[k].read_line(&line);
                self.progress
                    .output(self.members[k].step, format!("{line}\n").as_bytes());
                return;
            }
        }
        let named = self
            .members
            .iter()
            .find(|member| text.contains(member.staged.as_str()));
        if let Some(member) = named {
            let line = format!("{}\n", text.replace(&member.staged, &member.local));
            self.progress.output(member.step, line.as_bytes());
            return;
        }
        if let Some(member) = self.members.iter().find(|member| member.named_there(&text)) {
            self.progress
                .output(member.step, format!("{text}\n").as_bytes());
            return;
        }
        if text == "sending incremental file list" {
            for member in &self.members {
                self.progress
                    .output(member.step, format!("{text}\n").as_bytes());
            }
        } else if text.trim().is_empty() {
            self.progress.output(self.members[0].step, b"\n");
        } else {
            let line = format!("{}{text}\n", self.all);
            self.progress.output(self.members[0].step, line.as_bytes());
        }
    }
}

impl Dispatch<'_> {
    /// Passes on what is left of an unfinished last line.
    fn finish(&mut self) {
        let rest = self.lines.rest();
        if !rest.is_empty() {
            self.to.route(&rest);
        }
    }
}

impl Write for Dispatch<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let to = &mut self.to;
        self.lines.feed(buf, |line| to.route(line));
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(use_checksum: bool) -> Option<(JoinOptions, usize)> {
        Some((
            JoinOptions {
                use_checksum,
                delete_excluded: true,
            },
            100,
        ))
    }

    #[test]
    fn trees_of_the_same_options_make_one_unit_where_the_first_is() {
        // 0, 2, 5 joinable alike; 3 joinable otherwise (alone: one of its
        // kind); 1 and 4 not joinable.
        let joinable = |i: usize| match i {
            0 | 2 | 5 => options(false),
            3 => options(true),
            _ => None,
        };
        assert_eq!(
            units(&[0, 1, 2, 3, 4, 5], joinable),
            [
                Unit::Together(vec![0, 2, 5]),
                Unit::One(1),
                Unit::One(3),
                Unit::One(4)
            ]
        );
        assert_eq!(units(&[1, 4], joinable), [Unit::One(1), Unit::One(4)]);
        assert_eq!(units(&[], joinable), []);
        // Many trees: as many units as it takes, each at most MAX_TREES.
        let many: Vec<usize> = (0..2 * MAX_TREES + 1).collect();
        let sizes: Vec<usize> = units(&many, |_| options(false))
            .iter()
            .map(|unit| match unit {
                Unit::Together(members) => members.len(),
                Unit::One(_) => 1,
            })
            .collect();
        assert_eq!(sizes, [MAX_TREES, MAX_TREES, 1]);
        // Long claims: as many as fit MAX_CLAIM_BYTES.
        let long = |_: usize| options(false).map(|(options, _)| (options, MAX_CLAIM_BYTES / 3));
        let sizes: Vec<usize> = units(&[0, 1, 2, 3, 4, 5, 6], long)
            .iter()
            .map(|unit| match unit {
                Unit::Together(members) => members.len(),
                Unit::One(_) => 1,
            })
            .collect();
        assert_eq!(sizes, [3, 3, 1]);
    }
}
