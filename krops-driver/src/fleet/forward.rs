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
            Kind::Script if !forwarded.positional => script = words.first().cloned(),
            Kind::Script => {}
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
