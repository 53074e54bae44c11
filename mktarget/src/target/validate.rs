//! What a target may not be: what ssh, rsync, the shell or NIX_PATH would
//! misread, refused with the field named.

use std::net::Ipv6Addr;

use anyhow::{bail, Result};

use super::Target;
use crate::json::shown;

impl Target {
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
}

/// An IPv6 address as ssh takes it, optionally with a `%zone` (an interface
/// name or index).
pub(super) fn is_ipv6_literal(host: &str) -> bool {
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

#[cfg(test)]
mod tests {
    use crate::target::fixtures::*;

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
    fn a_huge_refused_field_is_shown_cut_short() {
        let err = refused(&format!("{}@h", "-".repeat(100_000)));
        assert!(err.len() < 400, "{err}");
    }
}
