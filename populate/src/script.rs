//! The scripts populate runs on a target: what every one starts with
//! ([`PRELUDE`]), the shell functions they call, each a `.sh` file, and how
//! a step's script and a batch of them are put together ([`Script`],
//! [`batch`]).
//!
//! Scripts run with `set -efu`. A command whose failure ends the step is
//! written `run CMD…`: when it fails, `run` prints one line naming it and its
//! status, which the step's error then quotes (instead of the whole script),
//! and exits with that status. `failed STATUS COMMAND` does the same for a
//! command whose status the script looked at itself.

use mktarget::shell::quote;

/// The prelude of every populate script (`scripts/prelude.sh`): `set -efu`,
/// `run` (see above) and `claim KIND P SHOWN`, which removes, without
/// following links, whatever stands at P that a source of KIND (`dir` for a
/// checkout, `tree` for what rsync syncs, `file`, `link`, `outlink`) does
/// not make, and says so: rsync, git and `cat` would otherwise write
/// through a symlink to outside the target path. An `outlink` is a
/// derivation's out link, which nix-build replaces only when it points into
/// the store.
///
/// A directory that belongs to another user than the one populate writes
/// as is replaced too: rsync keeps a directory's owner, who could then swap
/// the files in it (a secret, the configuration root builds), and git
/// refuses such a checkout. In a `tree` it keeps, a read-only file with a
/// second link is removed when populate is not root: rsync would make it
/// writable before deleting it, changing the mode of that file wherever
/// else it is. (A checkout's objects may be such links, to the repository
/// a local URL names: git deletes nothing that way.)
pub const PRELUDE: &str = include_str!("scripts/prelude.sh");

/// A shell function that a script run on the target calls: the file that
/// defines it (loaded with `include_str!`, read by `shellcheck` in
/// `.ci/run`), and its name. A function takes every value as a positional
/// parameter; the Rust side only writes call lines ([`Script`]).
#[derive(Debug)]
pub(crate) struct Function {
    pub(crate) name: &'static str,
    pub(crate) text: &'static str,
}

/// `krops_step INDEX COMMAND…`, which a batch ([`batch`]) runs each step
/// through.
pub(crate) static STEP: Function = Function {
    name: "krops_step",
    text: include_str!("scripts/step.sh"),
};

/// What a step runs on the target after [`PRELUDE`]: the functions it
/// calls, each defined once, and its call lines, each word quoted with the
/// project's one quoting function.
#[derive(Clone, Debug, Default)]
pub(crate) struct Script {
    functions: Vec<&'static Function>,
    calls: Vec<String>,
    /// How a batch runs this call together with its neighbours', if it
    /// may ([`batch`]).
    together: Option<Together>,
}

/// A call a batch runs together with the like calls next to it, through
/// one call of `function`, which takes every one's first argument, one a
/// line, then, for each of them in order, its first argument, its step's
/// INDEX, then its other arguments, and prints each step's marker itself
/// (as `krops_step` does).
#[derive(Clone, Debug)]
struct Together {
    function: &'static Function,
    args: Vec<String>,
}

impl Script {
    /// A call of `function` with `args`.
    pub(crate) fn call(function: &'static Function, args: &[&str]) -> Script {
        debug_assert!(
            function
                .text
                .contains(&format!("\n{}() {{\n", function.name)),
            "{} is not what its file defines",
            function.name
        );
        Script {
            functions: vec![function],
            calls: vec![call_line(function.name, args)],
            together: None,
        }
    }

    /// A call of `function` with `args` (at least one), which a batch
    /// runs together with the like calls next to it through `together`
    /// (see [`Together`]).
    pub(crate) fn call_together(
        function: &'static Function,
        together: &'static Function,
        args: &[&str],
    ) -> Script {
        debug_assert!(!args.is_empty());
        Script {
            together: Some(Together {
                function: together,
                args: args.iter().map(|&arg| arg.to_owned()).collect(),
            }),
            ..Script::call(function, args)
        }
    }

    /// A call of a command the prelude defines (`claim`, `run`) or the
    /// target has.
    pub(crate) fn command(name: &str, args: &[&str]) -> Script {
        Script {
            functions: Vec::new(),
            calls: vec![call_line(name, args)],
            together: None,
        }
    }

    /// This script, then `next`.
    pub(crate) fn then(mut self, next: Script) -> Script {
        for function in next.functions {
            self.add(function);
        }
        self.calls.extend(next.calls);
        self.together = None;
        self
    }

    fn add(&mut self, function: &'static Function) {
        if !self.functions.iter().any(|f| f.name == function.name) {
            self.functions.push(function);
        }
    }

    /// The definitions, then the calls: what runs after [`PRELUDE`].
    pub(crate) fn text(&self) -> String {
        let mut text: String = self.functions.iter().map(|f| f.text).collect();
        for call in &self.calls {
            text.push_str(call);
            text.push('\n');
        }
        text
    }

    /// [`PRELUDE`], then [`Script::text`]: what a step runs on its own.
    pub(crate) fn whole(&self) -> String {
        format!("{PRELUDE}{}", self.text())
    }

    /// How many bytes [`batch`] adds to a batch for this part: its call,
    /// through `krops_step`, and the functions it needs that are not in
    /// `defined` yet (which it then adds).
    pub(crate) fn batch_size(&self, defined: &mut Vec<&'static str>) -> usize {
        let mut size = 0;
        let together = self.together.as_ref().map(|together| together.function);
        for function in self.functions.iter().chain(&together) {
            if !defined.contains(&function.name) {
                defined.push(function.name);
                size += function.text.len();
            }
        }
        if let Some(together) = &self.together {
            size += quote(&together.args[0]).len() + 1;
        }
        size + self.calls.iter().map(|call| call.len() + 32).sum::<usize>()
    }
}

/// `NAME ARG…`, each argument quoted.
fn call_line(name: &str, args: &[&str]) -> String {
    let mut line = name.to_owned();
    for arg in args {
        line.push(' ');
        line.push_str(&quote(arg));
    }
    line
}

/// One remote run of several steps' parts (INDEX, its script):
/// the prelude, `krops_step` and every function once, then each part's call
/// through `krops_step INDEX`, which runs them in a subshell with `set -e`, prints
/// `\x1ekrops-step INDEX STATUS` after them, and ends the batch after a part
/// that failed. Parts next to each other that may run together (symlinks:
/// [`Script::call_together`]) are one call of their together function.
pub(crate) fn batch(parts: &[(usize, &Script)]) -> String {
    let mut all = Script {
        functions: vec![&STEP],
        ..Script::default()
    };
    let mut k = 0;
    while k < parts.len() {
        let (i, part) = parts[k];
        // A part of several calls (a claim, then the checkout) runs them
        // all in its step, as a script of its own would.
        let call = match part.calls.as_slice() {
            [call] => call.clone(),
            calls => format!("eval {}", quote(&calls.join("\n"))),
        };
        k += 1;
        let Some(together) = &part.together else {
            all = all.then(Script {
                functions: part.functions.clone(),
                calls: vec![format!("{} {i} {call}", STEP.name)],
                together: None,
            });
            continue;
        };
        let mut functions = part.functions.clone();
        functions.push(together.function);
        let mut firsts = together.args[0].clone();
        let mut line = String::new();
        let mut add = |i: usize, args: &[String]| {
            let index = i.to_string();
            let words = std::iter::once(&args[0])
                .chain(std::iter::once(&index))
                .chain(&args[1..]);
            for word in words {
                line.push(' ');
                line.push_str(&quote(word));
            }
        };
        add(i, &together.args);
        while let Some((j, next)) = parts.get(k) {
            match &next.together {
                Some(like) if std::ptr::eq(like.function, together.function) => {
                    firsts.push('\n');
                    firsts.push_str(&like.args[0]);
                    add(*j, &like.args);
                    k += 1;
                }
                _ => break,
            }
        }
        all = all.then(Script {
            functions,
            calls: vec![format!(
                "{} {}{line}",
                together.function.name,
                quote(&firsts)
            )],
            together: None,
        });
    }
    all.whole()
}

/// The line [`PRELUDE`]'s `run` prints for a failed command.
pub const FAILED_MARKER: &str = "populate: failed: ";

/// The command a script's output names as the one that failed, if any: what
/// `run` printed last, without its status (all of it: a derivation's
/// expression spans lines).
pub fn failed_command(output: &str) -> Option<&str> {
    let start = output
        .match_indices(FAILED_MARKER)
        .map(|(at, _)| at)
        .filter(|&at| at == 0 || output[..at].ends_with('\n'))
        .last()?;
    let line = output[start + FAILED_MARKER.len()..].trim_end();
    Some(match line.rfind(" (exit status ") {
        Some(end) => &line[..end],
        None => line,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> (i32, String) {
        let out = std::process::Command::new("/bin/sh")
            .args(["-c", &format!("{PRELUDE}{script}")])
            .output()
            .unwrap();
        (
            out.status.code().unwrap(),
            String::from_utf8(out.stderr).unwrap(),
        )
    }

    #[test]
    fn run_names_the_failed_command_and_keeps_its_status() {
        let (status, stderr) = sh("run true\nrun sh -c 'exit 7'\necho not reached >&2\n");
        assert_eq!(status, 7);
        assert_eq!(failed_command(&stderr), Some("sh -c exit 7"), "{stderr}");
        assert!(!stderr.contains("not reached"));
    }

    #[test]
    fn run_changes_the_shell_it_runs_in() {
        let (status, stderr) = sh("run cd /\npwd >&2\n");
        assert_eq!((status, stderr.as_str()), (0, "/\n"));
    }

    #[test]
    fn a_command_over_several_lines_is_named_whole() {
        let (status, stderr) = sh("run sh -c 'exit 3\n# second line\n'\n");
        assert_eq!(status, 3);
        assert_eq!(
            failed_command(&stderr),
            Some("sh -c exit 3\n# second line\n"),
            "{stderr}"
        );
    }

    #[test]
    fn a_directory_of_another_user_is_replaced_and_one_s_own_kept() {
        let dir = tempfile::tempdir().unwrap();
        let own = dir.path().join("own");
        let foreign = dir.path().join("foreign");
        for d in [&own, &foreign] {
            std::fs::create_dir(d).unwrap();
            std::fs::write(d.join("old"), "old\n").unwrap();
        }
        if std::os::unix::fs::chown(&foreign, Some(65534), Some(65534)).is_err() {
            // Not root: no directory of another user can be made here;
            // the end-to-end tests run as root.
            return;
        }
        let claim = |p: &std::path::Path| {
            let p = p.to_str().unwrap();
            sh(&format!("claim dir '{p}' '{p}'\n"))
        };
        assert_eq!(claim(&own), (0, String::new()));
        assert!(own.join("old").exists());
        let (status, stderr) = claim(&foreign);
        assert_eq!(status, 0, "{stderr}");
        assert!(stderr.contains("it belongs to another user"), "{stderr}");
        assert!(!foreign.exists());
    }

    #[test]
    fn no_marker_no_command() {
        assert_eq!(failed_command("fatal: something\n"), None);
    }
}
