//! Why an ssh (or an rsync through one) failed: the connection, told in
//! ssh's own words, or the command itself.

use super::Session;
use crate::command::{describe, ProcessError, Program};

impl Session {
    /// When `failed`, an ssh of this session (or an rsync through one),
    /// failed because of the connection: what the error says, `the ssh
    /// connection to HOST failed: WHY`, where WHY is ssh's own message
    /// (from the end of its output, else from the shared connection's
    /// master, if it ended). `None` when the command itself failed.
    pub fn connection_failure(&self, failed: &ProcessError) -> Option<String> {
        let ssh_failed = failed.ssh_failed();
        // rsync passes ssh's 255 on; a lost connection may also end it
        // with a protocol or I/O error (12, 10, 11): any failure of rsync
        // is looked at.
        let suspect = match failed.program {
            Program::Ssh => ssh_failed,
            Program::Rsync => true,
            Program::Shell | Program::Other => false,
        };
        if self.is_local() || !suspect {
            return None;
        }
        let who = self.target.destination();
        let lines = connection_lines(&String::from_utf8_lossy(&failed.stderr));
        if !lines.is_empty() {
            return Some(format!(
                "the ssh connection to {who} failed: {}",
                lines.join(" ")
            ));
        }
        if let Some((ended, said)) = self.master_ended() {
            let lines = connection_lines(&said);
            let why = if lines.is_empty() {
                format!("{}; ssh printed no reason", describe(ended))
            } else {
                lines.join(" ")
            };
            return Some(format!(
                "the ssh connection to {who} was lost: the shared connection ended ({why})"
            ));
        }
        let how = describe(failed.status);
        match failed.program {
            // ssh says 255 for both; its message, if any, tells which.
            Program::Ssh => Some(format!(
                "the ssh connection to {who} failed, or the command was killed by a signal \
                 on the target ({how}; ssh's message, if any, is above)"
            )),
            Program::Rsync if failed.status.code() == Some(255) => Some(format!(
                "the ssh connection to {who} failed (rsync: {how}, which is ssh's; \
                 ssh's message, if any, is above)"
            )),
            _ => None,
        }
    }
}

/// What OpenSSH says when it cannot reach a host, cannot log in, or loses
/// the connection: a line of ssh's output containing one of these is
/// quoted in the error.
const CONNECTION_MESSAGES: &[&str] = &[
    "ssh: connect to host ",
    "ssh: Could not resolve hostname ",
    "Connection timed out during banner exchange",
    "kex_exchange_identification: ",
    "banner exchange: ",
    "host key is known for",
    "REMOTE HOST IDENTIFICATION HAS CHANGED",
    "Host key verification failed.",
    "Too many authentication failures",
    "Unable to negotiate with ",
    "Connection closed by ",
    "Connection reset by ",
    " closed by remote host.",
    "Timeout, server ",
    "client_loop: send disconnect: ",
    "Received disconnect from ",
    "ssh_dispatch_run_fatal: ",
    "Bad owner or permissions on ",
];

/// The lines of `output` in which ssh says why it could not connect or
/// lost the connection (see `CONNECTION_MESSAGES`, and a rejected login,
/// `USER@HOST: Permission denied (publickey,password).`), trimmed, each
/// once.
pub fn connection_lines(output: &str) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    for line in output.lines() {
        let line = line.trim();
        let said = CONNECTION_MESSAGES.iter().any(|m| line.contains(m)) || login_rejected(line);
        if said && !lines.iter().any(|l| l == line) {
            lines.push(line.to_owned());
        }
    }
    lines
}

/// Whether `line` is ssh's `… Permission denied (METHOD,…).`, not another
/// program's `Permission denied (13)`.
fn login_rejected(line: &str) -> bool {
    let Some((_, methods)) = line.split_once("Permission denied (") else {
        return false;
    };
    methods.strip_suffix(").").is_some_and(|methods| {
        !methods.is_empty()
            && methods
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b",-@.".contains(&b))
    })
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;
    use std::process::ExitStatus;

    use super::*;
    use crate::session::fixtures::*;

    #[test]
    fn the_connection_is_blamed_by_the_failed_program_and_its_status() {
        let remote = off(&parse("root@h"));
        let diagnose = |session: &Session, program: &str, code: i32, stderr: &str| {
            let mut failed = Cmd::new(program).failure(ExitStatus::from_raw(code << 8));
            failed.stderr = stderr.as_bytes().to_vec();
            session.connection_failure(&failed)
        };
        let refused = "ssh: connect to host h port 22: Connection refused\n";
        assert_eq!(
            diagnose(&remote, "ssh", 255, refused).as_deref(),
            Some("the ssh connection to root@h failed: ssh: connect to host h port 22: Connection refused")
        );
        assert_eq!(
            diagnose(&remote, "ssh", 255, "").as_deref(),
            Some(
                "the ssh connection to root@h failed, or the command was killed by a signal \
                 on the target (exit status 255; ssh's message, if any, is above)"
            )
        );
        // rsync: any failure is looked at, but only ssh's status or words blame the connection.
        assert_eq!(
            diagnose(&remote, "rsync", 255, "").as_deref(),
            Some(
                "the ssh connection to root@h failed (rsync: exit status 255, which is ssh's; \
                 ssh's message, if any, is above)"
            )
        );
        assert!(diagnose(&remote, "rsync", 12, refused).is_some());
        assert_eq!(diagnose(&remote, "rsync", 23, ""), None);
        // The command's own failure, whatever it printed.
        assert_eq!(diagnose(&remote, "ssh", 1, refused), None);
        assert_eq!(diagnose(&remote, "/bin/sh", 255, refused), None);
        assert_eq!(diagnose(&off(&parse("/srv")), "ssh", 255, refused), None);
    }

    #[test]
    fn ssh_s_reasons_are_found_in_its_output() {
        for (output, expected) in [
            (
                "ssh: connect to host 127.0.0.1 port 4: Connection refused\r\n",
                vec!["ssh: connect to host 127.0.0.1 port 4: Connection refused"],
            ),
            (
                "No ED25519 host key is known for alpha and you have requested strict checking.\n\
                 Host key verification failed.\n",
                vec![
                    "No ED25519 host key is known for alpha and you have requested strict checking.",
                    "Host key verification failed.",
                ],
            ),
            (
                "building...\nroot@127.0.0.1: Permission denied (publickey).\n",
                vec!["root@127.0.0.1: Permission denied (publickey)."],
            ),
            (
                "Connection timed out during banner exchange\nConnection timed out during banner exchange\n",
                vec!["Connection timed out during banner exchange"],
            ),
            (
                "./\nbig\nConnection to 127.0.0.1 closed by remote host.\nrsync: [sender] write error: Broken pipe (32)\n",
                vec!["Connection to 127.0.0.1 closed by remote host."],
            ),
            ("Timeout, server 127.0.0.1 not responding.\n", vec!["Timeout, server 127.0.0.1 not responding."]),
            ("error: missing sentinel file\n", vec![]),
            (
                "rsync: [receiver] mkstemp \"/x/.a.Zx\" failed: Permission denied (13)\n\
                 u@h: Permission denied (publickey,keyboard-interactive).\n",
                vec!["u@h: Permission denied (publickey,keyboard-interactive)."],
            ),
        ] {
            assert_eq!(connection_lines(output), expected, "{output:?}");
        }
    }
}
