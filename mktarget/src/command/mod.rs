//! An external command as a value: program, argv, env, working directory and
//! stdin. It prints itself as a quoted shell line (what `--dry-run` and the
//! log show) and becomes a `duct` expression only when it runs, in one of
//! two ways: [`Cmd::run`] to its end, or [`Cmd::spawn`] in the background,
//! its streams going where a [`Stdio`] says. A failure is a
//! [`ProcessError`]: the command line, how it ended, the end of its output.

mod error;
mod run;
mod stdio;

use std::fmt;

use crate::shell::quote;

pub use error::{describe, exit_code, ProcessError, Program};
pub use run::{Child, Finished};
pub use stdio::{Out, Stdio};

/// The longest single argument Linux passes to a program
/// (`MAX_ARG_STRLEN`, 32 pages, the terminating NUL byte included). A
/// script for the target is one argument of `sh -c` there, of the login
/// shell sshd starts.
pub const MAX_ARG_BYTES: usize = 128 * 1024 - 1;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cmd {
    program: String,
    args: Vec<String>,
    env: Vec<(String, String)>,
    dir: Option<String>,
    stdin: Stdin,
    foreground: bool,
    /// `setpriv`, which starts the program for [`Cmd::die_with_us`].
    die_with_us: Option<String>,
    /// A sudo password the command reads first (see [`Cmd::first_line`]).
    first_line: Option<FirstLine>,
}

/// A password line a command reads before its own input: on stdin, or on
/// fd 3 (rsync's remote shell finds it there).
#[derive(Clone, Debug, PartialEq, Eq)]
struct FirstLine {
    password: crate::sudo::SudoPassword,
    on_fd3: bool,
}

/// Runs its arguments with stdin, the password line, moved to fd 3.
const ON_FD3: &str = "exec 3<&0 </dev/null; exec \"$@\"";

/// Writes its stdin (the password line), then runs its arguments: the
/// line goes before what they print.
const LINE_FIRST: &str = "cat && exec \"$@\"";

/// Where a command's stdin comes from: part of the command, as its shell
/// line shows a pipe. Children never inherit ours unless asked to: the
/// tools read their own input from stdin. (A pipe of ours instead, to
/// talk to a helper, is [`Stdio::piped`].)
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stdin {
    Null,
    Inherit,
    /// The stdout of another command, as in `SOURCE | THIS`.
    Pipe(Box<Cmd>),
}

impl Cmd {
    pub fn new(program: impl Into<String>) -> Cmd {
        Cmd {
            program: program.into(),
            args: Vec::new(),
            env: Vec::new(),
            dir: None,
            stdin: Stdin::Null,
            foreground: false,
            die_with_us: None,
            first_line: None,
        }
    }

    /// The command whose argv (program first) is `argv`.
    pub fn from_argv(argv: impl IntoIterator<Item = String>) -> Cmd {
        let mut argv = argv.into_iter();
        Cmd::new(argv.next().unwrap_or_default()).args(argv)
    }

    pub fn arg(mut self, arg: impl Into<String>) -> Cmd {
        self.args.push(arg.into());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Cmd
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    pub fn env(mut self, name: impl Into<String>, value: impl Into<String>) -> Cmd {
        self.env.push((name.into(), value.into()));
        self
    }

    pub fn dir(mut self, dir: impl Into<String>) -> Cmd {
        self.dir = Some(dir.into());
        self
    }

    /// Keeps it in our process group though its stdin is not ours, so it
    /// can prompt on our terminal (see [`interrupt`](crate::interrupt)).
    pub fn foreground(mut self) -> Cmd {
        self.foreground = true;
        self
    }

    /// Has the kernel send it SIGTERM when we die, even by SIGKILL, when
    /// no handler of ours can stop it (Linux's parent-death signal, set by
    /// util-linux's `setpriv --pdeathsig`, when there is one on PATH): for
    /// a helper that would otherwise run on without us, like the shared ssh
    /// connection's master. The signal comes when the thread that started
    /// the command ends, so only a command started on the main thread gets
    /// it; one started on another thread, or where there is no `setpriv`
    /// (not Linux), runs as without.
    pub fn die_with_us(mut self) -> Cmd {
        if std::thread::current().name() == Some("main") {
            self.die_with_us = find_on_path("setpriv");
        }
        self
    }

    pub fn stdin_inherit(mut self) -> Cmd {
        self.stdin = Stdin::Inherit;
        self
    }

    /// Feeds `source`'s stdout into this command: `SOURCE | THIS`.
    pub fn pipe_from(mut self, source: Cmd) -> Cmd {
        self.stdin = Stdin::Pipe(Box::new(source));
        self
    }

    /// Gives the command `password` and a newline as the first line of its
    /// stdin, before its input (none, [`Cmd::pipe_from`]'s source's
    /// output, or with [`Cmd::stdin_inherit`] ours).
    pub fn first_line(mut self, password: crate::sudo::SudoPassword) -> Cmd {
        self.first_line = Some(FirstLine {
            password,
            on_fd3: false,
        });
        self
    }

    /// Gives the command `password` and a newline on its fd 3, its stdin
    /// being /dev/null.
    pub fn first_line_on_fd3(mut self, password: crate::sudo::SudoPassword) -> Cmd {
        self.first_line = Some(FirstLine {
            password,
            on_fd3: true,
        });
        self
    }

    /// This command started by `wrapper`, a program and its arguments that
    /// runs the rest of its argv: `WRAPPER... PROGRAM ARGS...`, with the
    /// same environment, directory and stdin.
    pub fn under(self, wrapper: &[String]) -> Cmd {
        let Some((program, first)) = wrapper.split_first() else {
            return self;
        };
        let args = first
            .iter()
            .cloned()
            .chain(std::iter::once(self.program))
            .chain(self.args)
            .collect();
        Cmd {
            program: program.clone(),
            args,
            ..self
        }
    }

    pub fn program(&self) -> &str {
        &self.program
    }

    /// The length of its longest word (the program, an argument, an
    /// environment entry), and of its input command's when it has one:
    /// beyond [`MAX_ARG_BYTES`] it cannot start.
    pub fn longest_word(&self) -> usize {
        let words = std::iter::once(self.program.len())
            .chain(self.args.iter().map(String::len))
            .chain(
                self.env
                    .iter()
                    .map(|(name, value)| name.len() + 1 + value.len()),
            );
        let source = match &self.stdin {
            Stdin::Pipe(source) => source.longest_word(),
            _ => 0,
        };
        words.max().unwrap_or(0).max(source)
    }

    /// The program followed by its arguments.
    pub fn argv(&self) -> Vec<String> {
        std::iter::once(self.program.clone())
            .chain(self.args.iter().cloned())
            .collect()
    }

    /// Whether the command runs in process groups of its own (see
    /// [`interrupt`](crate::interrupt)): all but those that share our terminal, which must
    /// stay in the foreground group to read it.
    fn own_group(&self) -> bool {
        if self.foreground {
            return false;
        }
        match &self.stdin {
            Stdin::Null => true,
            Stdin::Inherit => false,
            Stdin::Pipe(source) => source.own_group(),
        }
    }

    fn expression(&self, own_group: bool) -> duct::Expression {
        let expr = self.expression_inner();
        if own_group {
            expr.before_spawn(|command| {
                std::os::unix::process::CommandExt::process_group(command, 0);
                Ok(())
            })
        } else {
            expr
        }
    }

    fn expression_inner(&self) -> duct::Expression {
        let mut argv: Vec<&str> = std::iter::once(self.program.as_str())
            .chain(self.args.iter().map(String::as_str))
            .collect();
        if self.first_line.as_ref().is_some_and(|line| line.on_fd3) {
            argv.splice(0..0, ["/bin/sh", "-c", ON_FD3, "krops-fd3"]);
        }
        if let Some(setpriv) = &self.die_with_us {
            argv.splice(0..0, [setpriv.as_str(), "--pdeathsig", "TERM", "--"]);
        }
        let mut expr = duct::cmd(argv[0], &argv[1..]);
        for (name, value) in &self.env {
            expr = expr.env(name, value);
        }
        if let Some(dir) = &self.dir {
            expr = expr.dir(dir);
        }
        let line = self.first_line.as_ref().map(|first| first.password.line());
        match (&self.stdin, line) {
            (Stdin::Null, None) => expr.stdin_null(),
            (Stdin::Null, Some(line)) => expr.stdin_bytes(line),
            (Stdin::Inherit, None) => expr,
            (Stdin::Inherit, Some(line)) => match os_pipe::pipe() {
                // The line, then our stdin as it comes, copied by a
                // thread that ends with our stdin.
                Ok((reader, mut writer)) => {
                    std::thread::spawn(move || {
                        use std::io::Write;
                        if writer.write_all(&line).is_ok() {
                            let _ = std::io::copy(&mut std::io::stdin().lock(), &mut writer);
                        }
                    });
                    expr.stdin_file(reader)
                }
                Err(_) => expr.stdin_bytes(line),
            },
            (Stdin::Pipe(source), None) => source.expression_inner().pipe(expr),
            (Stdin::Pipe(source), Some(line)) => {
                let wrapper = ["/bin/sh", "-c", LINE_FIRST, "krops-line"].map(str::to_owned);
                let mut source = source.as_ref().clone().under(&wrapper);
                // duct's innermost redirection wins: none there.
                source.stdin = Stdin::Inherit;
                source.expression_inner().stdin_bytes(line).pipe(expr)
            }
        }
    }

    /// The command line, cut short for error messages (a populate step's
    /// script can be dozens of lines).
    pub fn brief(&self) -> String {
        let line = self.to_string();
        const MAX: usize = 400;
        match line.char_indices().nth(MAX) {
            Some((cut, _)) => format!("{}…", &line[..cut]),
            None => line,
        }
    }
}

impl fmt::Display for Cmd {
    /// One POSIX sh line that runs this command.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `sudo_password` stands for what prints the password's line.
        let line = self.first_line.as_ref();
        let on_fd3 = line.is_some_and(|line| line.on_fd3);
        match (&self.stdin, line) {
            (Stdin::Pipe(source), Some(_)) => write!(f, "{{ sudo_password; {source}; }} | ")?,
            (Stdin::Pipe(source), None) => write!(f, "{source} | ")?,
            (Stdin::Null, Some(_)) => f.write_str("sudo_password | ")?,
            (Stdin::Inherit, Some(_)) => f.write_str("{ sudo_password; cat; } | ")?,
            _ => {}
        }
        if on_fd3 {
            f.write_str("{ ")?;
        }
        if let Some(dir) = &self.dir {
            write!(f, "(cd {} && ", quote(dir))?;
        }
        for (name, value) in &self.env {
            write!(f, "{name}={} ", quote(value))?;
        }
        // A first word with `=` would read as an assignment.
        if self.program.contains('=') {
            write!(f, "'{}'", self.program.replace('\'', "'\\''"))?;
        } else {
            f.write_str(&quote(&self.program))?;
        }
        for arg in &self.args {
            write!(f, " {}", quote(arg))?;
        }
        if self.dir.is_some() {
            f.write_str(")")?;
        }
        if on_fd3 {
            f.write_str("; } 3<&0 </dev/null")?;
        }
        Ok(())
    }
}

/// Where `name` is on PATH: the first executable file of that name.
fn find_on_path(name: &str) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|file| {
            std::fs::metadata(file)
                .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
        })
        .map(|file| file.display().to_string())
}

#[cfg(test)]
mod tests {
    use anyhow::Result;

    use super::*;

    /// What `$(CMD)` reads.
    fn read(cmd: &Cmd) -> Result<String> {
        cmd.run(Stdio::read())?.text()
    }

    /// Runs `line` through a real /bin/sh and returns its stdout.
    fn sh(line: &str) -> String {
        read(&Cmd::new("/bin/sh").args(["-c", line])).unwrap()
    }

    #[test]
    fn display_is_a_shell_line_that_runs_the_same_argv() {
        let cmd = Cmd::new("printf")
            .args(["<%s>", "a b", "it's", "$(id)", "`x`", "", "new\nline"])
            .env("X", "1 2");
        assert_eq!(sh(&cmd.to_string()), read(&cmd).unwrap());
        assert_eq!(read(&cmd).unwrap(), "<a b><it's><$(id)><`x`><><new\nline>");
    }

    #[test]
    fn longest_word_counts_argv_env_and_the_input_command() {
        let cmd = Cmd::new("sh").args(["-c", "12345"]).env("X", "1");
        assert_eq!(cmd.longest_word(), 5);
        assert_eq!(cmd.clone().env("LONG", "123456").longest_word(), 11);
        let piped = cmd.pipe_from(Cmd::new("printf").arg("x".repeat(20)));
        assert_eq!(piped.longest_word(), 20);
    }

    #[test]
    fn under_puts_the_wrapper_first_and_keeps_env_and_dir() {
        let cmd = Cmd::new("nix-build")
            .args(["-A", "system"])
            .env("NIX_PATH", "/srv")
            .dir("/tmp");
        let wrapped = cmd.clone().under(&[
            "/bin/sh".into(),
            "-c".into(),
            "exec \"$@\"".into(),
            "w".into(),
        ]);
        assert_eq!(
            wrapped.argv(),
            [
                "/bin/sh",
                "-c",
                "exec \"$@\"",
                "w",
                "nix-build",
                "-A",
                "system"
            ]
        );
        assert_eq!(
            wrapped.to_string(),
            "(cd /tmp && NIX_PATH=/srv /bin/sh -c 'exec \"$@\"' w nix-build -A system)"
        );
        assert_eq!(cmd.clone().under(&[]), cmd);
    }

    #[test]
    fn display_shows_env_dir_and_pipes() {
        let cmd = Cmd::new("cat")
            .env("NIX_PATH", "/var/src")
            .dir("/tmp/a b")
            .pipe_from(Cmd::new("echo").arg("hi there"));
        assert_eq!(
            cmd.to_string(),
            "echo 'hi there' | (cd '/tmp/a b' && NIX_PATH=/var/src cat)"
        );
    }

    #[test]
    fn env_reaches_the_child() {
        let cmd = Cmd::new("/bin/sh")
            .args(["-c", "printf %s \"$K\""])
            .env("K", "v w");
        assert_eq!(read(&cmd).unwrap(), "v w");
        assert_eq!(sh(&cmd.to_string()), "v w");
    }

    #[test]
    fn pipe_feeds_stdout_and_fails_like_pipefail() {
        let cmd = Cmd::new("tr")
            .args(["a-z", "A-Z"])
            .pipe_from(Cmd::new("printf").arg("abc"));
        assert_eq!(read(&cmd).unwrap(), "ABC");
        let failing = Cmd::new("cat").pipe_from(Cmd::new("/bin/sh").args(["-c", "echo x; exit 3"]));
        assert!(format!("{:#}", read(&failing).unwrap_err()).contains("exit status 3"));
    }

    #[test]
    fn stdin_is_null_unless_inherited() {
        assert_eq!(read(&Cmd::new("cat")).unwrap(), "");
    }

    #[test]
    fn brief_cuts_long_lines() {
        let cmd = Cmd::new("echo").arg("x".repeat(1000));
        assert!(cmd.brief().chars().count() <= 401);
        assert!(cmd.brief().ends_with('…'));
    }
}
