//! The contract between the Rust tools and the Nix API: what both sides
//! write down, each in its own language, checked against each other with the
//! real `nix-instantiate --eval --json --strict`. The Rust side is read from
//! the crates themselves (their constants and clap commands), never copied
//! here, so adding a source type, a writer attribute, a fleet setting or a
//! `--nom` mode on one side only fails here.
//!
//! - the writers' attributes (`pkgs/krops`) are the fleet settings of their
//!   driver plus `target` and `source`, and each becomes an option the tool
//!   has; flake.nix's `lib` has every writer;
//! - `lib.sourceTypes` (what `lib.evalSource` knows) and the README's table
//!   are populate's source types;
//! - `lib.evalSource` and populate accept and refuse the same source names;
//! - `--nom`'s modes (clap's `ValueEnum`) are what a fleet's and writeDeploy's
//!   `useNixOutputMonitor` take and what the README's synopsis lists.

use std::collections::BTreeSet;

use krops_driver::fleet::{Setting, SettingKind};
use krops_tests::World;
use populate::source::Kind as SourceKind;
use serde_json::{json, Value};

/// `pkgs/krops` and `pkgs/populate`, called as callPackage would, with
/// stand-ins that are never built: `writeDash` gives its script's text.
const WRITERS: &str = r#"
  writers = { writeDash = name: text: { inherit name text; }; };
  krops-rs = "/krops-rs";
  kropsPkgs = import (krops + "/pkgs/krops") { inherit writers krops-rs; };
  populatePkg = import (krops + "/pkgs/populate") { inherit writers krops-rs; };
"#;

/// `expr` evaluated by Nix with `lib`, `kropsPkgs` and `populatePkg` in scope.
fn nix_json(world: &World, expr: &str) -> Value {
    world.nix_eval_json(&format!("let {WRITERS} in {expr}"))
}

/// A writer's attributes, each with whether it has a default.
fn writer_args(world: &World, writer: &str) -> Vec<(String, bool)> {
    let args = nix_json(world, &format!("builtins.functionArgs ({writer})"));
    let Value::Object(args) = args else {
        panic!("functionArgs of {writer} gave {args}")
    };
    args.into_iter()
        .map(|(name, default)| (name, default.as_bool().unwrap()))
        .collect()
}

/// What a fleet host of a driver may say: its settings, `target`, `source`
/// and `tags`.
fn fleet_keys(settings: &[Setting]) -> BTreeSet<String> {
    ["target", "source", "tags"]
        .into_iter()
        .chain(settings.iter().map(|s| s.key))
        .map(str::to_owned)
        .collect()
}

/// The long options of a tool, with their dashes (`--cross-deploy`).
fn long_options(command: &clap::Command) -> BTreeSet<String> {
    command
        .get_arguments()
        .filter_map(|arg| arg.get_long())
        .map(|long| format!("--{long}"))
        .collect()
}

/// Every fleet setting becomes an option the driver has (or its SCRIPT).
fn assert_settings_are_options(tool: &str, settings: &[Setting], command: &clap::Command) {
    let options = long_options(command);
    for setting in settings {
        match setting.kind {
            SettingKind::Script => assert!(
                command.get_positionals().any(|arg| arg
                    .get_value_names()
                    .is_some_and(|names| names.iter().any(|name| name.as_str() == setting.option))),
                "{tool}: fleet setting {} is the positional {}, which {tool} does not have",
                setting.key,
                setting.option
            ),
            _ => assert!(
                options.contains(setting.option),
                "{tool}: fleet setting {} becomes {}, which is not an option of {tool}",
                setting.key,
                setting.option
            ),
        }
        for unless in setting.unless {
            assert!(options.contains(*unless), "{tool}: {unless}");
        }
    }
}

#[test]
fn writers_take_what_a_fleet_host_says() {
    let world = World::new();
    for (writer, tool, settings, command) in [
        (
            "kropsPkgs.writeDeploy \"x\"",
            "krops-deploy",
            krops_deploy::FLEET_SETTINGS,
            krops_deploy::command(),
        ),
        (
            "kropsPkgs.writeCommand \"x\"",
            "krops-command",
            krops_command::FLEET_SETTINGS,
            krops_command::command(),
        ),
    ] {
        let args = writer_args(&world, writer);
        let nix: BTreeSet<String> = args.iter().map(|(name, _)| name.clone()).collect();
        assert_eq!(
            nix,
            fleet_keys(settings),
            "{writer}'s attributes (left) are not what a {tool} fleet host may say (right)"
        );
        for (name, has_default) in &args {
            let required = name == "target" || name == "source";
            assert_eq!(
                !has_default, required,
                "{writer}: {name} is required in Nix but not in a fleet, or the other way"
            );
        }
        assert_settings_are_options(tool, settings, &command);
    }
}

/// Writer attributes holding many values, each its own option (as a
/// fleet's `SettingKind::Pairs`): `flakeInputs = { nixpkgs = "nixpkgs"; }`
/// is `--flake-input nixpkgs=nixpkgs`.
const PLURAL_ATTRIBUTES: &[(&str, &str)] = &[("flakeInputs", "--flake-input")];

/// krops-test and populate have no fleet: their writers' attributes besides
/// `target` and `source` are the tools' options of the same name.
#[test]
fn writers_without_a_fleet_take_the_tools_options() {
    let world = World::new();
    for (writer, tool, command) in [
        (
            "kropsPkgs.writeTest \"x\"",
            "krops-test",
            krops_test::command(),
        ),
        ("populatePkg", "populate", populate::command()),
    ] {
        let options = long_options(&command);
        let args = writer_args(&world, writer);
        assert!(args.iter().any(|(name, _)| name == "target"), "{writer}");
        assert!(args.iter().any(|(name, _)| name == "source"), "{writer}");
        for (name, _) in args {
            if name != "target" && name != "source" {
                let option = match PLURAL_ATTRIBUTES.iter().find(|(attr, _)| *attr == name) {
                    Some((_, option)) => option.to_string(),
                    None => format!("--{name}"),
                };
                assert!(
                    options.contains(&option),
                    "{writer} takes {name}, but {tool} has no {option}"
                );
            }
        }
    }
}

/// A stand-in nixpkgs for flake.nix: `callPackage`, overlays, `writers`.
const FAKE_NIXPKGS: &str = r#"{ overlays ? [ ], ... }:
let
  callPackageWith = set: f: args:
    let fn = if builtins.isFunction f then f else import f;
    in fn (builtins.intersectAttrs (builtins.functionArgs fn) set // args);
  base = self: { callPackage = callPackageWith self; writers = { }; };
  extend = f: overlay: self: let super = f self; in super // overlay self super;
  fix = f: let x = f x; in x;
in fix (builtins.foldl' extend base overlays)
"#;

/// flake.nix's `lib.${system}` names the writers again: every one of
/// pkgs/krops's, and populate.
#[test]
fn the_flake_lib_has_every_writer() {
    let world = World::new();
    let fake = world.write("fake-nixpkgs/default.nix", FAKE_NIXPKGS);
    let lib = nix_json(
        &world,
        &format!(
            r#"let
              flake = import (krops + "/flake.nix");
              nixpkgs = {{
                outPath = builtins.dirOf {fake};
                lib.genAttrs = names: f: builtins.listToAttrs (map (name: {{ inherit name; value = f name; }}) names);
              }};
              self = flake.outputs {{ inherit self nixpkgs; }};
            in {{
              flake = builtins.mapAttrs (system: builtins.attrNames) self.lib;
              writers = builtins.attrNames kropsPkgs ++ [ "populate" ];
            }}"#,
            fake = serde_json::to_string(fake.to_str().unwrap()).unwrap(),
        ),
    );
    let writers: BTreeSet<String> = serde_json::from_value(lib["writers"].clone()).unwrap();
    let Value::Object(systems) = &lib["flake"] else {
        panic!("flake lib: {lib}")
    };
    assert!(!systems.is_empty());
    for (system, names) in systems {
        let names: BTreeSet<String> = serde_json::from_value(names.clone()).unwrap();
        assert_eq!(
            names, writers,
            "flake.nix lib.{system} (left), pkgs/krops (right)"
        );
    }
}

#[test]
fn nix_knows_the_source_types_populate_knows() {
    let world = World::new();
    let nix: BTreeSet<String> =
        serde_json::from_value(nix_json(&world, "lib.sourceTypes")).unwrap();
    let rust: BTreeSet<String> = SourceKind::ALL
        .iter()
        .map(|kind| kind.name().to_owned())
        .collect();
    assert_eq!(
        nix, rust,
        "lib.sourceTypes (left) and populate's source types (right) differ"
    );
}

/// The README's table of source types (under "Sources: `populate`").
#[test]
fn the_readme_lists_the_source_types_populate_knows() {
    let readme = std::fs::read_to_string(krops_tests::nix::krops_dir().join("README.md")).unwrap();
    let table = readme
        .split("\n| type | what happens |")
        .nth(1)
        .expect("README: the table of source types");
    let listed: BTreeSet<String> = table
        .lines()
        .skip(2)
        .take_while(|line| line.starts_with('|'))
        .map(|line| line.split('`').nth(1).expect(line).to_owned())
        .collect();
    let rust: BTreeSet<String> = SourceKind::ALL
        .iter()
        .map(|kind| kind.name().to_owned())
        .collect();
    assert_eq!(
        listed, rust,
        "the README's source types (left) and populate's (right)"
    );
}

/// Source names with what both sides must say of them: accepted or not.
fn names() -> Vec<(String, bool)> {
    let mut names: Vec<(String, bool)> = [
        ("nixpkgs", true),
        ("nixos-config", true),
        ("A.b_c-9", true),
        ("x", true),
        ("...", true),
        ("a..b", true),
        (".hidden", true),
        ("populate", true),
        ("x.populate", true),
        ("_populate", true),
        ("", false),
        (".", false),
        ("..", false),
        ("-x", false),
        ("--help", false),
        (".populate", false),
        (".populate-x", false),
        (".populate-lock", false),
        (".populate-pipe.1", false),
        (".populated", false),
        ("a/b", false),
        ("/abs", false),
        ("a b", false),
        ("a\nb", false),
        ("a\tb", false),
        ("a:b", false),
        ("a*b", false),
        ("~x", false),
        ("$x", false),
        ("'x'", false),
        ("\"x\"", false),
        ("a\\b", false),
        ("é", false),
        ("naïve", false),
        ("日本", false),
        ("x\u{200b}", false),
        ("\u{7f}", false),
    ]
    .into_iter()
    .map(|(name, ok)| (name.to_owned(), ok))
    .collect();
    // Lengths around the limit of a file name, in bytes.
    for (len, ok) in [
        (1, true),
        (254, true),
        (255, true),
        (256, false),
        (300, false),
    ] {
        names.push(("n".repeat(len), ok));
    }
    names.push((format!(".populate{}", "x".repeat(250)), false));
    names.push((format!("{}é", "n".repeat(253)), false));
    // Every ASCII character but NUL (a Nix string cannot hold one), alone
    // and inside a name.
    for byte in 1..=0x7fu8 {
        let c = char::from(byte);
        let portable = c.is_ascii_alphanumeric() || "._-".contains(c);
        names.push((format!("a{c}"), portable));
        if c != '.' {
            names.push((c.to_string(), portable && c != '-'));
        }
    }
    names
}

#[test]
fn nix_and_populate_accept_and_refuse_the_same_source_names() {
    let world = World::new();
    let names = names();
    let file = world.write(
        "names.json",
        serde_json::to_string(&names.iter().map(|(name, _)| name).collect::<Vec<_>>()).unwrap(),
    );
    let nix: Vec<bool> = serde_json::from_value(nix_json(
        &world,
        &format!(
            "map (name: (builtins.tryEval (builtins.deepSeq \
               (lib.evalSource {{ ${{name}} = {{ symlink = \"x\"; }}; }}) true)).success) \
             (builtins.fromJSON (builtins.readFile {}))",
            serde_json::to_string(file.to_str().unwrap()).unwrap()
        ),
    ))
    .unwrap();
    assert_eq!(nix.len(), names.len());
    let mut wrong = Vec::new();
    for ((name, expected), nix) in names.iter().zip(nix) {
        let rust = populate::source::from_json(&json!({ name: {"symlink": "x"} }), None).is_ok();
        if rust != *expected || nix != *expected {
            wrong.push(format!(
                "{name:?}: expected {}, populate {}, Nix {}",
                verdict(*expected),
                verdict(rust),
                verdict(nix)
            ));
        }
    }
    assert!(wrong.is_empty(), "source names:\n{}", wrong.join("\n"));
}

fn verdict(accepted: bool) -> &'static str {
    if accepted {
        "accepts"
    } else {
        "refuses"
    }
}

/// The Nix refusal says what populate's does.
#[test]
fn nix_refuses_a_source_name_with_populates_words() {
    let world = World::new();
    for (name, says) in [
        (
            ".populate-x",
            "names starting with .populate are populate's own",
        ),
        ("a/b", "a source name must be one path component"),
        (
            &*"n".repeat(256),
            "at most 255 bytes long; this one has 256",
        ),
    ] {
        let rust =
            populate::source::from_json(&json!({ name: {"symlink": "x"} }), None).expect_err(name);
        assert!(format!("{rust:#}").contains(says), "populate: {rust:#}");
        world
            .nix_eval(&format!(
                "lib.evalSource {{ {} = {{ symlink = \"x\"; }}; }}",
                serde_json::to_string(name).unwrap()
            ))
            .assert_failure()
            .assert_stderr_contains(says);
    }
}

#[test]
fn nom_modes_come_from_the_option_everywhere() {
    let modes: Vec<String> = krops_deploy::command()
        .get_arguments()
        .find(|arg| arg.get_long() == Some("nom"))
        .expect("krops-deploy --nom")
        .get_possible_values()
        .iter()
        .map(|value| value.get_name().to_owned())
        .collect();
    assert!(modes.contains(&"opportunistic".to_owned()), "{modes:?}");

    // A fleet's useNixOutputMonitor.
    let setting = krops_deploy::FLEET_SETTINGS
        .iter()
        .find(|s| s.key == "useNixOutputMonitor")
        .expect("the fleet setting useNixOutputMonitor");
    let SettingKind::Choice(choices) = setting.kind else {
        panic!("useNixOutputMonitor is a {:?}", setting.kind)
    };
    assert_eq!(choices(), modes, "the fleet's useNixOutputMonitor");

    // writeDeploy's: each mode and both booleans become --nom, anything
    // else is refused with the list of modes.
    let world = World::new();
    let deploy = |nom: &str| {
        format!(
            "(kropsPkgs.writeDeploy \"x\" {{ target = \"root@h\"; source = {{ }}; \
             useNixOutputMonitor = {nom}; }}).text"
        )
    };
    for mode in &modes {
        let text = nix_json(&world, &deploy(&serde_json::to_string(mode).unwrap()));
        assert!(
            text.as_str().unwrap().contains(&format!("--nom {mode}")),
            "writeDeploy useNixOutputMonitor = {mode:?}: {text}"
        );
    }
    for (nix, mode) in [("true", "true"), ("false", "false")] {
        let text = nix_json(&world, &deploy(nix));
        assert!(text.as_str().unwrap().contains(&format!("--nom {mode}")));
    }
    world
        .nix_eval(&format!("let {WRITERS} in {}", deploy("\"fancy\"")))
        .assert_failure()
        .assert_stderr_contains(&format!("is not one of {}\n", modes.join(", ")));

    // The README's synopsis of krops-deploy.
    let readme = std::fs::read_to_string(krops_tests::nix::krops_dir().join("README.md")).unwrap();
    let synopsis = readme
        .split("[--nom ")
        .nth(1)
        .and_then(|rest| rest.split(']').next())
        .expect("README: krops-deploy's synopsis names --nom's modes");
    assert_eq!(synopsis, modes.join("|"), "README's --nom modes");
}
