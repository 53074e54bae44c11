//! Development tasks of the krops-rs workspace, run as `cargo xtask TASK`
//! (an alias in `.cargo/config.toml`).
//!
//! `cargo xtask dist DIR` writes every tool's man page and its bash, zsh and
//! fish completions below DIR. They are made from the tools' own clap
//! `Command`s (each crate's `command()`), so they list exactly the options
//! the tools accept; the Nix package runs it at build time, so nothing
//! generated is checked in.
//!
//! `cargo xtask scripts` lists every shell script the tools include, for
//! `shellcheck` (see `scripts.rs`).

mod scripts;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use clap_complete::Shell;
use mktarget::tool::Example;
use roff::{bold, roman, Roff};

/// Development tasks of the krops-rs workspace.
#[derive(Debug, Parser)]
#[command(name = "xtask", bin_name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Write the tools' man pages and shell completions below DIR
    ///
    /// DIR/share/man/man1/TOOL.1, DIR/share/bash-completion/completions/TOOL,
    /// DIR/share/zsh/site-functions/_TOOL and
    /// DIR/share/fish/vendor_completions.d/TOOL.fish, where a package
    /// installs them (`cargo xtask dist ~/.local` installs them for you).
    Dist {
        /// The prefix to write below (created if missing)
        dir: PathBuf,
    },
    /// List every shell script the tools include, one path a line
    ///
    /// Each `include_str!` of a `.sh` file in the workspace's sources,
    /// relative to the workspace: what `.ci/run` gives `shellcheck -s sh`.
    Scripts,
}

/// A tool, as its man page and completions need it.
#[derive(Debug)]
struct Tool {
    command: clap::Command,
    examples: &'static [Example],
}

/// Every tool of the workspace.
fn tools() -> Vec<Tool> {
    vec![
        Tool {
            command: mktarget::command(),
            examples: mktarget::EXAMPLES,
        },
        Tool {
            command: populate::command(),
            examples: populate::EXAMPLES,
        },
        Tool {
            command: krops_deploy::command(),
            examples: krops_deploy::EXAMPLES,
        },
        Tool {
            command: krops_test::command(),
            examples: krops_test::EXAMPLES,
        },
        Tool {
            command: krops_command::command(),
            examples: krops_command::EXAMPLES,
        },
    ]
}

/// Each file `dist` writes: its path below DIR and its content.
fn dist_files(tools: &[Tool]) -> Result<Vec<(PathBuf, Vec<u8>)>> {
    let names: Vec<&str> = tools.iter().map(|tool| tool.command.get_name()).collect();
    let mut files = Vec::new();
    for tool in tools {
        let name = tool.command.get_name();
        files.push((
            PathBuf::from(format!("share/man/man1/{name}.1")),
            man_page(tool, &names)?,
        ));
        for (shell, path) in [
            (
                Shell::Bash,
                format!("share/bash-completion/completions/{name}"),
            ),
            (Shell::Zsh, format!("share/zsh/site-functions/_{name}")),
            (
                Shell::Fish,
                format!("share/fish/vendor_completions.d/{name}.fish"),
            ),
        ] {
            files.push((PathBuf::from(path), completion(shell, &tool.command)));
        }
    }
    Ok(files)
}

fn completion(shell: Shell, command: &clap::Command) -> Vec<u8> {
    let mut command = command.clone();
    let name = command.get_name().to_owned();
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut command, name, &mut out);
    out
}

/// clap_mangen's page (name, synopsis, description, options, version) with
/// the examples as an EXAMPLES section of their own, kept as written
/// (clap_mangen would fill the `after_help` text into one paragraph), and a
/// SEE ALSO section naming the other tools.
fn man_page(tool: &Tool, all: &[&str]) -> Result<Vec<u8>> {
    let name = tool.command.get_name();
    let command = tool.command.clone().after_help(None::<&str>);
    let mut page = Vec::new();
    clap_mangen::Man::new(command)
        .manual("krops-rs")
        .render(&mut page)
        .with_context(|| format!("rendering the man page of {name}"))?;
    let mut page = String::from_utf8(page).context("clap_mangen wrote something not UTF-8")?;

    let mut roff = Roff::new();
    roff.control("SH", ["EXAMPLES"]);
    for example in tool.examples {
        roff.control("PP", []);
        roff.text([roman(example.what)]);
        roff.control("RS", ["4"]);
        roff.control("nf", []);
        roff.text([roman(format!("$ {}", example.line))]);
        roff.control("fi", []);
        roff.control("RE", []);
    }
    roff.control("SH", ["SEE ALSO"]);
    let mut see_also = Vec::new();
    let others = all.iter().filter(|other| **other != name);
    for other in others.chain(&["ssh", "rsync", "nixos-rebuild"]) {
        if !see_also.is_empty() {
            see_also.push(roman(", "));
        }
        let section = if *other == "nixos-rebuild" {
            "(8)"
        } else {
            "(1)"
        };
        see_also.extend([bold(*other), roman(section)]);
    }
    roff.text(see_also);
    // Our part after clap_mangen's, before its VERSION section; without
    // the preamble `render` starts with, which the page already has.
    let ours = roff.render();
    let ours = &ours[ours.find(".SH EXAMPLES").expect("rendered above")..];
    let at = page.find(".SH VERSION").unwrap_or(page.len());
    page.insert_str(at, ours);
    Ok(page.into_bytes())
}

fn dist(dir: &Path) -> Result<()> {
    for (rel, content) in dist_files(&tools())? {
        let path = dir.join(rel);
        let parent = path.parent().expect("a file below DIR");
        fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
        fs::write(&path, content).with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("xtask: wrote {}", path.display());
    }
    Ok(())
}

fn list_scripts() -> Result<()> {
    for script in scripts::included(&scripts::workspace())? {
        println!("{}", script.display());
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.task {
        Task::Dist { dir } => dist(&dir),
        Task::Scripts => list_scripts(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
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
    fn every_tool_has_a_summary_documented_options_and_examples() {
        for tool in tools() {
            let mut command = tool.command;
            command.build();
            let name = command.get_name().to_owned();
            let about = command.get_about().map(|about| about.to_string());
            assert!(
                about.is_some_and(|about| !about.trim().is_empty() && !about.contains('\n')),
                "{name}: no one-line summary"
            );
            assert!(command.get_version().is_some(), "{name}: no --version");
            for arg in command.get_arguments().filter(|arg| !arg.is_hide_set()) {
                assert!(
                    arg.get_help()
                        .is_some_and(|help| !help.to_string().trim().is_empty()),
                    "{name}: {} is not documented",
                    arg.get_id()
                );
            }
            assert!(tool.examples.len() >= 2, "{name}: fewer than two examples");
            let after_help = command
                .get_after_help()
                .expect("examples in after_help")
                .to_string();
            for example in tool.examples {
                assert!(
                    example.line.split_whitespace().any(|word| word == name),
                    "{name}: the example {:?} does not run {name}",
                    example.line
                );
                assert!(
                    after_help.contains(example.line),
                    "{name}: {:?} not in --help",
                    example.line
                );
            }
        }
    }

    #[test]
    fn dist_writes_a_man_page_and_three_completions_per_tool() {
        let files = dist_files(&tools()).unwrap();
        assert_eq!(files.len(), tools().len() * 4);
        for (path, content) in &files {
            assert!(!content.is_empty(), "{} is empty", path.display());
        }
    }

    #[test]
    fn man_page_has_the_examples_as_written_and_no_extra_section() {
        let tool = tools()
            .into_iter()
            .find(|tool| tool.command.get_name() == "krops-command")
            .unwrap();
        let page =
            String::from_utf8(man_page(&tool, &["mktarget", "krops-command"]).unwrap()).unwrap();
        assert!(!page.contains(".SH EXTRA"), "{page}");
        let examples = page.find(".SH EXAMPLES").expect("EXAMPLES");
        let version = page.find(".SH VERSION").expect("VERSION");
        assert!(
            page.find(".SH OPTIONS").unwrap() < examples && examples < version,
            "{page}"
        );
        // Lines kept (no fill), dashes as dashes, quotes as the \*(Aq the preamble defines.
        assert!(
            page.contains(
                ".nf\n$ krops\\-command \\-\\-fleet fleet.json \\*(Aqdf \\-h \"$1\"\\*(Aq\n.fi\n"
            ),
            "{page}"
        );
        assert!(page.contains("\\fBmktarget\\fR(1)"), "{page}");
        assert_eq!(page.matches(".ds Aq").count(), 2, "one preamble: {page}");
    }
}
