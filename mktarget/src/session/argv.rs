//! The command lines a session builds: ssh with the session's sharing and
//! options, rsync's `-e` and destination, a populate step, a driver's
//! command, and how messages name a place on the target.

use std::borrow::Cow;

use super::{Reach, Session};
use crate::command::Cmd;
use crate::shell::{quote_words, rsync_quote_words};

impl Session {
    /// `ssh [-l USER] [-p PORT] -T|-t [SHARING] EXTRA_OPTIONS... [DEFAULTS]`
    /// without the host; SHARING is `-o ControlPath=S -o ControlMaster=no`
    /// when shared, DEFAULTS those of [`DEFAULT_OPTIONS`](super::DEFAULT_OPTIONS) the user left unset.
    pub fn ssh_argv(&self, tty: bool) -> Vec<String> {
        let mut argv = self.target.ssh_argv_before_options(tty);
        if let Reach::Shared(control) = &self.reach {
            argv.extend([
                "-o".to_owned(),
                format!("ControlPath={}", control.socket.display()),
                "-o".to_owned(),
                "ControlMaster=no".to_owned(),
            ]);
        }
        argv.extend(self.target.extra_options.iter().cloned());
        argv.extend(self.defaults.iter().cloned());
        argv
    }

    /// `ssh [-l USER] [-p PORT] -T EXTRA_OPTIONS... -S none` without the
    /// host: a connection of its own, which goes through no master, neither
    /// ours nor one the user's options or config set up. `-S none` comes
    /// last because ssh takes the last `-S` over any ControlPath, so it also
    /// wins over a `-S` or ControlPath among the user's options, which
    /// otherwise all apply. What a new login sees, not what an open
    /// connection still allows.
    pub fn fresh_ssh_argv(&self) -> Vec<String> {
        let mut argv = self.target.ssh_argv(false);
        argv.extend(["-S".to_owned(), "none".to_owned()]);
        argv
    }

    /// A driver's command as [`Session::command`] builds it (without a
    /// terminal), run over a new ssh connection ([`Session::fresh_ssh_argv`]);
    /// on a local target, the same local command.
    pub fn fresh_command(&self, script: &str, args: &[String]) -> Cmd {
        let argv = self.sudo_argv(self.command_argv(&[], script, args), false);
        let cmd = if self.is_local() {
            Cmd::from_argv(argv)
        } else {
            Cmd::from_argv(self.fresh_ssh_argv())
                .arg(self.target.ssh_host())
                .arg(quote_words(&argv))
        };
        self.feed_sudo(cmd, false)
    }

    /// The ssh command for rsync's `-e`, quoted the way rsync splits it.
    pub fn rsync_shell(&self) -> String {
        rsync_quote_words(self.sudo_rsh(self.ssh_argv(false)))
    }

    /// rsync's destination for `path` on this target: `[USER@]HOST:PATH`, or
    /// the path alone when the target is local.
    pub fn rsync_destination(&self, path: &str) -> String {
        if self.is_local() {
            path.to_owned()
        } else {
            format!("{}:{path}", self.target.destination())
        }
    }

    /// `[HOST:]PATH`, how messages name a place on this target.
    pub fn display_path<'a>(&self, path: &'a str) -> Cow<'a, str> {
        if self.is_local() {
            Cow::Borrowed(path)
        } else {
            Cow::Owned(format!("{}:{path}", self.target.bracketed_host()))
        }
    }

    /// How messages name the machine: `this machine` or `[USER@]HOST`.
    pub fn machine(&self) -> String {
        self.target.machine(&self.origin)
    }

    /// A populate step: `script` as is on a local target, else
    /// `ssh … HOST SCRIPT`, or `ssh … HOST "sudo bash -c q(SCRIPT)"` with sudo.
    pub fn shell(&self, script: &str) -> Cmd {
        if self.is_local() {
            return Cmd::new("/bin/sh").args(["-c", script]);
        }
        let remote = if self.target.sudo {
            let sudo = ["sudo", "bash", "-c", script].map(str::to_owned).to_vec();
            quote_words(self.sudo_argv(sudo, false))
        } else {
            script.to_owned()
        };
        self.feed_sudo(self.ssh(remote, false), false)
    }

    /// A driver's final command: `[sudo] /bin/sh -c q(SCRIPT) ARGS...`,
    /// through ssh when the target is remote.
    pub fn command(&self, script: &str, args: &[String], tty: bool) -> Cmd {
        self.command_under(&[], script, args, tty)
    }

    /// Like [`Session::command`], started by `wrapper` (a program and its
    /// arguments, which runs the rest of its argv) on the target, under sudo
    /// when the target says so: `[sudo] WRAPPER... /bin/sh -c q(SCRIPT) ARGS...`.
    pub fn command_under(
        &self,
        wrapper: &[String],
        script: &str,
        args: &[String],
        tty: bool,
    ) -> Cmd {
        let argv = self.sudo_argv(self.command_argv(wrapper, script, args), tty);
        let cmd = if self.is_local() {
            Cmd::from_argv(argv)
        } else {
            self.ssh(quote_words(&argv), tty)
        };
        self.feed_sudo(cmd, tty)
    }

    /// `[sudo] [WRAPPER...] /bin/sh -c SCRIPT ARGS...`, what a driver's command runs.
    fn command_argv(&self, wrapper: &[String], script: &str, args: &[String]) -> Vec<String> {
        let mut argv: Vec<String> = Vec::new();
        if self.target.sudo {
            argv.push("sudo".to_owned());
        }
        argv.extend(wrapper.iter().cloned());
        argv.extend(["/bin/sh".to_owned(), "-c".to_owned(), script.to_owned()]);
        argv.extend(args.iter().cloned());
        argv
    }

    pub(super) fn ssh(&self, remote_command: String, tty: bool) -> Cmd {
        Cmd::from_argv(self.ssh_argv(tty))
            .arg(self.target.ssh_host())
            .arg(remote_command)
    }
}

#[cfg(test)]
mod tests {
    use crate::session::fixtures::*;

    #[test]
    fn rsync_gets_the_ssh_argv_quoted_for_its_e() {
        let mut t = parse("root@h");
        t.extra_options = vec!["-o".into(), "ProxyCommand=nc %h %p".into()];
        assert_eq!(
            off(&t).rsync_shell(),
            "'ssh' '-l' 'root' '-T' '-o' 'ProxyCommand=nc %h %p'"
        );
    }

    #[test]
    fn destinations() {
        assert_eq!(off(&parse("root@h/p")).rsync_destination("/p"), "root@h:/p");
        assert_eq!(off(&parse("@h/p")).rsync_destination("/p"), "h:/p");
        assert_eq!(off(&parse("/p")).rsync_destination("/p"), "/p");
        assert_eq!(parse("@h").destination(), "h");
        assert_eq!(
            off(&parse("h/p")).display_path("/p/.populate"),
            "h:/p/.populate"
        );
        assert_eq!(
            off(&parse("/p")).display_path("/p/.populate"),
            "/p/.populate"
        );
    }

    #[test]
    fn each_program_gets_an_ipv6_host_its_own_way() {
        let t = parse("root@[::1]:22/var/src");
        let s = off(&t);
        assert_eq!(t.ssh_host(), "::1");
        assert_eq!(t.bracketed_host(), "[::1]");
        // ssh: the bare address as its host argument.
        assert_eq!(
            s.shell("true").argv(),
            ["ssh", "-l", "root", "-p", "22", "-T", "::1", "true"]
        );
        assert_eq!(
            s.command("id", &[], true).argv(),
            [
                "ssh",
                "-l",
                "root",
                "-p",
                "22",
                "-t",
                "::1",
                "/bin/sh -c id"
            ]
        );
        // rsync and nixos-rebuild: in brackets.
        assert_eq!(s.rsync_destination("/var/src"), "root@[::1]:/var/src");
        assert_eq!(t.destination(), "root@[::1]");
        assert_eq!(parse("@[2001:db8::1]").destination(), "[2001:db8::1]");
        assert_eq!(
            s.rsync_destination("/var/src/nixos-config"),
            "root@[::1]:/var/src/nixos-config"
        );
        // Messages: unambiguous.
        assert_eq!(
            s.display_path("/var/src/.populate"),
            "[::1]:/var/src/.populate"
        );
        // A JSON host "::1" is the same target.
        let host = serde_json::json!({"user": "root", "host": "::1", "port": "22"});
        let json = Target::from_json(&host, &origin()).unwrap();
        assert_eq!(
            off(&json).rsync_destination("/var/src"),
            "root@[::1]:/var/src"
        );
        assert_eq!(off(&json).shell("true").argv(), s.shell("true").argv());
    }

    #[test]
    fn populate_steps_on_targets() {
        assert_eq!(
            off(&parse("")).shell("echo hi").argv(),
            ["/bin/sh", "-c", "echo hi"]
        );
        assert_eq!(
            off(&parse("root@h:2")).shell("echo hi").argv(),
            ["ssh", "-l", "root", "-p", "2", "-T", "h", "echo hi"]
        );
        let mut t = parse("u@h");
        t.sudo = true;
        assert_eq!(
            off(&t).shell("echo 'hi'").argv(),
            [
                "ssh",
                "-l",
                "u",
                "-T",
                "h",
                "sudo bash -c 'echo '\\''hi'\\'''"
            ]
        );
    }

    #[test]
    fn driver_commands_on_targets() {
        let args = ["/var/src".to_owned()];
        assert_eq!(
            off(&parse("")).command("echo $1", &args, false).argv(),
            ["/bin/sh", "-c", "echo $1", "/var/src"]
        );
        let mut t = parse("u@h");
        assert_eq!(
            off(&t).command("echo $1", &args, true).argv(),
            ["ssh", "-l", "u", "-t", "h", "/bin/sh -c 'echo $1' /var/src"]
        );
        t.sudo = true;
        assert_eq!(
            off(&t).command("id", &[], false).argv(),
            ["ssh", "-l", "u", "-T", "h", "sudo /bin/sh -c id"]
        );
        // A wrapper runs under sudo too, the command as its arguments.
        let wrapper = [
            "/bin/sh".to_owned(),
            "-c".to_owned(),
            "exec \"$@\"".to_owned(),
            "w".to_owned(),
        ];
        assert_eq!(
            off(&t).command_under(&wrapper, "id", &args, false).argv(),
            [
                "ssh",
                "-l",
                "u",
                "-T",
                "h",
                "sudo /bin/sh -c 'exec \"$@\"' w /bin/sh -c id /var/src"
            ]
        );
        assert_eq!(
            off(&parse(""))
                .command_under(&wrapper, "id", &[], false)
                .argv(),
            ["/bin/sh", "-c", "exec \"$@\"", "w", "/bin/sh", "-c", "id"]
        );
    }

    #[test]
    fn local_and_unshared_sessions_add_no_sharing() {
        let local = Session::open(
            &Target::from_arg("/srv", &origin()).unwrap(),
            &origin(),
            Multiplex::Share,
        )
        .unwrap();
        assert!(local.is_local() && !local.is_shared());
        let remote = Target::from_arg("root@server:22/srv", &origin()).unwrap();
        let off = off(&remote);
        assert_eq!(off.ssh_argv(false), remote.ssh_argv(false));
        assert_eq!(off.rsync_destination("/srv/a"), "root@server:/srv/a");
    }

    #[test]
    fn fresh_commands_go_through_no_master() {
        let mut t = parse("u@h:2");
        t.sudo = true;
        t.extra_options = vec!["-v".into()];
        // Shared: the usual command goes through our socket, the fresh one
        // through none, with the user's options.
        let shared = Session::open(&t, &origin(), Multiplex::Share).unwrap();
        assert!(shared.is_shared());
        let socket = format!("ControlPath={}", shared.control_socket().unwrap().display());
        assert!(shared.command("id", &[], false).argv().contains(&socket));
        let fresh = shared.fresh_command("echo $1", &["x y".to_owned()]);
        assert_eq!(
            fresh.argv(),
            [
                "ssh",
                "-l",
                "u",
                "-p",
                "2",
                "-T",
                "-v",
                "-S",
                "none",
                "h",
                "sudo /bin/sh -c 'echo $1' 'x y'"
            ]
        );
        // Local: the same command as ever.
        let local = off(&parse("/srv"));
        assert_eq!(
            local.fresh_command("id", &[]).argv(),
            local.command("id", &[], false).argv()
        );
    }

    #[test]
    fn a_fresh_ssh_ignores_a_control_path_from_anywhere() {
        // ssh -G prints what a connection would use: no control path left.
        let mut t = parse("root@h");
        t.extra_options = vec![
            "-o".into(),
            "ControlPath=/tmp/a".into(),
            "-S".into(),
            "/tmp/b".into(),
        ];
        let mut argv = off(&t).fresh_ssh_argv();
        argv.extend(["-G".to_owned(), "h".to_owned()]);
        let out = Cmd::from_argv(argv).run(Stdio::capture()).unwrap();
        assert!(out.success(), "{out:?}");
        let config = String::from_utf8(out.stdout).unwrap();
        // (ssh -G prints no controlpath line for none.)
        assert!(!config.contains("controlpath"), "{config}");
        // Without `-S none` it would have used the user's.
        let mut argv = t.ssh_argv(false);
        argv.extend(["-G".to_owned(), "h".to_owned()]);
        let config = Cmd::from_argv(argv)
            .run(Stdio::read())
            .unwrap()
            .text()
            .unwrap();
        assert!(config.contains("controlpath /tmp/"), "{config}");
    }
}
