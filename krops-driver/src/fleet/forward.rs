//! What of the fleet run's own command line reaches every host's run.

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::Result;

use super::file::*;
use super::FLEET_OPTIONS;

/// What of our own command line every host's run gets.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Forwarded {
    /// The words, without the fleet's options.
    pub words: Vec<String>,
    /// The long options among them (`--operation`), which win over a host's settings.
    pub given: BTreeSet<String>,
    /// Whether they hold a positional argument (krops-command's SCRIPT).
    pub positional: bool,
}

impl Forwarded {
    /// The names of the `NAME=VALUE` pairs the command line gives `option`
    /// (`--flake-input nixpkgs=np` and `--flake-input=nixpkgs=np` alike).
    fn pair_names(&self, option: &str) -> BTreeSet<&str> {
        let prefix = format!("{option}=");
        let mut names = BTreeSet::new();
        let mut words = self.words.iter();
        while let Some(word) = words.next() {
            let pair = if word == option {
                words.next().map(String::as_str)
            } else {
                word.strip_prefix(&prefix)
            };
            names.extend(pair.map(pair_name));
        }
        names
    }
}

/// The `NAME` of a `NAME=VALUE` pair.
fn pair_name(pair: &str) -> &str {
    pair.split_once('=').map_or(pair, |(name, _)| name)
}

/// Splits our arguments (without the program name) as `command` reads
/// them and drops the fleet's options, so every other option reaches each
/// host as it was given, including options added to the tool later.
pub fn forwarded(command: &clap::Command, args: &[String]) -> Forwarded {
    let takes_value = |long: &str| {
        command
            .get_arguments()
            .find(|arg| arg.get_long() == Some(long))
            .map(|arg| {
                (
                    arg.get_id().as_str().to_owned(),
                    arg.get_action().takes_values(),
                )
            })
    };
    let mut out = Forwarded::default();
    let mut words = args.iter();
    while let Some(word) = words.next() {
        if word == "--" {
            let rest: Vec<String> = words.by_ref().cloned().collect();
            out.positional |= !rest.is_empty();
            out.words.push(word.clone());
            out.words.extend(rest);
            break;
        }
        let Some(long) = word.strip_prefix("--") else {
            // A short option or a positional argument.
            out.positional |= !word.starts_with('-') || word == "-";
            out.words.push(word.clone());
            continue;
        };
        let (name, inline_value) = match long.split_once('=') {
            Some((name, _)) => (name, true),
            None => (long, false),
        };
        let (id, takes) = takes_value(name).unwrap_or_else(|| (name.to_owned(), false));
        let value = if takes && !inline_value {
            words.next()
        } else {
            None
        };
        if FLEET_OPTIONS.contains(&id.as_str()) {
            continue;
        }
        out.given.insert(format!("--{name}"));
        out.words.push(word.clone());
        out.words.extend(value.cloned());
    }
    // A trailing `--` with nothing after it would swallow a host's SCRIPT.
    if out.words.last().is_some_and(|w| w == "--") && !out.positional {
        out.words.pop();
    }
    out
}

/// A host's command line (without the program): its target and sources,
/// its settings the command line does not override, then the command line.
pub fn host_args(host: &Host, sources_file: &Path, forwarded: &Forwarded) -> Result<Vec<String>> {
    let mut args = vec![
        "--target".to_owned(),
        serde_json::to_string(&host.target)?,
        "--sources".to_owned(),
        sources_file.display().to_string(),
    ];
    let mut script = None;
    for (setting, words) in &host.settings {
        match setting.kind {
            SettingKind::Script if !forwarded.positional => script = words.first().cloned(),
            SettingKind::Script => {}
            // Pairs win one name at a time: `--flake-input home-manager=hm`
            // adds to a host's `flakeInputs`, and its nixpkgs stays
            // overridden (README: Flakes).
            SettingKind::Pairs if forwarded.given.contains(setting.option) => {
                let given = forwarded.pair_names(setting.option);
                let prefix = format!("{}=", setting.option);
                args.extend(
                    words
                        .iter()
                        .filter(|word| {
                            let pair = word.strip_prefix(&prefix).unwrap_or(word);
                            !given.contains(pair_name(pair))
                        })
                        .cloned(),
                );
            }
            _ if forwarded.given.contains(setting.option) => {}
            _ if setting
                .unless
                .iter()
                .any(|option| forwarded.given.contains(*option)) => {}
            _ => args.extend(words.iter().cloned()),
        }
    }
    args.extend(forwarded.words.iter().cloned());
    if let Some(script) = script {
        args.extend(["--".to_owned(), script]);
    }
    Ok(args)
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;
    use crate::fleet::file::tests::{host, SETTINGS};
    use mktarget::testing::origin;

    fn cli() -> clap::Command {
        clap::Command::new("t")
            .arg(clap::Arg::new("fleet").long("fleet"))
            .arg(clap::Arg::new("jobs").long("jobs"))
            .arg(clap::Arg::new("on").long("on"))
            .arg(clap::Arg::new("operation").long("operation"))
            .arg(
                clap::Arg::new("force")
                    .long("force")
                    .action(clap::ArgAction::SetTrue),
            )
            .arg(
                clap::Arg::new("preview")
                    .long("preview")
                    .action(clap::ArgAction::SetTrue),
            )
            .arg(clap::Arg::new("script"))
    }

    fn strings(words: &[&str]) -> Vec<String> {
        words.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn forwarded_drops_only_the_fleets_options() {
        let out = forwarded(
            &cli(),
            &strings(&[
                "--fleet",
                "-",
                "--force",
                "--jobs=2",
                "--operation",
                "--on",
                "--on",
                "a,b",
                "--new-flag",
            ]),
        );
        // `--operation`'s value is `--on` (as clap reads it), kept.
        assert_eq!(
            out.words,
            strings(&["--force", "--operation", "--on", "--new-flag"])
        );
        assert_eq!(
            out.given,
            ["--force", "--operation", "--new-flag"]
                .map(String::from)
                .into()
        );
        assert!(!out.positional);
        let out = forwarded(&cli(), &strings(&["--fleet=f", "echo", "hi"]));
        assert_eq!(out.words, strings(&["echo", "hi"]));
        assert!(out.positional);
        let out = forwarded(&cli(), &strings(&["--fleet", "f", "--"]));
        assert!(out.words.is_empty() && !out.positional);
        let out = forwarded(&cli(), &strings(&["--", "-x"]));
        assert_eq!(out.words, strings(&["--", "-x"]));
        assert!(out.positional);
    }

    #[test]
    fn host_args_let_the_command_line_win() {
        let web1 = host(json!({
            "target": "root@web1/srv", "source": {},
            "operation": "boot", "force": true, "command": "-echo",
        }));
        let file = Path::new("/tmp/x/web1.json");
        let args = host_args(&web1, file, &forwarded(&cli(), &strings(&["--dry-run"]))).unwrap();
        assert_eq!(args[0], "--target");
        assert!(args[1].contains("\"path\":\"/srv\""), "{}", args[1]);
        assert_eq!(
            args[2..],
            strings(&[
                "--sources",
                "/tmp/x/web1.json",
                "--operation=boot",
                "--force",
                "--dry-run",
                "--",
                "-echo"
            ])
        );
        let cli_wins = forwarded(&cli(), &strings(&["--operation", "test", "--force", "ls"]));
        let args = host_args(&web1, file, &cli_wins).unwrap();
        assert_eq!(
            args[4..],
            strings(&["--operation", "test", "--force", "ls"])
        );
    }

    #[test]
    fn a_setting_the_command_line_makes_moot_is_left_out() {
        let web1 = host(json!({"target": "t", "source": {}, "confirmTimeout": 30}));
        let file = Path::new("/tmp/x/web1.json");
        let args = host_args(&web1, file, &forwarded(&cli(), &[])).unwrap();
        assert_eq!(args[4..], strings(&["--confirm-timeout=30"]));
        let preview = forwarded(&cli(), &strings(&["--preview"]));
        let args = host_args(&web1, file, &preview).unwrap();
        assert_eq!(args[4..], strings(&["--preview"]));
    }

    #[test]
    fn keys_become_a_file_s_json_and_are_checked_as_the_host_would() {
        let settings = [crate::keys::SETTING];
        let fleet = |keys: Value| {
            let fleet = json!({"web1": {"target": "t", "source": {}, "keys": keys}});
            parse(&fleet.to_string(), &settings, &origin(), None)
        };
        let keys = json!({"db": {"keyCommand": ["print-db"], "user": "postgres"}});
        let hosts = fleet(keys.clone()).unwrap();
        let words = &hosts[0].settings[0].1;
        assert_eq!(words.len(), 1);
        assert_eq!(serde_json::from_str::<Value>(&words[0]).unwrap(), keys);
        let err = fleet(json!({"db": {"keyCommand": ["x"], "permissions": "rw"}})).unwrap_err();
        assert!(
            format!("{err:#}").starts_with("fleet.web1.keys: keys.db.permissions: \"rw\""),
            "{err:#}"
        );
        assert!(fleet(json!(null)).unwrap()[0].settings[0].1.is_empty());
    }

    #[test]
    fn a_terminal_of_its_own_is_a_usage_error_in_a_fleet() {
        let fleet = |tty: Value| {
            let fleet = json!({"web1": {"target": "t", "source": {}, "allocateTTY": tty}});
            parse(&fleet.to_string(), SETTINGS, &origin(), None)
        };
        assert!(fleet(json!(false)).unwrap()[0].settings[0].1.is_empty());
        let err = fleet(json!(true)).unwrap_err();
        assert!(mktarget::tool::is_usage(&err), "{err:#}");
        assert_eq!(
            format!("{err:#}"),
            "fleet.web1.allocateTTY: true does not go with --fleet: no terminal"
        );
        let err = fleet(json!("yes")).unwrap_err();
        assert!(!mktarget::tool::is_usage(&err), "{err:#}");
        assert!(format!("{err:#}").contains("expected a boolean"), "{err:#}");
    }
}
