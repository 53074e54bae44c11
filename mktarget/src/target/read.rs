//! Reading a target: krops's string form `[[USER]@]HOST[:PORT][/PATH]`, a
//! JSON object naming some of its fields, or either as a command line
//! gives it; the defaults come from the [`Origin`], and what is read is
//! validated before it is a [`Target`].

use anyhow::{bail, Context, Result};
use serde_json::{Map, Value};

use super::validate::is_ipv6_literal;
use super::{Origin, Target};
use crate::json::{kind, shown, SHOWN_CHARS};

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
}

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
    use crate::target::fixtures::*;
    use std::net::Ipv6Addr;

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
    fn from_arg_accepts_both_forms() {
        let t = Target::from_arg(r#" {"host": "h", "path": "/p"}"#, &origin()).unwrap();
        assert_eq!((t.host.as_str(), t.path.as_str()), ("h", "/p"));
        assert_eq!(Target::from_arg("h/p", &origin()).unwrap(), t);
        assert!(
            format!("{:#}", Target::from_arg("{", &origin()).unwrap_err()).contains("malformed")
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
}
