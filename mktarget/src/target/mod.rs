//! What a target is: where sources go and where commands run (README: Targets),
//! and how ssh and messages name it. Reading one is in `read`, what it may
//! not be in `validate`.

mod read;
mod validate;

use std::borrow::Cow;
use std::fmt;

use serde::Serialize;

pub use validate::PATH_MAX_BYTES;

/// A validated krops target. Construct it with [`Target::parse`],
/// [`Target::from_json`] or [`Target::from_arg`], which refuse bad input.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Target {
    pub user: Option<String>,
    /// A host name or address; an IPv6 literal without brackets (`::1`).
    pub host: String,
    pub port: Option<String>,
    /// Absolute, without ':' or '=' (the target path goes into NIX_PATH).
    pub path: String,
    pub sudo: bool,
    #[serde(rename = "extraOptions")]
    pub extra_options: Vec<String>,
}

/// The machine we run on, as krops sees it: the defaults of every target and
/// the yardstick for "is this target local".
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    pub user: Option<String>,
    pub host: String,
}

impl Origin {
    /// `$LOGNAME` (null when unset or empty), and `$HOSTNAME`, else the single
    /// valid hostname line of `/etc/hostname`, else `localhost`.
    pub fn from_env() -> Origin {
        let var = |name| std::env::var(name).ok().filter(|v: &String| !v.is_empty());
        let etc_hostname = std::fs::read_to_string("/etc/hostname").ok();
        Origin {
            user: var("LOGNAME"),
            host: var("HOSTNAME")
                .or_else(|| etc_hostname.as_deref().and_then(single_hostname))
                .unwrap_or_else(|| "localhost".to_owned()),
        }
    }

    /// The target of the empty string: this machine at `/var/src`.
    pub fn default_target(&self) -> Target {
        Target {
            user: self.user.clone(),
            host: self.host.clone(),
            port: None,
            path: "/var/src".to_owned(),
            sudo: false,
            extra_options: Vec::new(),
        }
    }
}

/// The one line of `/etc/hostname` that is a valid RFC 1123 label, if exactly
/// one is (krops's `maybeHostName`).
fn single_hostname(text: &str) -> Option<String> {
    let mut labels = text.split('\n').filter(|line| is_label(line));
    match (labels.next(), labels.next()) {
        (Some(label), None) => Some(label.to_owned()),
        _ => None,
    }
}

fn is_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
}

impl Target {
    /// Local targets are reached without ssh: same user as the origin, and
    /// the origin's host or `localhost`.
    pub fn is_local(&self, origin: &Origin) -> bool {
        self.user == origin.user && (self.host == origin.host || self.host == "localhost")
    }

    /// The user to log in as, when ssh's config should not decide.
    fn login_user(&self) -> Option<&str> {
        self.user.as_deref().filter(|user| !user.is_empty())
    }

    /// `ssh [-l USER] [-p PORT] -T|-t EXTRA_OPTIONS...`, without the host.
    pub fn ssh_argv(&self, tty: bool) -> Vec<String> {
        let mut argv = self.ssh_argv_before_options(tty);
        argv.extend(self.extra_options.iter().cloned());
        argv
    }

    /// `ssh [-l USER] [-p PORT] -T|-t`: [`Target::ssh_argv`] without the
    /// extra options, for callers that put options of their own first.
    pub fn ssh_argv_before_options(&self, tty: bool) -> Vec<String> {
        let mut argv = vec!["ssh".to_owned()];
        if let Some(user) = self.login_user() {
            argv.extend(["-l".to_owned(), user.to_owned()]);
        }
        if let Some(port) = &self.port {
            argv.extend(["-p".to_owned(), port.clone()]);
        }
        argv.push(if tty { "-t" } else { "-T" }.to_owned());
        argv
    }

    /// How ssh takes this target's host as its host argument: as it is, an
    /// IPv6 literal bare (`::1`); ssh would read `[::1]` as a host name.
    pub fn ssh_host(&self) -> &str {
        &self.host
    }

    /// Whether `other` is this target but for how its path is spelled
    /// (`/var/src/`, `/var//src`): the same directory on the same machine,
    /// reached the same way.
    pub fn same_place(&self, other: &Target) -> bool {
        let spelled = |target: &Target| Target {
            path: format!(
                "/{}",
                target
                    .path
                    .split('/')
                    .filter(|part| !part.is_empty())
                    .collect::<Vec<_>>()
                    .join("/")
            ),
            ..target.clone()
        };
        spelled(self) == spelled(other)
    }

    /// `[USER@]HOST` as ssh takes it, an IPv6 literal bare (`root@::1`):
    /// how the bash nixos-rebuild's `--target-host` must name this target,
    /// since that program hands it to ssh as it is.
    pub fn ssh_destination(&self) -> String {
        match self.login_user() {
            Some(user) => format!("{user}@{}", self.ssh_host()),
            None => self.ssh_host().to_owned(),
        }
    }

    /// How a word that goes on after the host (`USER@HOST:PATH`, `HOST:PORT`)
    /// names it: an IPv6 literal in brackets (`[::1]`), so its own ':' are not
    /// read as separators; any other host as it is. rsync's destination,
    /// nix-copy-closure, nixos-rebuild-ng's `--target-host`, the string form
    /// and messages use it. Together with [`Target::ssh_host`], the one place that
    /// decides how each program wants the host.
    pub fn bracketed_host(&self) -> Cow<'_, str> {
        if self.host.contains(':') {
            Cow::Owned(format!("[{}]", self.host))
        } else {
            Cow::Borrowed(&self.host)
        }
    }

    /// `[USER@]HOST`, the host bracketed when it is an IPv6 literal
    /// (`root@[::1]`): how nixos-rebuild-ng's `--target-host`,
    /// nix-copy-closure and rsync name this target's machine.
    pub fn destination(&self) -> String {
        match self.login_user() {
            Some(user) => format!("{user}@{}", self.bracketed_host()),
            None => self.bracketed_host().into_owned(),
        }
    }

    /// How messages name the machine a command runs on: `this machine`
    /// for a local target, else `[USER@]HOST`.
    pub fn machine(&self, origin: &Origin) -> String {
        if self.is_local(origin) {
            "this machine".to_owned()
        } else {
            self.destination()
        }
    }
}

impl fmt::Display for Target {
    /// The string form, `[USER@]HOST[:PORT]PATH`, an IPv6 host in brackets
    /// (`root@[::1]:22/var/src`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(user) = &self.user {
            write!(f, "{user}@")?;
        }
        f.write_str(&self.bracketed_host())?;
        if let Some(port) = &self.port {
            write!(f, ":{port}")?;
        }
        f.write_str(&self.path)
    }
}

/// What the tests of a target's parts share.
#[cfg(test)]
mod fixtures {
    pub use super::*;
    pub use crate::testing::origin;
    pub use serde_json::json;

    pub fn parse(s: &str) -> Target {
        Target::parse(s, &origin()).unwrap_or_else(|e| panic!("{s:?}: {e:#}"))
    }

    pub fn refused(s: &str) -> String {
        format!("{:#}", Target::parse(s, &origin()).expect_err(s))
    }

    pub fn target(user: Option<&str>, host: &str, port: Option<&str>, path: &str) -> Target {
        Target {
            user: user.map(Into::into),
            host: host.into(),
            port: port.map(Into::into),
            path: path.into(),
            sudo: false,
            extra_options: vec![],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::fixtures::*;

    #[test]
    fn same_place_ignores_how_the_path_is_spelled_only() {
        let t = parse("root@h:22/var/src");
        for same in [
            "root@h:22/var/src/",
            "root@h:22//var//src",
            "root@h:22/var/src//",
        ] {
            assert!(t.same_place(&parse(same)), "{same}");
        }
        for other in [
            "root@h/var/src",
            "h:22/var/src",
            "root@g:22/var/src",
            "root@h:22/var/src2",
        ] {
            assert!(!t.same_place(&parse(other)), "{other}");
        }
        let sudo = Target {
            sudo: true,
            ..parse("root@h:22/var/src/")
        };
        assert!(!t.same_place(&sudo));
    }

    #[test]
    fn defaults_without_logname_have_null_user() {
        let origin = Origin {
            user: None,
            host: "laptop".into(),
        };
        let t = Target::parse("server01", &origin).unwrap();
        assert_eq!(t.user, None);
        assert!(Target::parse("", &origin).unwrap().is_local(&origin));
    }

    #[test]
    fn etc_hostname_needs_exactly_one_label() {
        assert_eq!(single_hostname("vm\n"), Some("vm".into()));
        assert_eq!(
            single_hostname("# comment\nbox-1\n\n"),
            Some("box-1".into())
        );
        assert_eq!(single_hostname("a\nb\n"), None);
        assert_eq!(single_hostname("-bad\n"), None);
        assert_eq!(single_hostname(""), None);
    }

    #[test]
    fn local_means_origin_user_and_host_or_localhost() {
        let o = origin();
        assert!(parse("").is_local(&o));
        assert!(parse("localhost/tmp/x").is_local(&o));
        assert!(parse("alice@laptop").is_local(&o));
        assert!(!parse("root@laptop").is_local(&o));
        assert!(!parse("server01").is_local(&o));
        assert!(!parse("@localhost").is_local(&o));
    }

    #[test]
    fn ssh_argv_has_l_and_p_only_when_set() {
        assert_eq!(parse("h").ssh_argv(false), ["ssh", "-l", "alice", "-T"]);
        assert_eq!(parse("@h:22").ssh_argv(true), ["ssh", "-p", "22", "-t"]);
        let mut t = parse("root@h");
        t.extra_options = vec!["-o".into(), "ProxyCommand=nc %h %p".into()];
        assert_eq!(
            t.ssh_argv(false),
            ["ssh", "-l", "root", "-T", "-o", "ProxyCommand=nc %h %p"]
        );
    }

    #[test]
    fn serializes_with_krops_field_names() {
        let json = serde_json::to_value(parse("@h:22")).unwrap();
        assert_eq!(
            json,
            json!({"user": "", "host": "h", "port": "22", "path": "/var/src", "sudo": false, "extraOptions": []})
        );
    }
}
