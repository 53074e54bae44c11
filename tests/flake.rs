//! End-to-end: flake mode (`--flake NAME[/DIR][#ATTR]`, `--flake-input
//! INPUT=SOURCE`, fleets' `flake` and `flakeInputs`, the writers') against
//! the REAL nixos-rebuild on the world's NixOS machines: the flake and its
//! inputs are synced sources, built on the build target with no network.
//! The flakes here say `inputs.nixpkgs.url = "github:…"`, as NixOS flakes
//! do; the deploys override it with a synced copy of the real program's
//! fake nixpkgs (a flake with `lib.nixosSystem`), so nothing reaches for
//! GitHub, and an input that is not overridden fails with nix's own
//! message. Also: bad flake options refused before anything runs. Without
//! the real program (`$KROPS_NIXOS_REBUILD`), those tests say `skipped:`.

use std::fs;
use std::path::{Path, PathBuf};

use krops_tests::nix::{krops_dir, nix_str};
use krops_tests::{
    argvs, file_text, forced_args, GitRepo, Output, RealRebuild, World, REBUILD_VARIANT_FILE,
};
use serde_json::{json, Value};

fn deploy(world: &World, args: &[&str], sources: &Value) -> Output {
    world.run("krops-deploy", args, sources.to_string().as_bytes())
}

/// The configuration of the real program's system `marker`, as
/// `World::real_system` builds it from `<nixpkgs/nixos>`: the same
/// text gives the same system through the flake's `lib.nixosSystem`.
fn configuration(marker: &str) -> String {
    format!(
        "{{ config, pkgs, ... }}:\n{{\n  networking.hostName = \"fakenixos\";\n  \
         environment.etc.\"marker\".text = \"{marker}\";\n}}\n"
    )
}

/// A NixOS flake whose `nixosConfigurations.ATTR` is the system `marker`
/// for each `(ATTR, MARKER)`, with nixpkgs from GitHub (as NixOS flakes
/// have it) and `extra` more inputs.
fn flake_nix(configs: &[(&str, &str)], extra: &str) -> String {
    let systems: String = configs
        .iter()
        .map(|(attr, _)| {
            format!(
                "    nixosConfigurations.{} = nixpkgs.lib.nixosSystem {{ system = \"x86_64-linux\"; \
                 modules = [ ./{attr}.nix ]; }};\n",
                nix_str(attr)
            )
        })
        .collect();
    format!(
        "{{\n  inputs.nixpkgs.url = \"github:NixOS/nixpkgs/nixos-24.05\";\n{extra}  \
         outputs = {{ self, nixpkgs, ... }}: {{\n{systems}  }};\n}}\n"
    )
}

/// The flake of [`flake_nix`] as a file tree `rel` of the world.
fn flake_tree(world: &World, rel: &str, configs: &[(&str, &str)]) -> PathBuf {
    for (attr, marker) in configs {
        world.write(&format!("{rel}/{attr}.nix"), configuration(marker));
    }
    world.write(&format!("{rel}/flake.nix"), flake_nix(configs, ""));
    world.path(rel)
}

/// The flake of [`flake_nix`] in a git repo `name` (its `sub` directory,
/// if any), committed.
fn flake_repo(world: &World, name: &str, sub: &str, configs: &[(&str, &str)]) -> GitRepo {
    let repo = world.git_repo(name);
    for (attr, marker) in configs {
        repo.write(&format!("{sub}{attr}.nix"), configuration(marker));
    }
    repo.write(&format!("{sub}flake.nix"), flake_nix(configs, ""));
    repo.write("README", "not part of the flake\n");
    repo.commit("the machines");
    repo
}

/// A git source of `repo` at its HEAD.
fn git_source(repo: &GitRepo) -> Value {
    json!({"git": {"url": repo.url(), "ref": repo.head()}})
}

/// A file source of the directory `dir`.
fn file_source(dir: &Path) -> Value {
    json!({"file": {"path": dir.to_str().unwrap(), "useChecksum": true}})
}

/// The real program's fake nixpkgs (with its `flake.nix`) committed to a
/// git repo `nixpkgs`, as a NixOS user pins nixpkgs: a git source.
fn nixpkgs_repo(world: &World, rr: &RealRebuild) -> GitRepo {
    let repo = world.git_repo("nixpkgs");
    copy_tree(&rr.nixpkgs(), repo.path());
    // A commit of this world's own: nix caches what it fetched by commit,
    // and the world's commits would otherwise be the same in every test.
    repo.write(".krops-test-world", world.root().to_str().unwrap());
    repo.commit("nixpkgs");
    repo
}

fn copy_tree(from: &Path, to: &Path) {
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let dest = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            fs::create_dir_all(&dest).unwrap();
            copy_tree(&entry.path(), &dest);
        } else {
            fs::copy(entry.path(), &dest).unwrap();
        }
    }
}

/// `ACTION SYSTEM`, as [`RealRebuild::activations`] lists them.
fn activation(action: &str, system: &Path) -> String {
    format!("{action} {}", system.display())
}

/// A NixOS host `alias` booted into the real program's system `v1`, and
/// a target on it.
fn booted_host(world: &World, rr: &RealRebuild, alias: &str) -> String {
    let host = world.add_nixos_host(alias);
    world.boot_nixos_host(alias, &world.real_system(rr, "v1"));
    host.target("root", &world.path(&format!("{alias}/src")))
}

#[test]
fn a_path_flake_with_a_synced_nixpkgs_deploys_to_a_remote_target() {
    let world = World::new();
    let Some(rr) = world.real_rebuild() else {
        return;
    };
    let target = booted_host(&world, &rr, "alpha");
    let v2 = world.real_system(&rr, "v2");
    let config = flake_tree(&world, "machines", &[("web1", "v2"), ("web2", "v3")]);
    let nixpkgs = nixpkgs_repo(&world, &rr);
    let sources = json!({"config": file_source(&config), "nixpkgs": git_source(&nixpkgs)});
    let args = forced_args(
        &target,
        &["--flake", "config#web1", "--flake-input", "nixpkgs=nixpkgs"],
    );
    let out = deploy(&world, &args, &sources);
    out.assert_success()
        .assert_stderr_contains("building the system configuration...");
    assert_eq!(world.current_system("alpha"), Some(v2.clone()));
    assert_eq!(world.profile_system("alpha"), Some(v2.clone()));
    assert_eq!(rr.activations(), [activation("switch", &v2)]);
    let src = world.path("alpha/src");
    let src = src.to_str().unwrap();
    assert_eq!(
        argvs(&world.records("nixos-rebuild")),
        [[
            "switch",
            "--flake",
            &format!("path:{src}/config#web1"),
            "--override-input",
            "nixpkgs",
            &format!("git+file://{src}/nixpkgs"),
            "--no-write-lock-file"
        ]]
    );
    // The synced tree stays as it was sent: no lock file written there.
    assert!(!world.path("alpha/src/config/flake.lock").exists());
    rr.assert_machine_untouched();
}

/// This machine's host name: every world host runs here, so it is also
/// what nixos-rebuild reads on a target for a flake without `#ATTR`.
fn host_name() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_owned()
}

/// Reliability (Real nixos-rebuild): a flake without `#ATTR` built on a build target that reaches the target only with its ssh options → krops reads the target's host name itself (the bash program would ask without NIX_SSHOPTS and fail); previewed, built there, activated on the target
#[test]
fn a_git_flake_without_attr_is_previewed_and_built_on_a_build_target() {
    let world = World::new();
    let Some(rr) = world.real_rebuild() else {
        return;
    };
    booted_host(&world, &rr, "alpha");
    let beta = world.add_nixos_host("beta");
    let (v1, v2) = (world.real_system(&rr, "v1"), world.real_system(&rr, "v2"));
    // The build target reaches alpha through the world's ssh config.
    let target = json!({
        "user": "root", "host": "alpha", "path": world.path("alpha/src").to_str().unwrap(),
        "extraOptions": ["-F", world.ssh_config().to_str().unwrap()],
    })
    .to_string();
    // No #ATTR: the target's host name, as nixos-rebuild takes it; the
    // flake in a directory of the repo, nixpkgs a file tree.
    let name = host_name();
    let repo = flake_repo(
        &world,
        "machines",
        "nixos/",
        &[(&name, "v2"), ("other", "v3")],
    );
    let sources = json!({"config": git_source(&repo), "nixpkgs": file_source(&rr.nixpkgs())});
    let build = beta.target("root", &world.path("beta/src"));
    let args = forced_args(
        &target,
        &[
            "--build-target",
            &build,
            "--flake",
            "config/nixos",
            "--flake-input",
            "nixpkgs=nixpkgs",
        ],
    );
    let mut preview = args.clone();
    preview.push("--preview");
    let out = deploy(&world, &preview, &sources);
    out.assert_success().assert_stdout_contains(&format!(
        "running system: {}\nnew system:     {}\n",
        v1.display(),
        v2.display()
    ));
    assert!(rr.activations().is_empty());
    deploy(&world, &args, &sources).assert_success();
    assert_eq!(world.current_system("alpha"), Some(v2.clone()));
    assert_eq!(world.profile_system("alpha"), Some(v2.clone()));
    assert_eq!(world.current_system("beta"), None, "beta only built");
    assert_eq!(rr.activations(), [activation("switch", &v2)]);
    let src = world.path("beta/src");
    let src = src.to_str().unwrap();
    // Named by krops in both: the bash program would ask the target for
    // its name before it applies NIX_SSHOPTS, and not find alpha.
    let with_attr = format!("git+file://{src}/config?dir=nixos#{name}");
    let inputs = [
        "--override-input",
        "nixpkgs",
        &format!("path:{src}/nixpkgs"),
        "--no-write-lock-file",
    ];
    let preview_build = [&["build", "--flake", &with_attr][..], &inputs].concat();
    let switch = [
        &["switch", "--flake", &with_attr][..],
        &inputs,
        &["--target-host", "root@alpha"],
    ]
    .concat();
    assert_eq!(
        argvs(&world.records("nixos-rebuild")),
        [preview_build, switch]
    );
    rr.assert_machine_untouched();
}

#[test]
fn a_sudo_target_builds_a_git_flake_as_root() {
    let world = World::new();
    let Some(rr) = world.real_rebuild() else {
        return;
    };
    booted_host(&world, &rr, "alpha");
    let v3 = world.real_system(&rr, "v3");
    let target = world.sudo_user_target("alpha", true);
    let repo = flake_repo(&world, "machines", "", &[("web1", "v2"), ("web2", "v3")]);
    let nixpkgs = nixpkgs_repo(&world, &rr);
    // nixpkgs as a shallow checkout, as its size makes one: read as such.
    let shallow =
        json!({"git": {"url": nixpkgs.file_url(), "ref": nixpkgs.head(), "shallow": true}});
    let sources = json!({"config": git_source(&repo), "nixpkgs": shallow});
    let args = forced_args(
        &target,
        &["--flake", "config#web2", "--flake-input", "nixpkgs=nixpkgs"],
    );
    deploy(&world, &args, &sources).assert_success();
    assert!(world.path("alpha/src/nixpkgs/.git/shallow").exists());
    assert_eq!(world.current_system("alpha"), Some(v3.clone()));
    assert_eq!(world.profile_system("alpha"), Some(v3));
    let records = world.records("nixos-rebuild");
    let rebuild = records.last().unwrap();
    assert_eq!((rebuild.uid, rebuild.exit), (0, Some(0)));
    assert_eq!(rebuild.argv.first().map(String::as_str), Some("switch"));
    assert_eq!(
        rebuild.argv.last().map(String::as_str),
        Some("--use-remote-sudo")
    );
    assert!(
        rebuild.argv.contains(&"--no-write-lock-file".to_owned()),
        "{rebuild:?}"
    );
    rr.assert_machine_untouched();
}

#[test]
fn a_fleet_deploys_one_flake_to_two_hosts_with_their_own_attributes() {
    let world = World::new();
    let Some(rr) = world.real_rebuild() else {
        return;
    };
    let alpha = booted_host(&world, &rr, "alpha");
    let beta = booted_host(&world, &rr, "beta");
    let (v2, v3) = (world.real_system(&rr, "v2"), world.real_system(&rr, "v3"));
    let repo = flake_repo(&world, "machines", "", &[("web1", "v2"), ("web2", "v3")]);
    let nixpkgs = nixpkgs_repo(&world, &rr);
    let sources = json!({"config": git_source(&repo), "nixpkgs": git_source(&nixpkgs)});
    let host = |target: &str, attr: &str| {
        json!({"target": target, "source": sources, "force": true, "useNixOutputMonitor": false,
               "flake": format!("config#{attr}"), "flakeInputs": {"nixpkgs": "nixpkgs"}})
    };
    let fleet = json!({"alpha": host(&alpha, "web1"), "beta": host(&beta, "web2")});
    let file = world.write("fleet.json", fleet.to_string());
    let out = world.run("krops-deploy", &["--fleet", file.to_str().unwrap()], b"");
    out.assert_success();
    assert_eq!(world.current_system("alpha"), Some(v2.clone()));
    assert_eq!(world.current_system("beta"), Some(v3.clone()));
    // The inputs given on the command line, for every host's own flake.
    let mut swapped = json!({"alpha": host(&alpha, "web2"), "beta": host(&beta, "web1")});
    for name in ["alpha", "beta"] {
        swapped[name].as_object_mut().unwrap().remove("flakeInputs");
    }
    let file = world.write("swapped.json", swapped.to_string());
    let args = [
        "--fleet",
        file.to_str().unwrap(),
        "--flake-input",
        "nixpkgs=nixpkgs",
    ];
    world.run("krops-deploy", &args, b"").assert_success();
    assert_eq!(world.current_system("alpha"), Some(v3));
    assert_eq!(world.current_system("beta"), Some(v2));
    rr.assert_machine_untouched();
}

/// Reliability (Real nixos-rebuild): a confirmed flake switch whose check fails → the watchdog rolls back with the real nixos-rebuild to the system before; exit 1
#[test]
fn a_confirmed_flake_switch_rolls_back_and_ask_activates_what_was_built() {
    let world = World::new();
    let Some(rr) = world.real_rebuild() else {
        return;
    };
    let target = booted_host(&world, &rr, "alpha");
    let (v1, v2) = (world.real_system(&rr, "v1"), world.real_system(&rr, "v2"));
    let config = flake_tree(&world, "machines", &[("web1", "v2")]);
    let nixpkgs = nixpkgs_repo(&world, &rr);
    let sources = json!({"config": file_source(&config), "nixpkgs": git_source(&nixpkgs)});
    let flake = ["--flake", "config#web1", "--flake-input", "nixpkgs=nixpkgs"];
    let confirmed = forced_args(
        &target,
        &[&flake[..], &["--confirm-timeout", "30", "--check", "false"]].concat(),
    );
    let out = deploy(&world, &confirmed, &sources);
    out.assert_code(1)
        .assert_stderr_contains("not confirmed (the check failed)")
        .assert_stderr_contains("root@alpha rolled back to the previous system");
    assert_eq!(world.current_system("alpha"), Some(v1.clone()));
    assert_eq!(world.profile_system("alpha"), Some(v1.clone()));
    assert_eq!(
        rr.activations(),
        [activation("switch", &v2), activation("switch", &v1)]
    );
    // --ask builds the flake's system, shows it, and activates that one.
    let ask = [
        &["--target", &target, "--nom", "false", "--ask"][..],
        &flake,
    ]
    .concat();
    world
        .deploy_on_a_terminal(&ask, &sources, "y\n")
        .assert_success()
        .assert_stdout_contains(&format!("new system:     {}", v2.display()))
        .assert_stdout_contains("Activate? [y/N]");
    assert_eq!(world.current_system("alpha"), Some(v2.clone()));
    assert_eq!(world.profile_system("alpha"), Some(v2.clone()));
    let records = world.records("nixos-rebuild");
    assert_eq!(records.len(), 3, "{records:?}");
    assert_eq!(records[1].argv[..2], ["switch", "--rollback"]);
    assert_eq!(records[2].argv[0], "build");
    rr.assert_machine_untouched();
}

#[test]
fn krops_test_builds_the_flakes_system_and_prints_it() {
    let world = World::new();
    let Some(rr) = world.real_rebuild() else {
        return;
    };
    let (v2, v3) = (world.real_system(&rr, "v2"), world.real_system(&rr, "v3"));
    let name = host_name();
    let config = flake_tree(&world, "machines", &[("web1", "v2"), (&name, "v3")]);
    let nixpkgs = nixpkgs_repo(&world, &rr);
    let sources =
        json!({"config": file_source(&config), "nixpkgs": git_source(&nixpkgs)}).to_string();
    let local = world.path("local-src");
    let local = local.to_str().unwrap();
    let test = |flake: &str| {
        let args = [
            "--target",
            local,
            "--force",
            "--flake",
            flake,
            "--flake-input",
            "nixpkgs=nixpkgs",
        ];
        world.run("krops-test", &args, sources.as_bytes())
    };
    let out = test("config#web1");
    out.assert_success();
    assert_eq!(out.stdout_str(), format!("{}\n", v2.display()));
    // No #ATTR: this machine's host name.
    let out = test("config");
    out.assert_success();
    assert_eq!(out.stdout_str(), format!("{}\n", v3.display()));
    assert!(!world.path("local-src/config/flake.lock").exists());
}

#[test]
fn write_deploy_with_a_flake_deploys_it() {
    let world = World::new();
    let Some(rr) = world.real_rebuild() else {
        return;
    };
    let target = booted_host(&world, &rr, "alpha");
    let v3 = world.real_system(&rr, "v3");
    let repo = flake_repo(&world, "machines", "", &[("web1", "v2"), ("web2", "v3")]);
    let nixpkgs = nixpkgs_repo(&world, &rr);
    let (writers, krops_rs) = world.nix_fixtures();
    let file = world.write(
        "krops.nix",
        format!(
            r#"let
  krops = {krops};
  lib = import "${{krops}}/lib";
  writers = import {writers};
  pkgs.krops = import "${{krops}}/pkgs/krops" {{ inherit writers; krops-rs = {krops_rs}; }};
in pkgs.krops.writeDeploy "deploy-alpha" {{
  source = lib.evalSource [ {{
    config.git = {{ url = {config}; ref = {config_ref}; }};
    nixpkgs.git = {{ url = {nixpkgs}; ref = {nixpkgs_ref}; }};
  }} ];
  target = {target};
  flake = "config#web2";
  flakeInputs = {{ nixpkgs = "nixpkgs"; }};
  force = true;
  useNixOutputMonitor = false;
}}
"#,
            krops = nix_str(krops_dir().to_str().unwrap()),
            writers = nix_str(writers.to_str().unwrap()),
            krops_rs = nix_str(krops_rs.to_str().unwrap()),
            config = nix_str(&repo.url()),
            config_ref = nix_str(&repo.head()),
            nixpkgs = nix_str(&nixpkgs.url()),
            nixpkgs_ref = nix_str(&nixpkgs.head()),
            target = nix_str(&target),
        ),
    );
    let script = world.nix_build(&file, "");
    assert!(
        file_text(&script).contains("--flake-input nixpkgs=nixpkgs"),
        "{}",
        file_text(&script)
    );
    let out = world.run_command(&mut world.command(&script), b"");
    out.assert_success();
    assert_eq!(world.current_system("alpha"), Some(v3));
    rr.assert_machine_untouched();
}

/// Reliability (Real nixos-rebuild): a flake input that is neither overridden nor reachable (GitHub, from a target without network) → the build fails with nix's own message in the error; nothing activated
#[test]
fn an_input_not_synced_fails_with_nixs_own_message() {
    let world = World::new();
    let Some(rr) = world.real_rebuild() else {
        return;
    };
    let target = booted_host(&world, &rr, "alpha");
    let v1 = world.real_system(&rr, "v1");
    world.write("machines/web1.nix", configuration("v2"));
    world.write(
        "machines/flake.nix",
        flake_nix(
            &[("web1", "v2")],
            "  inputs.extra.url = \"github:krops-test/not-synced\";\n",
        ),
    );
    let nixpkgs = nixpkgs_repo(&world, &rr);
    let sources = json!({"config": file_source(&world.path("machines")),
                         "nixpkgs": git_source(&nixpkgs)});
    let args = forced_args(
        &target,
        &["--flake", "config#web1", "--flake-input", "nixpkgs=nixpkgs"],
    );
    let out = deploy(&world, &args, &sources);
    // nix's own words end the error line.
    out.assert_code(1).assert_stderr_contains(
        "krops-deploy: error: nixos-rebuild switch on root@alpha (the target) failed: exit \
         status 1 (error: unable to download \
         'https://api.github.com/repos/krops-test/not-synced/commits/HEAD'",
    );
    assert_eq!(world.current_system("alpha"), Some(v1.clone()));
    assert_eq!(world.profile_system("alpha"), Some(v1));
    assert!(rr.activations().is_empty());
    rr.assert_machine_untouched();
}

#[test]
fn bad_flake_options_are_refused_naming_them_before_anything_runs() {
    let world = World::new();
    let host = world.add_host("alpha");
    let dest = world.path("alpha/src");
    let target = host.target("root", &dest);
    let config = world.write("machines/flake.nix", "{ outputs = _: { }; }\n");
    let config = config.parent().unwrap();
    let sources = json!({"config": file_source(config), "link": {"symlink": "x"},
                         "nixpkgs": {"git": {"url": "https://example.org/nixpkgs", "ref": "main"}}});
    for (args, says) in [
        (
            &["--flake", "nope#web1"][..],
            "--flake \"nope#web1\": \"nope\" is none of the sources (config, link, nixpkgs)",
        ),
        (
            &["--flake", "config#"],
            "--flake \"config#\": '#' with no attribute",
        ),
        (
            &["--flake", "link#web1"],
            "the source \"link\" is a symlink source, not a file tree or a git checkout",
        ),
        (&["--flake", "config/sub#web1"], "has no sub/flake.nix"),
        // nix decodes the fragment: this would build `web1`.
        (
            &["--flake", "config#web%31"],
            "--flake \"config#web%31\": the attribute \"web%31\" holds '%', which a flake \
             reference cannot carry",
        ),
        // Not a URL to nix: it would fail only after populating.
        (&["--flake", "config#web{1}"], "holds '{', which a flake"),
        (
            &["--flake", "config#web1", "--flake-input", "nixpkgs"],
            "--flake-input \"nixpkgs\": expected INPUT=SOURCE",
        ),
        (
            &["--flake", "config#web1", "--flake-input", "nixpkgs=gone"],
            "--flake-input \"nixpkgs=gone\": \"gone\" is none of the sources",
        ),
        (
            &["--flake", "config#web1", "--flake-input", "nixpkgs=link"],
            "\"link\" is a symlink source",
        ),
        (
            &["--flake-input", "nixpkgs=nixpkgs"],
            "--flake-input \"nixpkgs=nixpkgs\": needs --flake",
        ),
    ] {
        let all = forced_args(&target, args);
        let out = deploy(&world, &all, &sources);
        out.assert_code(2).assert_stderr_contains(says);
        assert!(!dest.exists(), "{args:?} changed the target");
        let local = world.path("local-src");
        let mut test = vec!["--target", local.to_str().unwrap(), "--force"];
        test.extend(args);
        let out = world.run("krops-test", &test, sources.to_string().as_bytes());
        out.assert_code(2).assert_stderr_contains(says);
        assert!(!local.exists(), "{args:?} made krops-test's target");
    }
    // A target path nix would not take in a reference's URL.
    let odd = world.path("alpha/s{rc}");
    let odd_target = host.target("root", &odd);
    let args = forced_args(&odd_target, &["--flake", "config#web1"]);
    deploy(&world, &args, &sources)
        .assert_code(2)
        .assert_stderr_contains("holds '{', which a flake reference cannot carry");
    assert!(!odd.exists(), "the odd target path was made");
    // A fleet host's: refused before any host runs.
    let fleet = json!({
        "alpha": {"target": target, "source": sources, "flake": "config#web1",
                  "flakeInputs": {"nixpkgs": "nixpkgs"}},
        "beta": {"target": target, "source": sources, "flake": "config#web1",
                 "flakeInputs": {"nixpkgs": "link"}},
    });
    let file = world.write("fleet.json", fleet.to_string());
    let out = world.run("krops-deploy", &["--fleet", file.to_str().unwrap()], b"");
    out.assert_failure()
        .assert_stderr_contains("\"link\" is a symlink source");
    assert!(!dest.exists(), "the fleet changed the target");
}

#[test]
fn nixos_rebuild_ng_gets_the_same_flake_arguments_and_sudo() {
    // The stand-in, reading options as nixos-rebuild-ng does (its flake
    // options are the bash program's).
    let world = World::new();
    world.add_host("alpha");
    let beta = world.add_host("beta");
    let user = world.sudo_user();
    let dest = world.mkdir("root-owned").join("src");
    let target =
        json!({"user": user, "host": "alpha", "path": dest.to_str().unwrap(), "sudo": true})
            .to_string();
    world.write(&format!("records/{REBUILD_VARIANT_FILE}"), "ng\n");
    let config = world.write("machines/flake.nix", "{ outputs = _: { }; }\n");
    let sources = json!({"config": file_source(config.parent().unwrap()),
                         "nixpkgs": file_source(&world.mkdir("nixpkgs"))});
    let build = beta.target("root", &world.path("beta/src"));
    let flake = ["--flake", "config", "--flake-input", "nixpkgs=nixpkgs"];
    let args = forced_args(&target, &flake);
    let mut with_build = args.to_vec();
    with_build.extend(["--build-target", &build]);
    for args in [&args[..], &with_build] {
        let out = deploy(&world, args, &sources);
        out.assert_success();
        assert!(!out.stderr_str().contains("deprecated"), "{out}");
    }
    let (at, built) = (dest.to_str().unwrap(), world.path("beta/src"));
    let built = built.to_str().unwrap();
    let inputs = |src: &str| {
        [
            "--override-input".to_owned(),
            "nixpkgs".to_owned(),
            format!("path:{src}/nixpkgs"),
            "--no-write-lock-file".to_owned(),
        ]
    };
    let on_target = [
        vec![
            "switch".to_owned(),
            "--flake".to_owned(),
            format!("path:{at}/config"),
        ],
        inputs(at).to_vec(),
        vec!["--sudo".to_owned()],
    ]
    .concat();
    // From the build target, the target's host name named by krops.
    let from_build = [
        vec![
            "switch".to_owned(),
            "--flake".to_owned(),
            format!("path:{built}/config#{}", host_name()),
        ],
        inputs(built).to_vec(),
        vec![
            "--target-host".to_owned(),
            format!("{user}@alpha"),
            "--sudo".to_owned(),
        ],
    ]
    .concat();
    assert_eq!(
        argvs(&world.records("nixos-rebuild")),
        [on_target, from_build]
    );
}

#[test]
fn the_writers_pass_flake_and_flake_inputs_and_refuse_them_malformed() {
    let world = World::new();
    let writer = |writer: &str, args: &str| {
        world.nix_eval(&format!(
            "let k = import (krops + \"/pkgs/krops\") {{ writers = {{ writeDash = name: text: \
             {{ inherit name text; }}; }}; krops-rs = \"/krops-rs\"; }}; \
             in (k.{writer} \"d\" ({{ source = {{ }}; target = \"/tmp/src\"; }} // {args})).text"
        ))
    };
    for name in ["writeDeploy", "writeTest"] {
        let out = writer(
            name,
            "{ flake = \"config#web1\"; flakeInputs = { nixpkgs = \"nixpkgs\"; hm = \"home\"; }; }",
        );
        out.assert_success()
            .assert_stdout_contains("--flake 'config#web1'")
            .assert_stdout_contains("--flake-input hm=home")
            .assert_stdout_contains("--flake-input nixpkgs=nixpkgs");
        for (args, says) in [
            (
                "{ flakeInputs = { nixpkgs = \"nixpkgs\"; }; }",
                "flakeInputs: needs flake",
            ),
            ("{ flake = 3; }", "flake: expected a string, got int"),
            (
                "{ flake = \"c\"; flakeInputs = [ \"nixpkgs\" ]; }",
                "flakeInputs: expected an attribute set",
            ),
            (
                "{ flake = \"c\"; flakeInputs = { nixpkgs = 1; }; }",
                "flakeInputs.nixpkgs: expected a string",
            ),
        ] {
            writer(name, args)
                .assert_failure()
                .assert_stderr_contains(&format!("{name} d: {says}"));
        }
    }
}

/// A fleet host's `flakeInputs` and `--flake-input` on the command line:
/// the command line wins one input at a time, so adding an input there
/// keeps the host's nixpkgs overridden (else its build would reach for
/// GitHub).
#[test]
fn a_fleet_hosts_flake_inputs_are_kept_beside_the_command_lines() {
    let world = World::new();
    let host = world.add_host("alpha");
    let dest = world.path("alpha/src");
    let config = world.write("machines/flake.nix", "{ outputs = _: { }; }\n");
    let sources = json!({"config": file_source(config.parent().unwrap()),
                         "nixpkgs": file_source(&world.path("machines")),
                         "hm": file_source(&world.path("machines"))});
    let fleet = json!({"alpha": {"target": host.target("root", &dest), "source": sources,
                                 "flake": "config#web1",
                                 "flakeInputs": {"nixpkgs": "nixpkgs", "hm": "config"}}});
    let file = world.write("fleet.json", fleet.to_string());
    let fleet = file.to_str().unwrap();
    let dry_run = |more: &[&str]| {
        let args = [&["--fleet", fleet, "--dry-run", "--nom", "false"][..], more].concat();
        let out = world.run("krops-deploy", &args, b"");
        out.assert_success();
        let out = out.stdout_str();
        let line = out
            .lines()
            .find(|line| line.starts_with("nixos-rebuild switch"))
            .unwrap_or_else(|| panic!("no nixos-rebuild line in:\n{out}"))
            .to_owned();
        line.replace(dest.to_str().unwrap(), "SRC")
    };
    let line = dry_run(&["--flake-input", "hm=hm"]);
    assert!(
        line.contains(
            "--override-input nixpkgs path:SRC/nixpkgs --override-input hm path:SRC/hm \
             --no-write-lock-file"
        ),
        "{line}"
    );
    let line = dry_run(&["--flake-input=nixpkgs=hm", "--flake-input", "extra=config"]);
    assert!(
        line.contains(
            "--override-input hm path:SRC/config --override-input nixpkgs path:SRC/hm \
             --override-input extra path:SRC/config --no-write-lock-file"
        ),
        "{line}"
    );
}

/// A `flake.lock` pinning three inputs to GitHub, as `nix flake lock`
/// writes it: `nixpkgs`, `marker` (not a flake) and `unused`.
fn flake_lock() -> String {
    let github = |owner: &str, repo: &str, flake: bool| {
        let mut node = json!({
            "locked": {"lastModified": 1700000000, "owner": owner, "repo": repo, "type": "github",
                       "narHash": "sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=",
                       "rev": "b3a285628a6928f62cdf4d09f4e656f7ecbbcafb"},
            "original": {"owner": owner, "repo": repo, "type": "github"},
        });
        if !flake {
            node["flake"] = json!(false);
        }
        node
    };
    json!({"nodes": {
        "nixpkgs": github("NixOS", "nixpkgs", true),
        "marker": github("me", "marker", false),
        "unused": github("me", "unused", false),
        "root": {"inputs": {"nixpkgs": "nixpkgs", "marker": "marker", "unused": "unused"}},
    }, "root": "root", "version": 7})
    .to_string()
}

#[test]
fn a_locked_flake_with_a_dotted_attribute_follows_a_changed_input_source() {
    let world = World::new();
    let Some(rr) = world.real_rebuild() else {
        return;
    };
    let target = booted_host(&world, &rr, "alpha");
    let (v2, v3) = (world.real_system(&rr, "v2"), world.real_system(&rr, "v3"));
    // The system's marker is the file `m` of the input `marker`; the
    // attribute has dots (a domain name), which nixos-rebuild quotes.
    world.write(
        "machines/web1.nix",
        "marker: { config, pkgs, ... }:\n{\n  networking.hostName = \"fakenixos\";\n  \
         environment.etc.\"marker\".text = marker;\n}\n",
    );
    let extra = "  inputs.marker = { url = \"github:me/marker\"; flake = false; };\n  \
                 inputs.unused = { url = \"github:me/unused\"; flake = false; };\n";
    let flake = flake_nix(&[], extra).replace(
        "  };\n}\n",
        "    nixosConfigurations.\"web1.example.org\" = nixpkgs.lib.nixosSystem { system = \
         \"x86_64-linux\"; modules = [ (import ./web1.nix (builtins.readFile \"${marker}/m\")) ]; \
         };\n  };\n}\n",
    );
    world.write(
        "machines/flake.nix",
        flake.replace("{ self, nixpkgs, ... }", "{ self, nixpkgs, marker, ... }"),
    );
    let lock = flake_lock();
    world.write("machines/flake.lock", &lock);
    // A file tree that is also a git checkout here: still read as a path.
    world.write("machines/.git/HEAD", "ref: refs/heads/main\n");
    world.write("marker/m", "v2");
    let nixpkgs = nixpkgs_repo(&world, &rr);
    let sources = json!({"config": file_source(&world.path("machines")),
                         "nixpkgs": git_source(&nixpkgs),
                         "marker": file_source(&world.path("marker"))});
    let flake = [
        "--flake",
        "config#web1.example.org",
        "--flake-input",
        "nixpkgs=nixpkgs",
        "--flake-input",
        "marker=marker",
    ];
    let args = forced_args(&target, &flake);
    // `unused` is pinned and never read: nix does not reach for it.
    deploy(&world, &args, &sources).assert_success();
    assert_eq!(world.current_system("alpha"), Some(v2.clone()));
    // Only the input's source changed: the next deploy builds from it.
    world.write("marker/m", "v3");
    deploy(&world, &args, &sources).assert_success();
    assert_eq!(world.current_system("alpha"), Some(v3.clone()));
    // The input now a git source: its commit, then its next one.
    let marker = world.git_repo("marker-repo");
    marker.write("m", "v2");
    marker.commit("v2");
    let mut sources = sources;
    sources["marker"] = git_source(&marker);
    deploy(&world, &args, &sources).assert_success();
    assert_eq!(world.current_system("alpha"), Some(v2.clone()));
    marker.write("m", "v3");
    marker.commit("v3");
    sources["marker"] = git_source(&marker);
    deploy(&world, &args, &sources).assert_success();
    assert_eq!(world.current_system("alpha"), Some(v3.clone()));
    assert_eq!(file_text(&world.path("alpha/src/config/flake.lock")), lock);
    let local = world.path("local-src");
    let test = [
        &["--target", local.to_str().unwrap(), "--force"][..],
        &flake,
    ]
    .concat();
    let out = world.run("krops-test", &test, sources.to_string().as_bytes());
    out.assert_success();
    assert_eq!(out.stdout_str(), format!("{}\n", v3.display()));
    rr.assert_machine_untouched();
}
