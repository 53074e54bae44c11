//! End-to-end: each tool's help, version, man page and shell completions
//! (README: Man pages and completions). `xtask dist` (what `cargo xtask dist DIR` runs, and the Nix
//! package at build time) writes the man pages and completions from the
//! tools' clap commands; here they are checked against what the built tools
//! really accept (their `--help`), by the real man tooling (groff) and the
//! real shells (bash, zsh, fish). Every example of every `--help` is run.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use krops_tests::{Output, World};
use serde_json::{json, Value};

const TOOLS: [&str; 5] = [
    "mktarget",
    "populate",
    "krops-deploy",
    "krops-test",
    "krops-command",
];

/// Runs `xtask dist DIR` into the world; returns DIR.
fn dist(world: &World) -> PathBuf {
    let dir = world.path("dist");
    let mut cmd = world.command(world.tool("xtask"));
    cmd.arg("dist").arg(&dir);
    world.run_command(&mut cmd, b"").assert_success();
    dir
}

/// The files `dist` writes for `tool`: man page, bash, zsh, fish completion.
fn dist_files(dir: &Path, tool: &str) -> [PathBuf; 4] {
    [
        dir.join(format!("share/man/man1/{tool}.1")),
        dir.join(format!("share/bash-completion/completions/{tool}")),
        dir.join(format!("share/zsh/site-functions/_{tool}")),
        dir.join(format!("share/fish/vendor_completions.d/{tool}.fish")),
    ]
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_else(|err| panic!("cannot read {}: {err}", path.display()))
}

fn help(world: &World, tool: &str) -> String {
    world
        .run(tool, &["--help"], b"")
        .assert_success()
        .stdout_str()
}

/// The options (`-h`, `--help`, `--target`, …) of `--help`'s Options section.
fn help_options(help: &str) -> BTreeSet<String> {
    let section = help
        .split("\nOptions:\n")
        .nth(1)
        .unwrap_or_else(|| panic!("no Options section in:\n{help}"));
    let section = section.split("\nExamples:\n").next().unwrap();
    section
        .lines()
        // An option's own line; its description is indented further.
        .filter(|line| line.len() - line.trim_start().len() <= 6)
        .flat_map(option_words)
        .collect()
}

/// The options named at the start of an option line, `-h, --help` or
/// `--target <TARGET>`.
fn option_words(line: &str) -> Vec<String> {
    line.split(|c: char| c == ',' || c.is_whitespace())
        .take_while(|word| word.is_empty() || word.starts_with('-'))
        .filter(|word| word.starts_with('-'))
        .map(str::to_owned)
        .collect()
}

/// The options of the man page's OPTIONS section: the line after each `.TP`.
fn man_options(page: &str) -> BTreeSet<String> {
    let options = page
        .split("\n.SH OPTIONS\n")
        .nth(1)
        .unwrap_or_else(|| panic!("no OPTIONS section in:\n{page}"));
    let options = options.split("\n.SH ").next().unwrap();
    let lines: Vec<&str> = options.lines().collect();
    lines
        .windows(2)
        .filter(|pair| pair[0] == ".TP")
        .flat_map(|pair| {
            let plain = pair[1]
                .replace("\\-", "-")
                .replace("\\fB", "")
                .replace("\\fI", "")
                .replace("\\fR", "");
            option_words(&plain)
        })
        .collect()
}

fn long(options: &BTreeSet<String>) -> BTreeSet<String> {
    options
        .iter()
        .filter(|option| option.starts_with("--"))
        .cloned()
        .collect()
}

fn words(text: &str) -> BTreeSet<String> {
    text.split_whitespace().map(str::to_owned).collect()
}

#[test]
fn dist_writes_a_man_page_and_completions_for_every_tool() {
    let world = World::new();
    let dir = dist(&world);
    for tool in TOOLS {
        for path in dist_files(&dir, tool) {
            assert!(
                !read(&path).trim().is_empty(),
                "{} is empty",
                path.display()
            );
        }
        let page = read(&dist_files(&dir, tool)[0]);
        for section in ["NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS", "EXAMPLES"] {
            assert!(
                page.contains(&format!("\n.SH {section}\n")),
                "{tool}.1 has no {section} section:\n{page}"
            );
        }
    }
}

#[test]
fn man_pages_list_exactly_the_options_of_help() {
    let world = World::new();
    let dir = dist(&world);
    for tool in TOOLS {
        let from_help = help_options(&help(&world, tool));
        assert!(
            from_help.contains("--help") && from_help.contains("--version"),
            "{tool}: {from_help:?}"
        );
        let page = read(&dist_files(&dir, tool)[0]);
        assert_eq!(man_options(&page), from_help, "{tool}: man page vs --help");
    }
}

#[test]
fn man_pages_render_without_warnings() {
    let world = World::new();
    let dir = dist(&world);
    for tool in TOOLS {
        let page = &dist_files(&dir, tool)[0];
        // -k: through preconv, as man does (the pages have → and …).
        let mut cmd = world.command("groff");
        cmd.args(["-k", "-man", "-Tutf8", "-ww"]).arg(page);
        let out = world.run_command(&mut cmd, b"");
        out.assert_success();
        assert_eq!(out.stderr_str(), "", "groff warns about {}", page.display());
        let text = out.stdout_str();
        // The examples are kept as lines, as a user copies them.
        let example = help(&world, tool)
            .lines()
            .find_map(|line| line.trim().strip_prefix("$ ").map(str::to_owned))
            .unwrap();
        assert!(
            text.contains(&format!("$ {example}\n")),
            "{tool}: {example:?} not in the rendered page:\n{text}"
        );
    }
}

#[test]
fn bash_completions_parse_and_complete_every_option() {
    let world = World::new();
    let dir = dist(&world);
    for tool in TOOLS {
        let file = &dist_files(&dir, tool)[1];
        let mut cmd = world.command("bash");
        cmd.arg("-n").arg(file);
        world.run_command(&mut cmd, b"").assert_success();
        // What bash offers for `TOOL --<TAB>`, through the function the
        // file registers with `complete -F`.
        let script = format!(
            "set -e\n. {file}\n\
             function=$(complete -p {tool} | sed 's/.* -F \\([^ ]*\\) .*/\\1/')\n\
             COMP_WORDS=({tool} --); COMP_CWORD=1; COMP_LINE='{tool} --'; COMP_POINT=${{#COMP_LINE}}\n\
             \"$function\" {tool} -- {tool}\n\
             printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            file = file.display()
        );
        let mut cmd = world.command("bash");
        cmd.arg("-c").arg(&script);
        let offered = world
            .run_command(&mut cmd, b"")
            .assert_success()
            .stdout_str();
        assert_eq!(
            words(&offered),
            long(&help_options(&help(&world, tool))),
            "{tool}: bash completes `{tool} --` with"
        );
    }
}

#[test]
fn fish_completions_parse_and_complete_every_option() {
    let world = World::new();
    let dir = dist(&world);
    for tool in TOOLS {
        let file = &dist_files(&dir, tool)[3];
        let mut cmd = world.command("fish");
        cmd.arg("--no-config").arg("-n").arg(file);
        world.run_command(&mut cmd, b"").assert_success();
        let mut cmd = world.command("fish");
        cmd.arg("--no-config").arg("-c").arg(format!(
            "source {}; complete -C '{tool} --'",
            file.display()
        ));
        let offered = world
            .run_command(&mut cmd, b"")
            .assert_success()
            .stdout_str();
        // One line per candidate: the option, a tab, its description.
        let offered: BTreeSet<String> = offered
            .lines()
            .map(|line| line.split('\t').next().unwrap().to_owned())
            .collect();
        assert_eq!(
            offered,
            long(&help_options(&help(&world, tool))),
            "{tool}: fish completes `{tool} --` with"
        );
    }
}

#[test]
fn zsh_completions_parse_and_name_every_option() {
    let world = World::new();
    let dir = dist(&world);
    for tool in TOOLS {
        let file = &dist_files(&dir, tool)[2];
        let mut cmd = world.command("zsh");
        cmd.arg("-n").arg(file);
        world.run_command(&mut cmd, b"").assert_success();
        let text = read(file);
        assert!(text.starts_with(&format!("#compdef {tool}\n")), "{text}");
        assert_eq!(
            zsh_options(&text),
            help_options(&help(&world, tool)),
            "{tool}: zsh's options"
        );
    }
}

/// The options of a zsh completion's `_arguments` specs: '--force[…]',
/// '-h[…]', '*--on=[…]', '(--target)--jobs=[…]'.
fn zsh_options(text: &str) -> BTreeSet<String> {
    let mut options = BTreeSet::new();
    for (start, _) in text.match_indices('-') {
        let before = text[..start].chars().next_back();
        if !matches!(before, Some('\'' | '*' | ')')) {
            continue;
        }
        let rest = &text[start..];
        let end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
            .unwrap_or(rest.len());
        if rest[end..].starts_with('[') || rest[end..].starts_with("=[") {
            options.insert(rest[..end].to_owned());
        }
    }
    options
}

#[test]
fn every_tool_prints_its_version_and_a_one_line_summary() {
    let world = World::new();
    for tool in TOOLS {
        let out = world.run(tool, &["--version"], b"");
        assert_eq!(
            out.assert_success().stdout_str(),
            format!("{tool} {}\n", env!("CARGO_PKG_VERSION"))
        );
        let short = world.run(tool, &["-h"], b"").assert_success().stdout_str();
        let summary = short.lines().next().unwrap();
        assert!(
            summary.len() > 20 && short.contains(&format!("\n\nUsage: {tool} ")),
            "{tool} -h starts with {summary:?}"
        );
    }
}

/// The command lines of `--help`'s examples (`    $ LINE`).
fn help_examples(help: &str) -> Vec<String> {
    let examples = help
        .split("\nExamples:\n")
        .nth(1)
        .unwrap_or_else(|| panic!("no Examples in:\n{help}"));
    examples
        .lines()
        .filter_map(|line| line.trim_start().strip_prefix("$ "))
        .map(str::to_owned)
        .collect()
}

/// Every example of every tool's `--help` runs as written, in a directory
/// with the files they name (sources.json, fleet.json). An example that
/// would reach a host runs with `--dry-run` added (it still parses the
/// command line and checks all its input) and its plan must be valid sh.
#[test]
fn help_examples_work_as_written() {
    let world = World::new();
    let dir = world.mkdir("examples");
    let config = world.write("examples/configuration.nix", "{ }\n");
    let sources = json!({"nixos-config": {"file": config.to_str().unwrap()}});
    world.write("examples/sources.json", sources.to_string());
    let fleet: Value = ["web1", "web2", "db1"]
        .iter()
        .map(|host| {
            let deploy = json!({"target": format!("root@{host}.example.org"), "source": sources});
            (host.to_string(), deploy)
        })
        .collect::<serde_json::Map<_, _>>()
        .into();
    world.write("examples/fleet.json", fleet.to_string());
    let bin = world.tool("mktarget").parent().unwrap().to_owned();
    let path = format!("{}:{}", bin.display(), world.env()["PATH"]);

    for tool in TOOLS {
        let examples = help_examples(&help(&world, tool));
        assert!(examples.len() >= 2, "{tool}: {examples:?}");
        for example in examples {
            let dry = tool != "mktarget";
            let line = if dry && !example.contains("--dry-run") {
                format!("{example} --dry-run")
            } else {
                example.clone()
            };
            let mut cmd = world.command("/bin/sh");
            cmd.args(["-euc", &line])
                .current_dir(&dir)
                .env("PATH", &path);
            let out = world.run_command(&mut cmd, b"");
            out.assert_success();
            if dry {
                check_plan(&world, &out);
            } else {
                let target: Value = serde_json::from_slice(&out.stdout)
                    .unwrap_or_else(|err| panic!("{example}: not JSON ({err})\n{out}"));
                assert_eq!(target["host"], "server01", "{example}\n{out}");
            }
        }
    }
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        3,
        "the dry runs left nothing behind"
    );
}

/// A `--dry-run`'s stdout: a sh script (per host, for a fleet) that `sh -n` accepts.
fn check_plan(world: &World, out: &Output) {
    assert!(
        out.stdout_str().contains("# sentinel check\n"),
        "not a plan:\n{out}"
    );
    let mut cmd = world.command("/bin/sh");
    cmd.arg("-n");
    world.run_command(&mut cmd, &out.stdout).assert_success();
}
