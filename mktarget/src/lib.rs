//! krops targets: what they are, how they are written, and how to run
//! something on one. The other krops tools build on this crate; the
//! `mktarget` binary prints a target as JSON.

pub mod command;
pub mod interrupt;
pub mod json;
pub mod mutex;
pub mod session;
pub mod shell;
pub mod sudo;
pub mod target;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod tool;

use std::io::Write;
use std::process::ExitCode;

use anyhow::Result;
use clap::Parser;
use serde_json::{Map, Value};

pub use command::Cmd;
pub use session::{Multiplex, Session};
pub use sudo::SudoPassword;
pub use target::{Origin, Target};

/// Print a krops target as one JSON object.
///
/// TARGET is krops's string form `[[USER]@]HOST[:PORT][/PATH]` (an IPv6
/// address in brackets: `root@[::1]:22/var/src`), a JSON object naming some of
/// the fields (user, host, port, path, sudo, extraOptions; an IPv6 host without
/// brackets), or `-` to read either from stdin. The path must be absolute and
/// without ':' (it goes into NIX_PATH). Absent parts default to $LOGNAME,
/// $HOSTNAME (else /etc/hostname, else localhost), no port, /var/src, no sudo
/// and no extra ssh options. The options override fields afterwards, like
/// `lib.mkTarget "…" // { … }` in krops.
#[derive(Debug, Parser)]
#[command(name = "mktarget", version, after_help = tool::examples_help(EXAMPLES))]
pub struct Cli {
    /// The target: a string, a JSON object, or `-` for stdin (default: this machine)
    #[arg(default_value = "", allow_hyphen_values = true)]
    target: String,
    /// Log in as USER (an empty USER lets ssh's config decide)
    #[arg(long)]
    user: Option<String>,
    /// The host to reach
    #[arg(long)]
    host: Option<String>,
    /// The ssh port (1-65535)
    #[arg(long)]
    port: Option<String>,
    /// Where the sources go on the target (absolute)
    #[arg(long)]
    path: Option<String>,
    /// Work on the target through sudo
    #[arg(long)]
    sudo: bool,
    /// Pass OPT to ssh; repeat for several words (replaces the target's list)
    #[arg(long = "extra-option", value_name = "OPT", allow_hyphen_values = true)]
    extra_options: Vec<String>,
}

/// What `mktarget --help` and its man page show.
pub const EXAMPLES: &[tool::Example] = &[
    tool::Example {
        what: "Parse krops's string form:",
        line: "mktarget root@server01:4444/etc/krops",
    },
    tool::Example {
        what: "Fill in the fields a JSON object leaves out, then override one:",
        line: r#"echo '{"host": "server01", "sudo": true}' | mktarget - --path /etc/krops"#,
    },
    tool::Example {
        what: "Reach the host through a jump host (one ssh word per --extra-option):",
        line: "mktarget deploy@server01 --extra-option -J --extra-option bastion.example.org",
    },
];

/// The command line `mktarget` parses, for its man page and completions.
pub fn command() -> clap::Command {
    <Cli as clap::CommandFactory>::command()
}

impl Cli {
    fn overrides(&self) -> Map<String, Value> {
        let mut overrides = Map::new();
        let mut set = |key: &str, value: Option<&String>| {
            if let Some(value) = value {
                overrides.insert(key.to_owned(), Value::String(value.clone()));
            }
        };
        set("user", self.user.as_ref());
        set("host", self.host.as_ref());
        set("port", self.port.as_ref());
        set("path", self.path.as_ref());
        if self.sudo {
            overrides.insert("sudo".to_owned(), Value::Bool(true));
        }
        if !self.extra_options.is_empty() {
            overrides.insert("extraOptions".to_owned(), self.extra_options.clone().into());
        }
        overrides
    }
}

pub fn run(cli: Cli) -> Result<ExitCode> {
    let arg = if cli.target == "-" {
        let input = json::read(std::io::stdin(), "the target from stdin")?;
        input.trim_end_matches(['\n', '\r']).to_owned()
    } else {
        cli.target.clone()
    };
    let target = Target::from_arg_with(&arg, &cli.overrides(), &Origin::from_env())?;
    let mut stdout = std::io::stdout().lock();
    serde_json::to_writer(&mut stdout, &target)?;
    writeln!(stdout)?;
    Ok(ExitCode::SUCCESS)
}

pub fn main() -> ExitCode {
    tool::main("mktarget", || run(tool::parse("mktarget")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn overrides_name_only_given_fields() {
        let cli = Cli::parse_from(["mktarget", "h", "--port", "22", "--extra-option", "-v"]);
        let overrides = cli.overrides();
        assert_eq!(
            Value::Object(overrides),
            serde_json::json!({"port": "22", "extraOptions": ["-v"]})
        );
    }
}
