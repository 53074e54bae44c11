//! What a target is: where sources go and where commands run (README: Targets).

use std::borrow::Cow;
use std::fmt;
use std::net::Ipv6Addr;

use anyhow::{bail, Context, Result};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::json::{kind, shown, SHOWN_CHARS};

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

/// The parts of a target string that are present.
#[derive(Debug, Default, PartialEq, Eq)]
struct Parts<'a> {
    user: Option<&'a str>,
    host: Option<&'a str>,
    port: Option<&'a str>,
    path: Option<&'a str>,
}

/// Splits `[[USER]@]HOST[:PORT][/PATH]` the way krops's regex
/// `(([^@]*)@)?(([^:/]+))?(:([^/]+))?(/.*)?` matches it as a whole, except
/// that HOST may also be an IPv6 literal in brackets (`[::1]`, `[fe80::1%eth0]`),
/// given back without them. The error says why the string does not match.
fn split(s: &str) -> Result<Parts<'_>, String> {
    let mut parts = Parts::default();
    let mut rest = s;
    if let Some(at) = rest.find('@') {
        parts.user = Some(&rest[..at]);
        rest = &rest[at + 1..];
    }
    if let Some(bracketed) = rest.strip_prefix('[') {
        let Some(close) = bracketed.find(']') else {
            return Err("unbalanced brackets: '[' without ']' around the host".to_owned());
        };
        let host = &bracketed[..close];
        if !is_ipv6_literal(host) {
            let host = if host.len() <= SHOWN_CHARS && !host.contains(char::is_control) {
                host.to_owned()
            } else {
                shown(host)
            };
            return Err(format!(
                "target.host: [{host}] is not an IPv6 address (only an IPv6 address goes in brackets)"
            ));
        }
        parts.host = Some(host);
        rest = &bracketed[close + 1..];
        if !(rest.is_empty() || rest.starts_with([':', '/'])) {
            return Err("expected ':PORT' or '/PATH' after the ']' of the host".to_owned());
        }
    } else {
        let host_end = rest.find([':', '/']).unwrap_or(rest.len());
        if host_end > 0 {
            parts.host = Some(&rest[..host_end]);
        }
        rest = &rest[host_end..];
    }
    if let Some(after_colon) = rest.strip_prefix(':') {
        let port_end = after_colon.find('/').unwrap_or(after_colon.len());
        if port_end == 0 {
            return Err("the port after ':' is empty".to_owned());
        }
        parts.port = Some(&after_colon[..port_end]);
        rest = &after_colon[port_end..];
    }
    let host_and_port = [parts.host, parts.port];
    if host_and_port
        .iter()
        .flatten()
        .any(|part| part.contains(['[', ']']))
    {
        return Err("unbalanced brackets around the host".to_owned());
    }
    if parts.port.is_some_and(|port| port.contains(':')) {
        return Err(
            "an IPv6 address must be written in brackets: [::1], root@[::1]:22/var/src".to_owned(),
        );
    }
    if !rest.is_empty() {
        parts.path = Some(rest);
    }
    Ok(parts)
}

/// An IPv6 address as ssh takes it, optionally with a `%zone` (an interface
/// name or index).
fn is_ipv6_literal(host: &str) -> bool {
    let (address, zone) = match host.split_once('%') {
        Some((address, zone)) => (address, Some(zone)),
        None => (host, None),
    };
    let valid_zone = |zone: &str| {
        !zone.is_empty()
            && zone
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    };
    address.parse::<Ipv6Addr>().is_ok() && zone.is_none_or(valid_zone)
}

impl Target {
    /// Parses krops's string form; present parts override `origin`'s defaults.
    pub fn parse(s: &str, origin: &Origin) -> Result<Target> {
        let target = Target::parse_unvalidated(s, origin)?;
        target.validate()?;
        Ok(target)
    }

    fn parse_unvalidated(s: &str, origin: &Origin) -> Result<Target> {
        let parts = split(s).map_err(|why| {
            anyhow::anyhow!(
                "target {} does not match [[USER]@]HOST[:PORT][/PATH]: {why}",
                shown(s)
            )
        })?;
        let mut target = origin.default_target();
        if let Some(user) = parts.user {
            target.user = Some(user.to_owned());
        }
        if let Some(host) = parts.host {
            target.host = host.to_owned();
        }
        if let Some(port) = parts.port {
            target.port = Some(port.to_owned());
        }
        if let Some(path) = parts.path {
            target.path = path.to_owned();
        }
        Ok(target)
    }

    /// Fills the defaults with the fields a JSON object names, like Nix's
    /// `defaults // attrs`.
    pub fn from_json(value: &Value, origin: &Origin) -> Result<Target> {
        let target = Target::from_json_unvalidated(value, origin)?;
        target.validate()?;
        Ok(target)
    }

    fn from_json_unvalidated(value: &Value, origin: &Origin) -> Result<Target> {
        let Value::Object(object) = value else {
            bail!(
                "target: expected a string or an object, got {}",
                kind(value)
            );
        };
        let mut target = origin.default_target();
        target.update(object)?;
        Ok(target)
    }

    /// A target as given on a command line: a JSON object when it starts with
    /// `{`, else the string form.
    pub fn from_arg(arg: &str, origin: &Origin) -> Result<Target> {
        Target::from_arg_with(arg, &Map::new(), origin)
    }

    /// Like [`Target::from_arg`], then `overrides` replace the fields they
    /// name (`mkTarget "…" // { … }`), and only then is the result validated.
    pub fn from_arg_with(
        arg: &str,
        overrides: &Map<String, Value>,
        origin: &Origin,
    ) -> Result<Target> {
        let trimmed = arg.trim_start();
        let mut target = if trimmed.starts_with('{') {
            let value = crate::json::parse(trimmed).context("target: malformed JSON object")?;
            Target::from_json_unvalidated(&value, origin)?
        } else {
            Target::parse_unvalidated(arg, origin)?
        };
        target.update(overrides)?;
        target.validate()?;
        Ok(target)
    }

    /// Overrides the fields `object` names; unknown fields are refused.
    pub fn update(&mut self, object: &Map<String, Value>) -> Result<()> {
        for (key, value) in object {
            let field = format!("target.{key}");
            match key.as_str() {
                "user" => self.user = nullable_string(value, &field)?,
                "host" => self.host = string(value, &field)?,
                "port" => {
                    self.port = match value {
                        Value::Number(n) => Some(n.to_string()),
                        _ => nullable_string(value, &field)?,
                    }
                }
                "path" => self.path = string(value, &field)?,
                "sudo" => {
                    self.sudo = value.as_bool().with_context(|| {
                        format!("{field}: expected a boolean, got {}", kind(value))
                    })?
                }
                "extraOptions" => {
                    let Value::Array(items) = value else {
                        bail!("{field}: expected a list of strings, got {}", kind(value));
                    };
                    self.extra_options = items
                        .iter()
                        .enumerate()
                        .map(|(i, item)| string(item, &format!("{field}[{i}]")))
                        .collect::<Result<_>>()?;
                }
                _ => bail!(
                    "{field}: unknown field (expected user, host, port, path, sudo, extraOptions)"
                ),
            }
        }
        Ok(())
    }

    /// Refuses what would be misread by ssh, rsync or the shell.
    pub fn validate(&self) -> Result<()> {
        if let Some(user) = &self.user {
            check_name(user, "target.user", true)?;
        }
        check_name(&self.host, "target.host", false)?;
        if let Some(c) = self.host.chars().find(|c| "@/".contains(*c)) {
            bail!(
                "target.host: {} contains {c:?}, which no host name has: the user goes in target.user and the path in target.path",
                shown(&self.host)
            );
        }
        if let Some(user) = self.user.as_deref().filter(|user| user.contains(':')) {
            bail!(
                "target.user: {} contains ':', which rsync would read as the end of the host",
                shown(user)
            );
        }
        if self.host.contains(['[', ']']) {
            bail!(
                "target.host: {} has brackets: give an IPv6 address without them (\"::1\"); \
                 brackets belong only in the string form (root@[::1]:22/var/src)",
                shown(&self.host)
            );
        }
        if self.host.contains(':') && !is_ipv6_literal(&self.host) {
            bail!(
                "target.host: {} contains ':' but is not an IPv6 address (with an optional %zone)",
                shown(&self.host)
            );
        }
        if let Some(port) = &self.port {
            let valid = !port.is_empty()
                && port.bytes().all(|b| b.is_ascii_digit())
                && matches!(port.parse::<u32>(), Ok(1..=65535));
            if !valid {
                bail!(
                    "target.port: {} is not a port number (1-65535)",
                    shown(port)
                );
            }
        }
        let path = shown(&self.path);
        if !self.path.starts_with('/') {
            bail!("target.path: {path} is not an absolute path");
        }
        if self.path.contains(char::is_control) {
            bail!(
                "target.path: {path} contains a control character (a newline, a tab, a NUL byte)"
            );
        }
        if self.path.contains(':') {
            bail!(
                "target.path: {path} contains ':', which would break NIX_PATH (it separates \
                 entries with ':'); choose a path without ':'"
            );
        }
        if self.path.contains('=') {
            bail!(
                "target.path: {path} contains '=', which NIX_PATH would read as a prefix \
                 (NIX_PATH=/srv/a=b is the path b under the name /srv/a); choose a path \
                 without '='"
            );
        }
        if self.path.len() > PATH_MAX_BYTES {
            bail!("target.path: {path} is too long (a path has at most {PATH_MAX_BYTES} bytes)");
        }
        for (i, option) in self.extra_options.iter().enumerate() {
            // No ssh option holds one; a newline would also split rsync's
            // -e and NIX_SSHOPTS.
            if option.contains(char::is_control) {
                bail!(
                    "target.extraOptions[{i}]: {} contains a control character (a newline, a tab, a NUL byte)",
                    shown(option)
                );
            }
        }
        Ok(())
    }

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

/// Refuses a user or host that ssh would read as an option or that carries
/// whitespace or control characters.
fn check_name(value: &str, field: &str, may_be_empty: bool) -> Result<()> {
    if value.is_empty() && !may_be_empty {
        bail!("{field}: must not be empty");
    }
    if value.starts_with('-') {
        bail!(
            "{field}: {} begins with '-' (ssh would read it as an option)",
            shown(value)
        );
    }
    if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        bail!(
            "{field}: {} contains whitespace or control characters",
            shown(value)
        );
    }
    if value.len() > NAME_MAX_BYTES {
        bail!(
            "{field}: {} is too long (ssh takes at most {NAME_MAX_BYTES} bytes)",
            shown(value)
        );
    }
    Ok(())
}

/// The longest user or host name ssh takes (its `NI_MAXHOST` buffer).
const NAME_MAX_BYTES: usize = 1024;

/// The longest path a program on the target takes (Linux's `PATH_MAX`,
/// the terminating NUL byte included).
pub const PATH_MAX_BYTES: usize = 4095;

fn string(value: &Value, field: &str) -> Result<String> {
    match value {
        Value::String(s) => Ok(s.clone()),
        _ => bail!("{field}: expected a string, got {}", kind(value)),
    }
}

fn nullable_string(value: &Value, field: &str) -> Result<Option<String>> {
    match value {
        Value::Null => Ok(None),
        _ => string(value, field).map(Some),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::origin;
    use serde_json::json;

    fn parse(s: &str) -> Target {
        Target::parse(s, &origin()).unwrap_or_else(|e| panic!("{s:?}: {e:#}"))
    }

    fn refused(s: &str) -> String {
        format!("{:#}", Target::parse(s, &origin()).expect_err(s))
    }

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

    fn target(user: Option<&str>, host: &str, port: Option<&str>, path: &str) -> Target {
        Target {
            user: user.map(Into::into),
            host: host.into(),
            port: port.map(Into::into),
            path: path.into(),
            sudo: false,
            extra_options: vec![],
        }
    }

    #[test]
    fn spec_examples() {
        assert_eq!(
            parse("root@server01:4444/etc/krops"),
            target(Some("root"), "server01", Some("4444"), "/etc/krops")
        );
        assert_eq!(
            parse("server01"),
            target(Some("alice"), "server01", None, "/var/src")
        );
        assert_eq!(
            parse("user@host:22/var/src"),
            target(Some("user"), "host", Some("22"), "/var/src")
        );
    }

    #[test]
    fn krops_readme_examples() {
        assert_eq!(
            parse("root@YOUR_IP_ADDRESS_OR_HOST_NAME_HERE"),
            target(
                Some("root"),
                "YOUR_IP_ADDRESS_OR_HOST_NAME_HERE",
                None,
                "/var/src"
            )
        );
        assert_eq!(
            parse("user@host/path"),
            target(Some("user"), "host", None, "/path")
        );
        assert_eq!(
            parse("@somehost"),
            target(Some(""), "somehost", None, "/var/src")
        );
    }

    #[test]
    fn partial_forms_keep_defaults() {
        assert_eq!(parse(""), origin().default_target());
        assert_eq!(
            parse("/etc/src"),
            target(Some("alice"), "laptop", None, "/etc/src")
        );
        assert_eq!(
            parse("bob@"),
            target(Some("bob"), "laptop", None, "/var/src")
        );
        assert_eq!(
            parse(":2222"),
            target(Some("alice"), "laptop", Some("2222"), "/var/src")
        );
        assert_eq!(
            parse("h:2/a/b c"),
            target(Some("alice"), "h", Some("2"), "/a/b c")
        );
        assert_eq!(
            parse("10.0.0.1"),
            target(Some("alice"), "10.0.0.1", None, "/var/src")
        );
    }

    #[test]
    fn ipv6_literals_go_in_brackets_in_the_string_form() {
        let ok: &[(&str, Target)] = &[
            (
                "root@[::1]:22/var/src",
                target(Some("root"), "::1", Some("22"), "/var/src"),
            ),
            (
                "[2001:db8::1]/var/src",
                target(Some("alice"), "2001:db8::1", None, "/var/src"),
            ),
            ("[::1]", target(Some("alice"), "::1", None, "/var/src")),
            ("@[::1]:2", target(Some(""), "::1", Some("2"), "/var/src")),
            (
                "u@[fe80::1%eth0]/p",
                target(Some("u"), "fe80::1%eth0", None, "/p"),
            ),
            (
                "[::ffff:10.0.0.1]:4/x/[y]",
                target(Some("alice"), "::ffff:10.0.0.1", Some("4"), "/x/[y]"),
            ),
        ];
        for (input, expected) in ok {
            let parsed = parse(input);
            assert_eq!(&parsed, expected, "{input:?}");
            // The string form gives the brackets back, and reads back the same.
            assert_eq!(parse(&parsed.to_string()), parsed, "{input:?}");
        }
        assert_eq!(
            parse("root@[::1]:22/var/src").to_string(),
            "root@[::1]:22/var/src"
        );
        assert_eq!(parse("@[::1]").to_string(), "@[::1]/var/src");
    }

    #[test]
    fn bad_hosts_and_brackets_are_refused_clearly() {
        let bad: &[(&str, &str)] = &[
            ("root@::1/var/src", "must be written in brackets"),
            ("2001:db8::1/var/src", "must be written in brackets"),
            ("root@[::1:22/var/src", "'[' without ']'"),
            ("root@[::1", "'[' without ']'"),
            ("root@::1]:22", "unbalanced brackets"),
            ("host]/p", "unbalanced brackets"),
            ("h[x]/p", "unbalanced brackets"),
            ("[::1]]", "after the ']'"),
            ("[::1]x/p", "after the ']'"),
            ("[::1]:", "the port after ':' is empty"),
            ("[::1]:0", "target.port"),
            (
                "[server01]/p",
                "target.host: [server01] is not an IPv6 address",
            ),
            ("[]/p", "target.host: [] is not an IPv6 address"),
            ("[1.2.3.4]", "is not an IPv6 address"),
            ("[::1%]", "is not an IPv6 address"),
            ("[::1%a b]", "is not an IPv6 address"),
            ("[:::1]", "is not an IPv6 address"),
            ("[-::1]", "is not an IPv6 address"),
        ];
        for (input, message) in bad {
            let err = refused(input);
            assert!(err.contains(message), "{input:?}: {err}");
        }
    }

    #[test]
    fn json_hosts_with_colons_must_be_bare_ipv6_literals() {
        let from = |v: Value| Target::from_json(&v, &origin());
        let t = from(json!({"user": "root", "host": "::1", "port": 22})).unwrap();
        assert_eq!(t, parse("root@[::1]:22"));
        assert_eq!(
            from(json!({"host": "fe80::1%2"})).unwrap().host,
            "fe80::1%2"
        );
        let err = |v: Value| format!("{:#}", from(v).unwrap_err());
        let bad: &[(Value, &str)] = &[
            (
                json!({"host": "[::1]"}),
                "target.host: \"[::1]\" has brackets",
            ),
            (
                json!({"host": "host:22"}),
                "target.host: \"host:22\" contains ':' but is not an IPv6",
            ),
            (json!({"host": "::1%"}), "target.host"),
            (json!({"host": "::g"}), "target.host"),
        ];
        for (value, message) in bad {
            assert!(
                err(value.clone()).contains(message),
                "{value}: {}",
                err(value.clone())
            );
        }
        // `--host` overrides go through the same check.
        let mut overrides = Map::new();
        overrides.insert("host".into(), json!("a:b"));
        let err = Target::from_arg_with("h", &overrides, &origin()).unwrap_err();
        assert!(format!("{err:#}").contains("target.host"));
    }

    #[test]
    fn a_path_with_an_equals_sign_is_refused_because_of_nix_path() {
        // `NIX_PATH=/srv/a=b` is the prefix `/srv/a` for the path `b`, not
        // the directory `/srv/a=b`.
        for input in ["h/srv/a=b", "root@[::1]:22/var/src=x", "/=/var/src"] {
            let err = refused(input);
            assert!(
                err.contains("target.path") && err.contains("'='") && err.contains("NIX_PATH"),
                "{input:?}: {err}"
            );
        }
        let err = Target::from_json(&json!({"path": "/srv/a=b"}), &origin()).unwrap_err();
        assert!(format!("{err:#}").contains("target.path"));
    }

    #[test]
    fn a_path_with_a_colon_is_refused_because_of_nix_path() {
        for input in ["h/a:b", "[::1]:22/var/src:x", "/nix:/var/src"] {
            let err = refused(input);
            assert!(
                err.contains("target.path") && err.contains("NIX_PATH"),
                "{input:?}: {err}"
            );
        }
        let err = Target::from_json(&json!({"path": "/a:b"}), &origin()).unwrap_err();
        assert!(format!("{err:#}").contains("target.path"));
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
    fn refused_targets_name_the_field() {
        assert!(refused("-oProxyCommand=touch /tmp/x").contains("target.host"));
        assert!(refused("-oProxyCommand=x@host").contains("target.user"));
        assert!(refused("host:0").contains("target.port"));
        assert!(refused("host:65536").contains("target.port"));
        assert!(refused("host:ssh").contains("target.port"));
        assert!(refused("host:").contains("does not match"));
        assert!(refused("host:/p").contains("does not match"));
        assert!(refused("ho st").contains("target.host"));
        assert!(refused("a\nb@host").contains("target.user"));
        assert!(refused("host\t").contains("target.host"));
    }

    #[test]
    fn json_object_fills_only_named_fields() {
        let t = Target::from_json(
            &json!({"host": "h", "port": 22, "sudo": true, "extraOptions": ["-o", "LogLevel=DEBUG"]}),
            &origin(),
        )
        .unwrap();
        assert_eq!(t.user.as_deref(), Some("alice"));
        assert_eq!(t.port.as_deref(), Some("22"));
        assert_eq!(t.path, "/var/src");
        assert!(t.sudo);
        assert_eq!(t.extra_options, ["-o", "LogLevel=DEBUG"]);
        let t = Target::from_json(&json!({"user": null, "port": "2"}), &origin()).unwrap();
        assert_eq!(t.user, None);
        assert_eq!(t.port.as_deref(), Some("2"));
    }

    #[test]
    fn json_object_errors_name_the_field() {
        let err = |v: Value| format!("{:#}", Target::from_json(&v, &origin()).unwrap_err());
        assert!(err(json!({"hots": "h"})).contains("target.hots: unknown field"));
        assert!(err(json!({"path": "var/src"})).contains("target.path"));
        assert!(err(json!({"sudo": "yes"})).contains("target.sudo: expected a boolean"));
        assert!(err(json!({"extraOptions": ["-v", 1]})).contains("target.extraOptions[1]"));
        assert!(err(json!({"port": 70000})).contains("target.port"));
        assert!(err(json!({"host": "-oProxyCommand=x"})).contains("target.host"));
        assert!(err(json!({"host": "root@h"})).contains("target.host: \"root@h\" contains '@'"));
        assert!(err(json!({"host": "h/var/src"})).contains("target.host"));
        assert!(err(json!({"user": "a:b"})).contains("target.user"));
        assert!(err(json!({"path": "/var/src\n/etc"})).contains("target.path"));
        assert!(err(json!({"path": "/var/\tsrc"})).contains("control character"));
        assert!(err(json!(["h"])).contains("expected a string or an object"));
        assert!(err(json!({"extraOptions": ["-o", "A=b\nC=d"]}))
            .contains("target.extraOptions[1]: \"A=b\\nC=d\" contains a control character"));
        assert!(err(json!({"host": "h".repeat(1025)})).contains("is too long"));
        assert!(
            err(json!({"path": format!("/{}", "p".repeat(4095))})).contains("target.path: \"/ppp")
        );
        assert!(Target::from_json(
            &json!({"path": format!("/{}", "p".repeat(4094))}),
            &origin()
        )
        .is_ok());
    }

    #[test]
    fn a_huge_refused_field_is_shown_cut_short() {
        let err = refused(&format!("{}@h", "-".repeat(100_000)));
        assert!(err.len() < 400, "{err}");
    }

    #[test]
    fn from_arg_accepts_both_forms() {
        let t = Target::from_arg(r#" {"host": "h", "path": "/p"}"#, &origin()).unwrap();
        assert_eq!((t.host.as_str(), t.path.as_str()), ("h", "/p"));
        assert_eq!(Target::from_arg("h/p", &origin()).unwrap(), t);
        assert!(
            format!("{:#}", Target::from_arg("{", &origin()).unwrap_err()).contains("malformed")
        );
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

    /// Valid targets of every shape: a user or none (an empty one lets
    /// ssh's config choose), a host name or an IPv6 literal with or without
    /// a zone, a port or none, a path of any characters but control
    /// characters, ':' and '=', sudo, ssh options.
    fn valid_target() -> impl proptest::strategy::Strategy<Value = Target> {
        use proptest::prelude::*;
        let user = proptest::option::of(prop_oneof![
            Just(String::new()),
            "[a-z_][a-z0-9_.-]{0,11}",
            "[a-z]{1,6}@[a-z]{1,6}\\.example",
        ]);
        let host = prop_oneof![
            "[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?(\\.[a-z0-9]{1,8}){0,3}",
            any::<[u16; 8]>().prop_map(|words| Ipv6Addr::from(words).to_string()),
            (any::<[u16; 8]>(), "[a-z0-9]{1,6}")
                .prop_map(|(words, zone)| format!("{}%{zone}", Ipv6Addr::from(words))),
        ];
        let port = proptest::option::of((1..=65535u32).prop_map(|port| port.to_string()));
        let path = proptest::collection::vec("[^\\x00-\\x1f\\x7f-\\u{9f}:=/]{1,12}", 0..4)
            .prop_map(|parts| format!("/{}", parts.join("/")));
        let options = proptest::collection::vec("[^\\x00-\\x1f\\x7f-\\u{9f}]{0,16}", 0..4);
        (user, host, port, path, any::<bool>(), options).prop_map(
            |(user, host, port, path, sudo, extra_options)| Target {
                user,
                host,
                port,
                path,
                sudo,
                extra_options,
            },
        )
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

        /// Any valid target → JSON → parse is the identity: as an object
        /// (`Target::from_json`), as `--target` text (`Target::from_arg`,
        /// through the strict JSON parser), and in the string form when
        /// that can say it all (no sudo, no ssh options, a user without '@').
        #[test]
        fn any_valid_target_reads_back_from_its_json(target in valid_target()) {
            proptest::prop_assert!(target.validate().is_ok(), "{:?}: {:#}", target, target.validate().unwrap_err());
            for origin in [origin(), Origin { user: None, host: "other".into() }] {
                let json = serde_json::to_value(&target).unwrap();
                proptest::prop_assert_eq!(&Target::from_json(&json, &origin).unwrap(), &target);
                let text = serde_json::to_string(&target).unwrap();
                proptest::prop_assert_eq!(&Target::from_arg(&text, &origin).unwrap(), &target);
                if target.user.as_deref().is_some_and(|user| !user.contains('@'))
                    && !target.sudo
                    && target.extra_options.is_empty()
                {
                    let string = target.to_string();
                    proptest::prop_assert_eq!(&Target::from_arg(&string, &origin).unwrap(), &target);
                }
            }
        }
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
