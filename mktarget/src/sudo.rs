//! A sudo password (README: A sudo password): asked once on the terminal
//! (`--ask-sudo-password`) or read from a file of one's own
//! (`--sudo-password-file`), and given to `sudo -S` on a sudo target for
//! every command that needs root. It travels only on stdin: the first line
//! of what a command on the target reads, before its own input, where
//! `sudo.sh` takes it (rsync's remote shell `rsh.sh` puts it before rsync's
//! protocol). It is never in an argv, an environment, a log or the
//! `--dry-run` script, which shows `sudo_password |` where it is given.

use std::fmt;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context, Result};

use crate::command::Cmd;
use crate::session::Session;
use crate::tool::usage;

/// `krops_sudo COMMAND...` (`sudo.sh`): on the target, reads the password
/// line, has sudo check it once, then runs COMMAND with `sudo -n`.
const SUDO_SH: &str = include_str!("sudo.sh");

/// `krops_rsh SSH...` (`rsh.sh`): rsync's remote shell, here, that sends
/// the password line (from fd 3) before rsync's stream.
const RSH_SH: &str = include_str!("rsh.sh");

/// Ctrl-C, as the terminal gives it without signals.
const INTERRUPT: char = '\u{3}';

/// How long a password may be: sudo's own limit is far below.
const MAX_BYTES: usize = 4096;

/// A sudo password, or (for `--dry-run`, which asks for none) the mark of
/// one. Its `Debug` never shows it.
#[derive(Clone)]
pub struct SudoPassword {
    secret: Option<Arc<String>>,
}

impl fmt::Debug for SudoPassword {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SudoPassword(<not shown>)")
    }
}

impl PartialEq for SudoPassword {
    fn eq(&self, other: &SudoPassword) -> bool {
        match (&self.secret, &other.secret) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        }
    }
}

impl Eq for SudoPassword {}

impl SudoPassword {
    /// `password`, checked: one line, no NUL, not empty.
    pub fn new(password: String, from: &str) -> Result<SudoPassword> {
        if password.is_empty() {
            return Err(usage(format!("{from}: the password is empty")));
        }
        if password.contains(['\n', '\0']) {
            return Err(usage(format!(
                "{from}: the password holds a newline or NUL byte"
            )));
        }
        if password.len() > MAX_BYTES {
            return Err(usage(format!(
                "{from}: the password is longer than {MAX_BYTES} bytes"
            )));
        }
        Ok(SudoPassword {
            secret: Some(Arc::new(password)),
        })
    }

    /// The mark of a password for `--dry-run`, which shows where it would
    /// be given and asks for none.
    pub fn shown() -> SudoPassword {
        SudoPassword { secret: None }
    }

    /// Asks on the controlling terminal, without echo.
    pub fn ask(prompt: &str) -> Result<SudoPassword> {
        let from = "--ask-sudo-password";
        let mut tty = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/tty")
            .map_err(|err| {
                usage(format!(
                    "{from}: there is no terminal to ask on ({err}); give the password with \
                     --sudo-password-file FILE instead"
                ))
            })?;
        let line = {
            let _quiet =
                NoEcho::on(tty.try_clone()?).context("cannot turn off the terminal's echo")?;
            write!(tty, "{prompt}").context("cannot write to the terminal")?;
            tty.flush().ok();
            let line = read_typed(&mut tty).context("cannot read the terminal");
            let _ = writeln!(tty);
            line?
        };
        // Ctrl-C came as a byte (no signal while asking, so the echo is
        // always turned back on): as a signal would, before anything ran.
        if line.contains(INTERRUPT) {
            let _ = writeln!(tty, "interrupted: nothing was done");
            std::process::exit(130);
        }
        SudoPassword::new(line, from)
    }

    /// The first line of `path` (`/dev/stdin` too), which must be the
    /// user's own and neither readable nor writable by others.
    pub fn read_file(path: &Path) -> Result<SudoPassword> {
        let from = format!("--sudo-password-file {}", path.display());
        let mut file = std::fs::File::open(path)
            .map_err(|err| usage(format!("{from}: cannot open it: {err}")))?;
        // Read as a file, a terminal would show the password as it is
        // typed (and its mode, 0620, would be refused as others' to write).
        if std::io::IsTerminal::is_terminal(&file) {
            return Err(usage(format!(
                "{from}: it is a terminal, which would show the password as it is typed: use \
                 --ask-sudo-password, which asks without echo"
            )));
        }
        let meta = file
            .metadata()
            .map_err(|err| usage(format!("{from}: {err}")))?;
        let me = nix::unistd::geteuid().as_raw();
        if meta.uid() != me {
            return Err(usage(format!(
                "{from}: it belongs to uid {}, not to you (uid {me}): refused",
                meta.uid()
            )));
        }
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(usage(format!(
                "{from}: others may read or write it (mode {mode:04o}): refused; \
                 chmod 600 it"
            )));
        }
        let line = read_line(&mut file).map_err(|err| usage(format!("{from}: {err:#}")))?;
        SudoPassword::new(line, &from)
    }

    /// The line a command reads first: the password and a newline.
    pub(crate) fn line(&self) -> Vec<u8> {
        let mut line = self
            .secret
            .as_deref()
            .cloned()
            .unwrap_or_default()
            .into_bytes();
        line.push(b'\n');
        line
    }
}

/// The first line of `input` (without its newline), read a byte at a time
/// so that nothing after it is taken.
fn read_line(input: &mut impl Read) -> Result<String> {
    let mut bytes = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match input.read(&mut byte) {
            Ok(0) => break,
            Ok(_) if byte[0] == b'\n' => break,
            Ok(_) => {
                bytes.push(byte[0]);
                if bytes.len() > MAX_BYTES {
                    bail!("the password is longer than {MAX_BYTES} bytes");
                }
            }
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(err.into()),
        }
    }
    if bytes.last() == Some(&b'\r') {
        bytes.pop();
    }
    String::from_utf8(bytes).context("the password is not UTF-8")
}

/// What is typed on the terminal, in its raw mode, up to Enter: the line
/// with Backspace and Ctrl-U applied; Ctrl-D ends it; Ctrl-C is
/// [`INTERRUPT`] alone.
fn read_typed(tty: &mut impl Read) -> Result<String> {
    let mut typed: Vec<u8> = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match tty.read(&mut byte) {
            Ok(0) => break,
            Ok(_) => match byte[0] {
                b'\n' | b'\r' | 0x04 => break,
                0x03 => return Ok(INTERRUPT.to_string()),
                0x7f | 0x08 => {
                    // One character, however many bytes.
                    while let Some(last) = typed.pop() {
                        if last & 0xc0 != 0x80 {
                            break;
                        }
                    }
                }
                0x15 => typed.clear(),
                b => {
                    typed.push(b);
                    if typed.len() > MAX_BYTES {
                        bail!("the password is longer than {MAX_BYTES} bytes");
                    }
                }
            },
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(err.into()),
        }
    }
    String::from_utf8(typed).context("the password is not UTF-8")
}

/// The terminal's echo turned off until dropped.
struct NoEcho {
    tty: std::fs::File,
    saved: nix::sys::termios::Termios,
}

impl NoEcho {
    fn on(tty: std::fs::File) -> Result<NoEcho> {
        use nix::sys::termios::{tcgetattr, tcsetattr, LocalFlags, SetArg};
        let saved = tcgetattr(&tty)?;
        let mut quiet = saved.clone();
        // Raw enough to see Ctrl-C as a byte at once, not as a signal
        // that would end us with the echo still off.
        quiet
            .local_flags
            .remove(LocalFlags::ECHO | LocalFlags::ISIG | LocalFlags::ICANON);
        quiet.control_chars[nix::sys::termios::SpecialCharacterIndices::VMIN as usize] = 1;
        quiet.control_chars[nix::sys::termios::SpecialCharacterIndices::VTIME as usize] = 0;
        tcsetattr(&tty, SetArg::TCSANOW, &quiet)?;
        Ok(NoEcho { tty, saved })
    }
}

impl Drop for NoEcho {
    fn drop(&mut self) {
        let _ = nix::sys::termios::tcsetattr(
            &self.tty,
            nix::sys::termios::SetArg::TCSANOW,
            &self.saved,
        );
    }
}

/// `/bin/sh -c SUDO_SH krops-sudo ARGS...`: what runs `sudo ARGS...` on a
/// target with the password from stdin.
fn krops_sudo(args: &[String]) -> Vec<String> {
    let mut argv = vec![
        "/bin/sh".to_owned(),
        "-c".to_owned(),
        format!(
            "{}krops_sudo \"$@\"\n",
            crate::shell::without_comments(SUDO_SH)
        ),
        "krops-sudo".to_owned(),
    ];
    argv.extend(args.iter().cloned());
    argv
}

impl Session {
    /// This session with `password` for its target's sudo (ignored for a
    /// target without sudo).
    pub fn with_sudo_password(mut self, password: Option<SudoPassword>) -> Session {
        self.sudo_password = password.filter(|_| self.target().sudo);
        self
    }

    /// The password this session gives sudo on its target, if any.
    pub fn sudo_password(&self) -> Option<&SudoPassword> {
        self.sudo_password.as_ref()
    }

    /// `argv`, which starts with `sudo`, as it runs on the target: itself,
    /// or, with a password and no terminal (on one, sudo asks there
    /// itself), `/bin/sh -c SUDO_SH krops-sudo ARGS...`.
    pub(crate) fn sudo_argv(&self, argv: Vec<String>, tty: bool) -> Vec<String> {
        match (&self.sudo_password, argv.split_first()) {
            (Some(_), Some((sudo, args))) if !tty && sudo == "sudo" => krops_sudo(args),
            _ => argv,
        }
    }

    /// `cmd`, a command of this session built with [`Session::sudo_argv`],
    /// with the password as the first line of its stdin when it needs one.
    pub(crate) fn feed_sudo(&self, cmd: Cmd, tty: bool) -> Cmd {
        match &self.sudo_password {
            Some(password) if !tty => cmd.first_line(password.clone()),
            _ => cmd,
        }
    }

    /// rsync's remote shell `ssh_argv`, led by `rsh.sh` when the password
    /// goes before rsync's stream (see [`Session::rsync_path`]).
    pub(crate) fn sudo_rsh(&self, ssh_argv: Vec<String>) -> Vec<String> {
        if self.sudo_password.is_none() || self.is_local() {
            return ssh_argv;
        }
        let mut argv = vec![
            "/bin/sh".to_owned(),
            "-c".to_owned(),
            format!(
                "{}krops_rsh \"$@\"\n",
                crate::shell::without_comments(RSH_SH)
            ),
            "krops-rsh".to_owned(),
        ];
        argv.extend(ssh_argv);
        argv
    }

    /// rsync's `--rsync-path` for `argv` (the program and arguments that run
    /// before rsync's own on the target, `sudo` first on a sudo target),
    /// and `rsync` with the password on fd 3 for rsync's remote shell
    /// ([`Session::sudo_rsh`]) when it needs one.
    pub fn rsync_path(&self, argv: Vec<String>, rsync: Cmd) -> (String, Cmd) {
        let path = crate::shell::quote_words(self.sudo_argv(argv, false));
        let rsync = match &self.sudo_password {
            Some(password) if !self.is_local() => rsync.first_line_on_fd3(password.clone()),
            _ => rsync,
        };
        (path, rsync)
    }
}

/// The scripts, for `cargo xtask scripts` to find: `include_str!` above.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::Stdio;
    use crate::testing::origin;

    #[test]
    fn debug_never_shows_the_password() {
        let password = SudoPassword::new("hunter2".to_owned(), "test").unwrap();
        assert!(!format!("{password:?}").contains("hunter2"));
        let cmd = Cmd::new("cat").first_line(password);
        assert!(!format!("{cmd:?}").contains("hunter2"));
        assert!(!cmd.to_string().contains("hunter2"));
        assert_eq!(cmd.run(Stdio::read()).unwrap().text().unwrap(), "hunter2\n");
    }

    #[test]
    fn bad_passwords_are_refused() {
        for bad in ["", "a\nb", "a\0b"] {
            assert!(SudoPassword::new(bad.to_owned(), "x").is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_password_file_must_be_ones_own_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "s3cret\nsecond line\n").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = format!("{:#}", SudoPassword::read_file(&file).unwrap_err());
        assert!(
            err.contains("others may read") && err.contains("0644"),
            "{err}"
        );
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let password = SudoPassword::read_file(&file).unwrap();
        assert_eq!(password.line(), b"s3cret\n");
    }

    #[test]
    fn only_commands_without_a_terminal_get_the_password() {
        let mut t = Target::from_arg("u@h/p", &origin()).unwrap();
        t.sudo = true;
        let password = SudoPassword::new("pw".to_owned(), "test").unwrap();
        let session = crate::testing::session(&t).with_sudo_password(Some(password));
        let remote = session.command("id", &[], false);
        let last = remote.argv().pop().unwrap();
        assert!(last.starts_with("/bin/sh -c '"), "{last}");
        assert!(last.ends_with("krops-sudo /bin/sh -c id"), "{last}");
        assert!(
            remote.to_string().starts_with("sudo_password | ssh "),
            "{remote}"
        );
        let tty = session.command("id", &[], true);
        assert_eq!(tty.argv().pop().unwrap(), "sudo /bin/sh -c id");
        assert!(!tty.to_string().contains("sudo_password"));
        // A target without sudo takes none.
        t.sudo = false;
        let plain = crate::testing::session(&t).with_sudo_password(Some(SudoPassword::shown()));
        assert!(plain.sudo_password().is_none());
    }

    use crate::target::Target;
}
