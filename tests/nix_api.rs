//! End-to-end: the Nix API (README: From Nix). krops's `lib` and writers evaluated by
//! the real `nix-instantiate` and built by the real `nix-build`, without
//! nixpkgs; the scripts they write deploy to real sshd hosts.

use std::path::Path;

use krops_tests::nix::{krops_dir, nix_str};
use krops_tests::{file_text, Output, World};
use serde_json::{json, Value};

/// A derivation the target can build with /bin/sh alone.
const DERIVATION: &str = r#"builtins.derivation {
  name = "krops-fixture";
  system = builtins.currentSystem;
  builder = "/bin/sh";
  args = [ "-c" "echo built by nix > $out" ];
}"#;

/// mkTarget of every input, evaluated by Nix, next to mktarget's output.
fn compare_mk_target(world: &World, inputs: &[&str], env: impl Fn(&mut std::process::Command)) {
    let list = inputs
        .iter()
        .map(|s| nix_str(s))
        .collect::<Vec<_>>()
        .join(" ");
    let mut cmd = world.nix_eval_command(&format!("map lib.mkTarget [ {list} ]"));
    env(&mut cmd);
    let out = world.run_command(&mut cmd, b"");
    out.assert_success();
    let from_nix: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    for (input, nix) in inputs.iter().zip(from_nix) {
        let mut cmd = world.command(world.tool("mktarget"));
        cmd.arg(input);
        env(&mut cmd);
        let out = world.run_command(&mut cmd, b"");
        out.assert_success();
        let mktarget: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(
            nix, mktarget,
            "lib.mkTarget and mktarget differ on {input:?}"
        );
    }
}

const TARGETS: &[&str] = &[
    "",
    "server01",
    "root@server01:4444/etc/krops",
    "user@host:22/var/src",
    "@somehost",
    "bob@",
    ":2222",
    "/etc/src",
    "h:2/a/b c",
    "10.0.0.1",
    "localhost/tmp/x",
    "user@host/path",
    "root@YOUR_IP_ADDRESS_OR_HOST_NAME_HERE",
];

#[test]
fn mk_target_agrees_with_mktarget() {
    let world = World::new();
    compare_mk_target(&world, TARGETS, |_| {});
    // The defaults: no LOGNAME means a null user; no HOSTNAME means
    // /etc/hostname's single label, else localhost.
    compare_mk_target(&world, &["", "server01", "/p"], |cmd| {
        cmd.env_remove("LOGNAME").env_remove("HOSTNAME");
    });
    let t = world.nix_eval_json(r#"lib.mkTarget "root@server01:4444/etc/krops""#);
    assert_eq!(
        t,
        json!({"user": "root", "host": "server01", "port": "4444", "path": "/etc/krops",
               "sudo": false, "extraOptions": []})
    );
}

#[test]
fn mk_target_refuses_what_matches_nothing() {
    let world = World::new();
    for input in ["host:", "host:/p"] {
        let out = world.nix_eval(&format!("lib.mkTarget {}", nix_str(input)));
        out.assert_failure()
            .assert_stderr_contains("does not match [[USER]@]HOST[:PORT][/PATH]");
        world.run("mktarget", &[input], b"").assert_failure();
    }
    world
        .nix_eval("lib.mkTarget 42")
        .assert_failure()
        .assert_stderr_contains("mkTarget: expected a target string or an attribute set");
}

#[test]
fn mk_target_reads_bracketed_ipv6_hosts() {
    let world = World::new();
    let t = world.nix_eval_json(
        r#"map lib.mkTarget [ "root@[::1]:22/var/src" "[fe80::1%eth0]/srv" "@[2001:db8::7]" ]"#,
    );
    assert_eq!(
        t,
        json!([
            {"user": "root", "host": "::1", "port": "22", "path": "/var/src", "sudo": false, "extraOptions": []},
            {"user": "root", "host": "fe80::1%eth0", "port": null, "path": "/srv", "sudo": false, "extraOptions": []},
            {"user": "", "host": "2001:db8::7", "port": null, "path": "/var/src", "sudo": false, "extraOptions": []},
        ])
    );
}

#[test]
fn mk_target_of_an_attribute_set_fills_the_rest() {
    let world = World::new();
    let t = world.nix_eval_json(
        r#"[ (lib.mkTarget { host = "h"; sudo = true; })
             (lib.mkTarget "user@host/path" // { extraOptions = [ "-o" "LogLevel=DEBUG" ]; sudo = true; }) ]"#,
    );
    assert_eq!(
        t,
        json!([
            {"user": "root", "host": "h", "port": null, "path": "/var/src", "sudo": true, "extraOptions": []},
            {"user": "user", "host": "host", "port": null, "path": "/path", "sudo": true,
             "extraOptions": ["-o", "LogLevel=DEBUG"]},
        ])
    );
    let local = world.nix_eval_json(
        r#"map (s: lib.isLocalTarget (lib.mkTarget s)) [ "" "/tmp/x" "localhost" "root@origin" "root@alpha" "bob@origin" ]"#,
    );
    assert_eq!(local, json!([true, true, true, true, false, false]));
}

#[test]
fn quote_survives_a_real_shell() {
    let world = World::new();
    let words = [
        "plain", "", "a b", "it's", "$HOME", "a\nb", "*", "-x", "'", "\\", "`x`",
    ];
    let list = words
        .iter()
        .map(|w| nix_str(w))
        .collect::<Vec<_>>()
        .join(" ");
    let quoted = world.nix_eval_json(&format!("map lib.quote [ {list} ]"));
    let shell_quoted = world.nix_eval_json(&format!("map lib.shell.quote [ {list} ]"));
    assert_eq!(quoted, shell_quoted);
    for (word, quoted) in words.iter().zip(quoted.as_array().unwrap()) {
        let out = world.sh(&format!("printf %s {}", quoted.as_str().unwrap()));
        out.assert_success();
        assert_eq!(out.stdout_str(), *word, "{quoted}");
    }
}

/// Fixtures every source type reads: a config dir, a git repo, a pass and a
/// passage store, a pipe command.
struct Fixtures {
    config: String,
    repo_url: String,
    commit: String,
    pass: String,
    passage: String,
    identities: String,
    pipe: String,
}

fn fixtures(world: &World) -> Fixtures {
    world.write("config/alpha/configuration.nix", "{ host = \"alpha\"; }\n");
    world.write("config/beta/configuration.nix", "{ host = \"beta\"; }\n");
    let repo = world.git_repo("nixpkgs");
    repo.write("default.nix", "{ }\n");
    let commit = repo.commit("first");
    let pipe = world.write_executable(
        "bin-gen/gen",
        "#!/bin/sh\necho 'generated at deploy time'\n",
    );
    let pass = world.pass_store();
    pass.insert("hosts/alpha/ssh-key", "alpha-pass-secret");
    pass.insert("hosts/beta/ssh-key", "beta-pass-secret");
    let passage = world.passage_store();
    passage.insert("wifi", "passage-secret");
    Fixtures {
        config: world.path("config").display().to_string(),
        repo_url: repo.url(),
        commit,
        pass: pass.dir().display().to_string(),
        passage: passage.dir().display().to_string(),
        identities: passage.identities().display().to_string(),
        pipe: pipe.display().to_string(),
    }
}

/// Runs `populate --dry-run` on the JSON of `sources` for a local target.
fn populate_accepts(world: &World, sources: &Value) -> Output {
    let file = world.write("sources.json", sources.to_string());
    let dest = world.path("dry/src");
    let out = world.run(
        "populate",
        &[
            "--dry-run",
            "--target",
            dest.to_str().unwrap(),
            "--sources",
            file.to_str().unwrap(),
        ],
        b"",
    );
    out.assert_success();
    out
}

#[test]
fn eval_source_fills_every_default_in_the_form_populate_reads() {
    let world = World::new();
    let f = fixtures(&world);
    let short = format!(
        r#"lib.evalSource {{
          config.file = {config};
          nixpkgs.git = {{ url = {url}; ref = {commit}; }};
          secrets.pass = {{ dir = {pass}; name = "hosts/alpha"; }};
          keys.passage = {passage};
          generated.pipe = {pipe};
          link.symlink = "config/alpha/configuration.nix";
          fixture.derivation = {derivation};
        }}"#,
        config = nix_str(&f.config),
        url = nix_str(&f.repo_url),
        commit = nix_str(&f.commit),
        pass = nix_str(&f.pass),
        passage = nix_str(&f.passage),
        pipe = nix_str(&f.pipe),
        derivation = nix_str(DERIVATION),
    );
    let evaluated = world.nix_eval_json(&short);
    let expected = json!({
        "config": {"type": "file", "file": {"path": f.config, "useChecksum": false, "exclude": [],
                   "filters": [], "deleteExcluded": true}},
        "nixpkgs": {"type": "git", "git": {"url": f.repo_url, "ref": f.commit, "shallow": false,
                    "fetchAlways": false, "clean": {"exclude": []}}},
        "secrets": {"type": "pass", "pass": {"dir": f.pass, "name": "hosts/alpha"}},
        "keys": {"type": "passage", "passage": {"dir": f.passage,
                 "identities_file": "~/.passage/identities", "age": "age"}},
        "generated": {"type": "pipe", "pipe": {"command": f.pipe}},
        "link": {"type": "symlink", "symlink": {"target": "config/alpha/configuration.nix"}},
        "fixture": {"type": "derivation", "derivation": {"text": DERIVATION}},
    });
    assert_eq!(evaluated, expected);
    populate_accepts(&world, &evaluated).assert_stdout_contains("generated");

    // The full forms, every field given, evaluate to themselves; so does the
    // evaluated form given again.
    let full = format!(
        r#"lib.evalSource {{
          config.file = {{ path = {config}; useChecksum = true; exclude = [ ".git" ];
                           filters = [ {{ type = "include"; pattern = "*.nix"; }} {{ pattern = "*"; }} ];
                           deleteExcluded = false; }};
          nixpkgs.git = {{ url = {url}; ref = {commit}; shallow = true; fetchAlways = true;
                           clean.exclude = [ "/.version-suffix" ]; }};
          secrets.pass = {{ dir = {pass}; name = "hosts/alpha"; }};
          keys.passage = {{ dir = {passage}; identities_file = {identities}; age = "/usr/bin/age"; }};
          generated.pipe.command = {pipe};
          link.symlink.target = "config";
          fixture.derivation.text = {derivation};
        }}"#,
        config = nix_str(&f.config),
        url = nix_str(&f.repo_url),
        commit = nix_str(&f.commit),
        pass = nix_str(&f.pass),
        passage = nix_str(&f.passage),
        identities = nix_str(&f.identities),
        pipe = nix_str(&f.pipe),
        derivation = nix_str(DERIVATION),
    );
    let out = world.nix_eval(&full);
    out.assert_success()
        .assert_stderr_contains("config.file.exclude is deprecated");
    let evaluated: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        evaluated["config"]["file"],
        json!({"path": f.config, "useChecksum": true, "exclude": [".git"],
               "filters": [{"type": "include", "pattern": "*.nix"}, {"type": "exclude", "pattern": "*"}],
               "deleteExcluded": false})
    );
    assert_eq!(
        evaluated["nixpkgs"]["git"],
        json!({"url": f.repo_url, "ref": f.commit, "shallow": true, "fetchAlways": true,
               "clean": {"exclude": ["/.version-suffix"]}})
    );
    assert_eq!(
        evaluated["keys"]["passage"],
        json!({"dir": f.passage, "identities_file": f.identities, "age": "/usr/bin/age"})
    );
    assert_eq!(
        evaluated["link"],
        json!({"type": "symlink", "symlink": {"target": "config"}})
    );
    populate_accepts(&world, &evaluated);
    let again = world.nix_eval_json(&format!(
        "lib.evalSource (builtins.fromJSON {})",
        nix_str(&evaluated.to_string())
    ));
    assert_eq!(again, evaluated, "evalSource of its own result");
}

#[test]
fn eval_source_of_store_paths_and_nix_paths() {
    let world = World::new();
    world.write("cfg/configuration.nix", "{ }\n");
    // A path in the store is compared by checksum (its mtime is 1); a Nix
    // path stands for its name, as `toString ./cfg` does, and is not copied.
    let evaluated = world.nix_eval_json(&format!(
        r#"lib.evalSource [ {{ store.file = "/nix/store/00000000000000000000000000000000-cfg";
                              here.file = /. + {cfg}; }} ]"#,
        cfg = nix_str(world.path("cfg").to_str().unwrap())
    ));
    assert_eq!(evaluated["store"]["file"]["useChecksum"], json!(true));
    assert_eq!(evaluated["here"]["file"]["useChecksum"], json!(false));
    assert_eq!(
        evaluated["here"]["file"]["path"],
        json!(world.path("cfg").to_str().unwrap())
    );
}

#[test]
fn fetched_trees_and_flake_inputs_are_file_sources() {
    // krops takes anything nixpkgs's `isStringLike` calls a store path as a
    // file source: `builtins.fetchGit`'s result, a flake input (an attribute
    // set with `_type = "flake"` and an outPath), not only a package.
    let world = World::new();
    let (writers, krops_rs) = world.nix_fixtures();
    let repo = world.git_repo("modules");
    repo.write("default.nix", "{ fetched = true; }\n");
    let commit = repo.commit("modules");
    let dest = world.path("local/src");
    let file = world.write(
        "fetched.nix",
        format!(
            r#"let
  krops = {krops};
  lib = import "${{krops}}/lib";
  writers = import {writers};
  populate = import "${{krops}}/pkgs/populate" {{ inherit writers; krops-rs = {krops_rs}; }};
  modules = builtins.fetchGit {{ url = {url}; rev = {commit}; }};
  input = {{ _type = "flake"; inherit (modules) outPath rev; }};
  source = lib.evalSource {{
    fetched.file = modules;
    flake-input.file = input;
    full.file = {{ path = modules; useChecksum = false; }};
  }};
in {{
  inherit source;
  path = modules.outPath;
  populate = populate {{ inherit source; target = {dest}; force = true; }};
}}
"#,
            krops = nix_str(krops_dir().to_str().unwrap()),
            writers = nix_str(writers.to_str().unwrap()),
            krops_rs = nix_str(krops_rs.to_str().unwrap()),
            url = nix_str(&repo.file_url()),
            commit = nix_str(&commit),
            dest = nix_str(dest.to_str().unwrap()),
        ),
    );
    let evaluated = world.nix_eval_json(&format!("import {}", nix_str(file.to_str().unwrap())));
    let path = evaluated["path"].as_str().unwrap();
    assert!(path.starts_with("/nix/store/"), "{evaluated}");
    let file_source = |use_checksum: bool| {
        json!({"type": "file", "file": {"path": path, "useChecksum": use_checksum, "exclude": [],
               "filters": [], "deleteExcluded": true}})
    };
    assert_eq!(
        evaluated["source"],
        json!({"fetched": file_source(true), "flake-input": file_source(true),
               "full": file_source(false)})
    );

    let script = world.nix_build(&file, "populate");
    world
        .run_command(&mut world.command(&script), b"")
        .assert_success();
    for name in ["fetched", "flake-input", "full"] {
        assert_eq!(
            file_text(&dest.join(name).join("default.nix")),
            "{ fetched = true; }\n",
            "{name}"
        );
    }
}

#[test]
fn eval_source_merges_a_list_as_krops_module_system_does() {
    let world = World::new();
    let evaluated = world.nix_eval_json(
        r#"let
             mkIf = condition: content: { _type = "if"; inherit condition content; };
             mkOverride = priority: content: { _type = "override"; inherit priority content; };
             mkMerge = contents: { _type = "merge"; inherit contents; };
           in lib.evalSource [
             { nixpkgs.git.url = "https://example.org/nixpkgs"; }
             { nixpkgs.git = { ref = "main"; clean.exclude = [ "/a" ]; }; }
             { nixpkgs.git.clean.exclude = [ "/b" ]; }
             { skipped = mkIf false { symlink = "x"; }; kept = mkIf true { symlink = "y"; }; }
             { forced.symlink = mkOverride 50 "force"; }
             { forced.symlink = "plain"; defaulted.symlink = mkOverride 1000 "default"; }
             { defaulted.symlink = "plain"; }
             (mkMerge [ { merged.git.url = "u"; } { merged.git.ref = "r"; } ])
           ]"#,
    );
    assert_eq!(
        evaluated["nixpkgs"]["git"],
        json!({"url": "https://example.org/nixpkgs", "ref": "main", "shallow": false,
               "fetchAlways": false, "clean": {"exclude": ["/a", "/b"]}})
    );
    assert!(evaluated.get("skipped").is_none(), "{evaluated}");
    assert_eq!(evaluated["kept"]["symlink"]["target"], "y");
    assert_eq!(evaluated["forced"]["symlink"]["target"], "force");
    assert_eq!(evaluated["defaulted"]["symlink"]["target"], "plain");
    assert_eq!(evaluated["merged"]["git"]["ref"], "r");
}

#[test]
fn invalid_sources_are_evaluation_errors_naming_source_and_field() {
    let world = World::new();
    for (sources, needle) in [
        (
            r#"{ nixpkgs.git.url = "u"; }"#,
            "nixpkgs.git.ref: missing field",
        ),
        (
            r#"{ cfg.file = "relative"; }"#,
            "cfg.file.path: \"relative\" is not an absolute path",
        ),
        (r#"{ x = { }; }"#, "x: no source type given"),
        (r#"{ x.gti = { }; }"#, "x.gti: unknown field"),
        (
            r#"{ x = { file = "/a"; symlink = "b"; }; }"#,
            "x: several source types given (file, symlink)",
        ),
        (
            r#"{ x = { type = "git"; symlink = "b"; }; }"#,
            "x.type: says \"git\"",
        ),
        (
            r#"{ x.git = { url = "u"; ref = "r"; shallow = "yes"; }; }"#,
            "x.git.shallow: expected a boolean",
        ),
        (
            r#"{ x.git = { url = "u"; ref = "r"; clean.exlude = [ ]; }; }"#,
            "x.git.clean.exlude: unknown field",
        ),
        (
            r#"{ x.file = { path = "/a"; filters = [ { type = "inc"; pattern = "*"; } ]; }; }"#,
            "x.file.filters[0].type: \"inc\" is not one of include, exclude",
        ),
        (
            r#"{ x.file = { path = "/a"; filters = [ { } ]; }; }"#,
            "x.file.filters[0].pattern: missing field",
        ),
        (
            r#"{ x.pipe = "bin/gen"; }"#,
            "x.pipe.command: \"bin/gen\" is not an absolute path",
        ),
        (
            r#"{ x.pass = { dir = "/p"; }; }"#,
            "x.pass.name: missing field",
        ),
        (
            r#"{ x.symlink = 1; }"#,
            "x.symlink: expected a string (the link text) or an attribute set, got int",
        ),
        (
            r#"{ x.symlink.target = 1; }"#,
            "x.symlink.target: expected a string, got int",
        ),
        (
            r#"[ { x.git = { url = "u"; ref = "a"; }; } { x.git.ref = "b"; } ]"#,
            "x.git.ref: defined differently in two places (\"a\" and \"b\")",
        ),
        (
            r#"{ "a/b".symlink = "x"; }"#,
            "sources.\"a/b\": a source name must be one path component",
        ),
        (
            r#"{ ".populate".symlink = "x"; }"#,
            "sources.\".populate\": names starting with .populate",
        ),
        (
            r#"{ x = "/a"; }"#,
            "x: expected an attribute set naming one source type",
        ),
        (r#""nixpkgs""#, "expected an attribute set of sources"),
        (
            r#"[ { a.symlink = "x"; } { x = null; } ]"#,
            "x: expected an attribute set naming one source type, got null",
        ),
        (
            r#"[ ({ ... }: { x.symlink = "y"; }) ]"#,
            "expected an attribute set of sources (or a list of them), got a function (modules written as functions are not supported)",
        ),
    ] {
        let out = world.nix_eval(&format!("lib.evalSource ({sources})"));
        out.assert_failure()
            .assert_stderr_contains(&format!("evalSource: {needle}"));
    }
}

#[test]
fn lib_carries_nixpkgs_lib_only_when_nixpkgs_is_on_nix_path() {
    let world = World::new();
    let plain = world
        .nix_eval_json(r#"[ (lib ? mkIf) (lib.toJSON 1) (lib ? evalSource) (lib ? mkTarget) ]"#);
    assert_eq!(plain, json!([false, "1", true, true]));

    // A nixpkgs whose lib has mkIf as nixpkgs's has it, and a marker.
    world.write(
        "fake-nixpkgs/lib/default.nix",
        r#"{ mkIf = condition: content: { _type = "if"; inherit condition content; };
             optionalAttrs = c: s: if c then s else { };
             fakeNixpkgsLib = true; }"#,
    );
    let mut cmd = world.nix_eval_command(
        r#"[ lib.fakeNixpkgsLib
             (lib.evalSource ({ a.symlink = "x"; b = lib.mkIf false { symlink = "y"; }; }
                              // lib.optionalAttrs true { c.symlink = "z"; })) ]"#,
    );
    cmd.env(
        "NIX_PATH",
        format!("nixpkgs={}", world.path("fake-nixpkgs").display()),
    );
    let out = world.run_command(&mut cmd, b"");
    out.assert_success();
    let value: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(value[0], json!(true));
    assert_eq!(
        value[1],
        json!({"a": {"type": "symlink", "symlink": {"target": "x"}},
               "c": {"type": "symlink", "symlink": {"target": "z"}}})
    );
}

/// The seed article's krops.nix, adapted to the test world: one source of
/// every type, writeDeploy for two hosts, an `all` script, writeTest and
/// writeCommand. Only where krops comes from differs from the article.
fn krops_nix(
    world: &World,
    f: &Fixtures,
    alpha_dest: &Path,
    beta_dest: &Path,
) -> std::path::PathBuf {
    let (writers, krops_rs) = world.nix_fixtures();
    world.write(
        "fixture/nixpkgs/nixos/default.nix",
        r#"{ configuration ? import <nixos-config> }:
{
  system = builtins.derivation {
    name = "nixos-system-${configuration.networking.hostName}";
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-c" "echo ${configuration.message} > $out" ];
  };
}
"#,
    );
    world.write(
        "fixture/configuration.nix",
        "{ networking.hostName = \"fixture\"; message = \"hello from writeTest\"; }\n",
    );
    let text = format!(
        r#"let
  krops = {krops};
  lib = import "${{krops}}/lib";
  writers = import {writers};
  pkgs = {{
    krops = import "${{krops}}/pkgs/krops" {{ inherit writers; krops-rs = {krops_rs}; }};
  }};

  source = name: lib.evalSource [
    {{
      config.file = toString ./config;
      nixos-config.symlink = "config/${{name}}/configuration.nix";
      nixpkgs.git = {{
        ref = {commit};
        url = {url};
      }};
      secrets.pass = {{
        dir = {pass};
        name = "hosts/${{name}}";
      }};
      keys.passage = {passage};
      generated.pipe = {pipe};
      fixture.derivation = {derivation};
    }}
  ];

  alpha = pkgs.krops.writeDeploy "deploy-alpha" {{
    source = source "alpha";
    target = "root@alpha{alpha_dest}";
    force = true;
  }};

  beta = pkgs.krops.writeDeploy "deploy-beta" {{
    source = source "beta";
    target = "root@beta{beta_dest}";
    force = true;
    useNixOutputMonitor = false;
  }};

in {{
  inherit alpha beta;
  all = writers.writeDash "deploy-all-servers"
    (lib.concatStringsSep "\n" [ alpha beta ]);
  test = pkgs.krops.writeTest "test" {{
    source = lib.evalSource [{{
      nixpkgs.file = toString ./fixture/nixpkgs;
      nixos-config.file = toString ./fixture/configuration.nix;
    }}];
    target = toString ./local/src;
    force = true;
  }};
  command = pkgs.krops.writeCommand "command" {{
    source = source "alpha";
    target = "root@alpha{alpha_dest}";
    command = targetPath: ''
      cat ${{targetPath}}/nixos-config
      echo "krops-command ran in $1"
    '';
  }};
}}
"#,
        krops = nix_str(krops_dir().to_str().unwrap()),
        writers = nix_str(writers.to_str().unwrap()),
        krops_rs = nix_str(krops_rs.to_str().unwrap()),
        commit = nix_str(&f.commit),
        url = nix_str(&f.repo_url),
        pass = nix_str(&f.pass),
        passage = nix_str(&f.passage),
        pipe = nix_str(&f.pipe),
        derivation = nix_str(DERIVATION),
        alpha_dest = alpha_dest.display(),
        beta_dest = beta_dest.display(),
    );
    world.write("krops.nix", text)
}

fn server_port(record: &krops_tests::Record) -> u16 {
    // SSH_CONNECTION = client_ip client_port server_ip server_port
    record.env["SSH_CONNECTION"]
        .split(' ')
        .nth(3)
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn seed_article_krops_nix_deploys_two_hosts() {
    let world = World::new();
    let alpha = world.add_host("alpha");
    let beta = world.add_host("beta");
    let f = fixtures(&world);
    let alpha_dest = world.path("alpha/src");
    let beta_dest = world.path("beta/src");
    let file = krops_nix(&world, &f, &alpha_dest, &beta_dest);

    // Extra arguments reach the tool: a dry run prints the plan, runs nothing.
    let alpha_script = world.nix_build(&file, "alpha");
    let out = world.run_command(world.command(&alpha_script).arg("--dry-run"), b"");
    out.assert_success().assert_stdout_contains("nixos-rebuild");
    assert!(!alpha_dest.exists());
    assert!(world.records("nixos-rebuild").is_empty());

    let all = world.nix_build(&file, "all");
    let out = world.run_command(&mut world.command(&all), b"");
    out.assert_success();
    for (name, dest) in [("alpha", &alpha_dest), ("beta", &beta_dest)] {
        assert_eq!(
            file_text(&dest.join("nixos-config")),
            format!("{{ host = \"{name}\"; }}\n"),
            "{name}"
        );
        assert_eq!(file_text(&dest.join("nixpkgs/default.nix")), "{ }\n");
        assert_eq!(
            file_text(&dest.join("secrets/ssh-key")).trim_end(),
            format!("{name}-pass-secret")
        );
        assert_eq!(
            file_text(&dest.join("keys/wifi")).trim_end(),
            "passage-secret"
        );
        assert_eq!(
            file_text(&dest.join("generated")),
            "generated at deploy time\n"
        );
        assert_eq!(file_text(&dest.join("fixture")), "built by nix\n");
        assert!(dest.join(".populate").exists());
    }
    let records = world.records("nixos-rebuild");
    assert_eq!(records.len(), 2, "{records:?}");
    let mut seen: Vec<(u16, String)> = records
        .iter()
        .map(|r| {
            assert_eq!(r.argv, ["switch", "--no-flake"]);
            (
                server_port(r),
                r.var("NIX_PATH").unwrap_or_default().to_owned(),
            )
        })
        .collect();
    seen.sort();
    let mut expected = vec![
        (alpha.port(), alpha_dest.display().to_string()),
        (beta.port(), beta_dest.display().to_string()),
    ];
    expected.sort();
    assert_eq!(seen, expected, "each host rebuilt from its own path");
    out.assert_stderr_contains("# use nix-output-monitor: opportunistic")
        .assert_stderr_contains("# use nix-output-monitor: false");

    let test = world.nix_build(&file, "test");
    let out = world.run_command(&mut world.command(&test), b"");
    out.assert_success();
    let stdout = out.stdout_str();
    let system = stdout.strip_suffix('\n').expect("one line");
    assert!(
        system.starts_with("/nix/store/") && system.ends_with("-nixos-system-fixture"),
        "{out}"
    );
    assert_eq!(file_text(Path::new(system)), "hello from writeTest\n");

    let command = world.nix_build(&file, "command");
    let out = world.run_command(&mut world.command(&command), b"");
    out.assert_success();
    assert_eq!(
        out.stdout_str(),
        format!(
            "{{ host = \"alpha\"; }}\nkrops-command ran in {}\n",
            alpha_dest.display()
        )
    );
}

/// `pkgs.krops` and `pkgs.populate` with the world's stand-ins, then `expr`.
fn with_writers(world: &World, expr: &str) -> Output {
    let (writers, krops_rs) = world.nix_fixtures();
    world.nix_eval(&format!(
        r#"let
             writers = import {writers};
             krops-rs = {krops_rs};
             kropsPkgs = import (krops + "/pkgs/krops") {{ inherit writers krops-rs; }};
             populate = import (krops + "/pkgs/populate") {{ inherit writers krops-rs; }};
             source = lib.evalSource {{ l.symlink = "x"; }};
           in {expr}"#,
        writers = nix_str(writers.to_str().unwrap()),
        krops_rs = nix_str(krops_rs.to_str().unwrap()),
    ))
}

#[test]
fn typos_in_writer_arguments_are_evaluation_errors() {
    let world = World::new();
    for (expr, needle) in [
        (
            r#"kropsPkgs.writeDeploy "d" { inherit source; tagret = "h"; target = "h"; }"#,
            "unexpected argument 'tagret'",
        ),
        (
            r#"kropsPkgs.writeDeploy "d" { inherit source; target = "h"; useNixOutputMonitor = "sometimes"; }"#,
            "useNixOutputMonitor: \"sometimes\" is not one of",
        ),
        (
            r#"kropsPkgs.writeDeploy "d" { inherit source; target = "h"; force = "yes"; }"#,
            "force: expected a boolean",
        ),
        (
            r#"kropsPkgs.writeDeploy "d" { inherit source; }"#,
            "called without required argument 'target'",
        ),
        (
            r#"kropsPkgs.writeTest "t" { inherit source; target = "/tmp/x"; trase = true; }"#,
            "unexpected argument 'trase'",
        ),
        (
            r#"kropsPkgs.writeTest "t" { inherit source; target = "root@alpha/tmp/x"; }"#,
            "is not this machine",
        ),
        (
            r#"kropsPkgs.writeCommand "c" { inherit source; target = "h"; allocateTty = true; }"#,
            "unexpected argument 'allocateTty'",
        ),
        (
            r#"kropsPkgs.writeCommand "c" { inherit source; target = "h"; command = 1; }"#,
            "command: expected a function",
        ),
        (
            r#"populate { inherit source; target = "h"; focre = true; }"#,
            "unexpected argument 'focre'",
        ),
        (
            r#"kropsPkgs.writeDeploy "d" { inherit source; target = lib.mkTarget "h" // { sduo = true; }; }"#,
            "writeDeploy d: target.sduo: unknown field (expected user, host, port, path, sudo, extraOptions)",
        ),
        (
            r#"kropsPkgs.writeDeploy "d" { inherit source; target = "h"; buildTarget = { host = "b"; hots = "c"; }; }"#,
            "writeDeploy d: buildTarget.hots: unknown field",
        ),
        (
            r#"kropsPkgs.writeCommand "c" { inherit source; target = { host = "h"; extraOption = [ ]; }; }"#,
            "writeCommand c: target.extraOption: unknown field",
        ),
        (
            r#"populate { inherit source; target = { host = "h"; Port = 22; }; }"#,
            "populate: target.Port: unknown field",
        ),
        (
            r#"kropsPkgs.writeDeploy "d" { source = { x.gti = { }; }; target = "h"; }"#,
            "evalSource: x.gti: unknown field",
        ),
        (
            r#"kropsPkgs.writeDeploy "d" { inherit source; target = "h"; tags = "web"; }"#,
            "writeDeploy d: tags: expected a list of tags (strings), got string",
        ),
        (
            r#"kropsPkgs.writeCommand "c" { inherit source; target = "h"; tags = [ "web" "a,b" ]; }"#,
            "writeCommand c: tags: \"a,b\": a tag must be",
        ),
        (
            r#"kropsPkgs.writeDeploy "d" { inherit source; target = "h"; rebootTimeout = 0; }"#,
            "writeDeploy d: rebootTimeout: expected a whole number of seconds (at least 1), got 0",
        ),
    ] {
        let out = with_writers(&world, &format!("({expr}).drvPath"));
        out.assert_failure().assert_stderr_contains(needle);
    }
    // Spelled right, the same arguments evaluate.
    let out = with_writers(
        &world,
        r#"map (d: d.drvPath) [
             (kropsPkgs.writeDeploy "d" { inherit source; target = "h"; buildTarget = "b"; operation = "boot";
                crossDeploy = true; useNixOutputMonitor = true; force = true; backup = true; fast = true;
                tags = [ "web" "eu-1" ]; reboot = true; rebootTimeout = 30; })
             (kropsPkgs.writeTest "t" { inherit source; target = "/tmp/x"; trace = true; force = true; backup = true; })
             (kropsPkgs.writeCommand "c" { inherit source; target = "h"; allocateTTY = true; force = true; backup = true;
                command = p: "ls ${p}"; tags = [ "web" ]; })
             (populate { inherit source; target = "h"; force = true; backup = true; })
           ]"#,
    );
    out.assert_success().assert_stderr_contains("deprecated");
}

#[test]
fn writers_pass_krops_arguments_as_the_tools_flags() {
    let world = World::new();
    let (writers, krops_rs) = world.nix_fixtures();
    let file = world.write(
        "flags.nix",
        format!(
            r#"let
  krops = {krops};
  lib = import "${{krops}}/lib";
  writers = import {writers};
  krops-rs = {krops_rs};
  k = import "${{krops}}/pkgs/krops" {{ inherit writers krops-rs; }};
  populate = import "${{krops}}/pkgs/populate" {{ inherit writers krops-rs; }};
  source = lib.evalSource {{ l.symlink = "x"; }};
in {{
  deploy = k.writeDeploy "d" {{ inherit source; target = "root@[::1]:22/srv"; buildTarget = "b/srv";
    operation = "boot"; crossDeploy = true; useNixOutputMonitor = true; force = true; backup = true; }};
  test = k.writeTest "t" {{ inherit source; target = "/tmp/x"; trace = true; }};
  command = k.writeCommand "c" {{ inherit source; target = "h"; allocateTTY = true; command = p: "it's ${{p}}"; }};
  populate = populate {{ inherit source; target = "root@[::1]"; force = true; }};
}}
"#,
            krops = nix_str(krops_dir().to_str().unwrap()),
            writers = nix_str(writers.to_str().unwrap()),
            krops_rs = nix_str(krops_rs.to_str().unwrap()),
        ),
    );
    // Each script's argv, as the shell hands it to the tool: the tool is
    // replaced by a printer of its arguments.
    let argv = |attr: &str| -> Vec<String> {
        let script = file_text(&world.nix_build(&file, attr));
        let printer = script.replace(
            &format!("exec {}/bin/", krops_rs.display()),
            "printf '%s\\0' ",
        );
        let out = world.sh(&printer);
        out.assert_success();
        out.stdout_str()
            .split_terminator('\0')
            .map(str::to_owned)
            .collect()
    };
    let tail = |argv: Vec<String>| argv[3..].to_vec();

    let deploy = argv("deploy");
    assert_eq!(deploy[0], "krops-deploy");
    assert_eq!(deploy[1], "--sources");
    let sources: Value = serde_json::from_str(&file_text(Path::new(&deploy[2]))).unwrap();
    assert_eq!(
        sources,
        json!({"l": {"type": "symlink", "symlink": {"target": "x"}}})
    );
    let target = |json: &str| serde_json::from_str::<Value>(json).unwrap();
    assert_eq!(deploy[3], "--target");
    assert_eq!(
        target(&deploy[4]),
        json!({"user": "root", "host": "::1", "port": "22", "path": "/srv", "sudo": false, "extraOptions": []})
    );
    assert_eq!(deploy[5], "--build-target");
    assert_eq!(target(&deploy[6])["host"], "b");
    assert_eq!(
        deploy[7..],
        [
            "--operation",
            "boot",
            "--cross-deploy",
            "--nom",
            "true",
            "--force",
            "--backup"
        ]
    );

    let test = tail(argv("test"));
    assert_eq!(test[0], "--target");
    assert_eq!(target(&test[1])["path"], "/tmp/x");
    assert_eq!(test[2..], ["--trace"]);

    let command = tail(argv("command"));
    assert_eq!(command[2..], ["--allocate-tty", "--", "it's /var/src"]);

    let populate = argv("populate");
    assert_eq!(populate[0], "populate");
    assert_eq!(target(&populate[4])["host"], "::1");
    assert_eq!(populate[5..], ["--force"]);
}

#[test]
fn every_nix_file_parses() {
    let world = World::new();
    let root = krops_dir();
    let mut files = Vec::new();
    let mut dirs = vec![root.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            let name = entry.file_name();
            if name == "target" || name == ".git" {
                continue;
            }
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "nix") {
                files.push(path.strip_prefix(&root).unwrap().display().to_string());
            }
        }
    }
    files.sort();
    for expected in [
        "flake.nix",
        "lib/default.nix",
        "pkgs/default.nix",
        "pkgs/krops/default.nix",
        "pkgs/overlay.nix",
        "pkgs/populate/default.nix",
    ] {
        assert!(
            files.iter().any(|f| f == expected),
            "no {expected} in {files:?}"
        );
    }
    for file in &files {
        let mut cmd = world.command("nix-instantiate");
        cmd.arg("--parse").arg(root.join(file));
        world.run_command(&mut cmd, b"").assert_success();
    }
}

#[test]
fn a_file_source_built_by_nix_is_built_and_kept_with_the_script() {
    // krops's README makes nixos-config with `pkgs.writeText`: a derivation
    // output, which `builtins.toFile` cannot refer to.
    let world = World::new();
    let (writers, krops_rs) = world.nix_fixtures();
    let dest = world.path("local/src");
    let file = world.write(
        "built.nix",
        format!(
            r#"let
  krops = {krops};
  lib = import "${{krops}}/lib";
  writers = import {writers};
  populate = import "${{krops}}/pkgs/populate" {{ inherit writers; krops-rs = {krops_rs}; }};
  config = derivation {{
    name = "nixos-config";
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-c" "echo '{{ built = true; }}' > $out" ];
  }};
in {{
  config = config;
  populate = populate {{
    source = lib.evalSource {{ nixos-config.file = toString config; }};
    target = {dest};
    force = true;
  }};
}}
"#,
            krops = nix_str(krops_dir().to_str().unwrap()),
            writers = nix_str(writers.to_str().unwrap()),
            krops_rs = nix_str(krops_rs.to_str().unwrap()),
            dest = nix_str(dest.to_str().unwrap()),
        ),
    );
    let script = world.nix_build(&file, "populate");
    let config = world.nix_build(&file, "config");
    let mut cmd = world.command("nix-store");
    cmd.args(["--query", "--references"]).arg(&script);
    let out = world.run_command(&mut cmd, b"");
    out.assert_success();
    assert!(
        out.stdout_str()
            .lines()
            .any(|line| Path::new(line) == config),
        "the script must refer to {}\n{out}",
        config.display()
    );
    let out = world.run_command(&mut world.command(&script), b"");
    out.assert_success();
    assert_eq!(file_text(&dest.join("nixos-config")), "{ built = true; }\n");
}

#[test]
fn every_option_a_krops_nix_sets_reaches_the_targets() {
    // A krops.nix in the style of krebs's own: a sudo target given as
    // `lib.mkTarget … // { … }` with an integer port and ssh options, a build
    // target, every source type with its options, a pipe made by Nix.
    let world = World::new();
    let alpha = world.add_host("alpha");
    let beta = world.add_host("beta");
    let user = world.sudo_user();
    let (writers, krops_rs) = world.nix_fixtures();
    world.write("cfg/a.conf", "a\n");
    world.write("cfg/b.txt", "b\n");
    world.write("cfg/sub/c.conf", "c\n");
    let repo = world.git_repo("nixpkgs");
    repo.write("default.nix", "{ }\n");
    let commit = repo.commit("first");
    let pass = world.pass_store();
    pass.insert("hosts/alpha/ssh-key", "alpha-pass-secret");
    let passage = world.passage_store();
    passage.insert("wifi", "passage-secret");
    let age = world
        .sh("command -v age")
        .stdout_str()
        .trim_end()
        .to_owned();
    let alpha_dest = world.mkdir("root-owned").join("src");
    let beta_dest = world.path("beta/src");
    let file = world.write(
        "options.nix",
        format!(
            r#"let
  krops = {krops};
  lib = import "${{krops}}/lib";
  writers = import {writers};
  pkgs.krops = import "${{krops}}/pkgs/krops" {{ inherit writers; krops-rs = {krops_rs}; }};
  source = lib.evalSource [
    {{
      cfg.file = {{
        path = toString ./cfg;
        filters = [
          {{ type = "include"; pattern = "*.conf"; }}
          {{ type = "include"; pattern = "*/"; }}
          {{ pattern = "*"; }}
        ];
        useChecksum = true;
      }};
      nixpkgs.git = {{
        url = {url};
        ref = {commit};
        shallow = true;
        fetchAlways = true;
        clean.exclude = [ "/.version-suffix" ];
      }};
      secrets.pass = {{ dir = /. + {pass}; name = "hosts/alpha"; }};
      keys.passage = {{ dir = /. + {passage}; identities_file = /. + {identities}; age = {age}; }};
      version.pipe = toString (writers.writeDash "version" "echo 21.11");
      nixos-config.symlink = "cfg/a.conf";
    }}
  ];
in pkgs.krops.writeDeploy "deploy-alpha" {{
  inherit source;
  target = lib.mkTarget "{user}@alpha{alpha_dest}" // {{
    sudo = true;
    port = {port};
    extraOptions = [ "-o" "ServerAliveInterval=7" ];
  }};
  buildTarget = "root@beta{beta_dest}";
  operation = "boot";
  crossDeploy = true;
  useNixOutputMonitor = false;
  force = true;
  backup = true;
}}
"#,
            krops = nix_str(krops_dir().to_str().unwrap()),
            writers = nix_str(writers.to_str().unwrap()),
            krops_rs = nix_str(krops_rs.to_str().unwrap()),
            url = nix_str(&repo.url()),
            commit = nix_str(&commit),
            pass = nix_str(pass.dir().to_str().unwrap()),
            passage = nix_str(passage.dir().to_str().unwrap()),
            identities = nix_str(passage.identities().to_str().unwrap()),
            age = nix_str(&age),
            port = alpha.port(),
            alpha_dest = alpha_dest.display(),
            beta_dest = beta_dest.display(),
        ),
    );
    let script = world.nix_build(&file, "");
    assert!(
        file_text(&script).contains("# the sources refer to: /nix/store/"),
        "the pipe's script is kept with the deploy script"
    );
    let out = world.run_command(&mut world.command(&script), b"");
    out.assert_success()
        .assert_stderr_contains("# use nix-output-monitor: false");

    for dest in [&alpha_dest, &beta_dest] {
        assert_eq!(file_text(&dest.join("cfg/a.conf")), "a\n");
        assert_eq!(file_text(&dest.join("cfg/sub/c.conf")), "c\n");
        assert!(!dest.join("cfg/b.txt").exists(), "filtered out");
        assert_eq!(krops_tests::git_head(&dest.join("nixpkgs")), commit);
        assert_eq!(
            file_text(&dest.join("secrets/ssh-key")).trim_end(),
            "alpha-pass-secret"
        );
        assert_eq!(
            file_text(&dest.join("keys/wifi")).trim_end(),
            "passage-secret"
        );
        assert_eq!(file_text(&dest.join("version")), "21.11\n");
        assert_eq!(
            std::fs::read_link(dest.join("nixos-config")).unwrap(),
            Path::new("cfg/a.conf")
        );
        assert!(dest.join(".populate").is_dir(), "--backup: a directory");
    }
    let owner = std::os::unix::fs::MetadataExt::uid(
        &std::fs::metadata(alpha_dest.join("cfg/a.conf")).unwrap(),
    );
    assert_eq!(owner, 0, "written through sudo");
    let passage_runs = world.records("passage");
    assert!(!passage_runs.is_empty());
    for record in passage_runs {
        assert_eq!(
            record.var("PASSAGE_IDENTITIES_FILE"),
            passage.identities().to_str()
        );
        assert_eq!(record.var("PASSAGE_AGE"), Some(age.as_str()));
    }
    let records = world.records("nixos-rebuild");
    assert_eq!(records.len(), 1, "{records:?}");
    let rebuild = &records[0];
    assert_eq!(
        server_port(rebuild),
        beta.port(),
        "built on the build target"
    );
    assert_eq!(
        rebuild.var("NIX_PATH"),
        beta_dest.to_str(),
        "from the build target's path"
    );
    assert_eq!(
        rebuild.argv,
        [
            "boot",
            "--no-flake",
            "--no-build-nix",
            "--target-host",
            &format!("{user}@alpha"),
            "--use-remote-sudo"
        ]
    );

    // Again: git cleans all but what clean.exclude keeps, and the backup
    // holds what the first run left.
    std::fs::write(alpha_dest.join("nixpkgs/.version-suffix"), "pre\n").unwrap();
    std::fs::write(alpha_dest.join("nixpkgs/junk"), "junk\n").unwrap();
    world
        .run_command(&mut world.command(&script), b"")
        .assert_success();
    assert_eq!(
        file_text(&alpha_dest.join("nixpkgs/.version-suffix")),
        "pre\n"
    );
    assert!(!alpha_dest.join("nixpkgs/junk").exists());
    assert_eq!(
        file_text(&alpha_dest.join(".populate/backup/cfg/a.conf")),
        "a\n"
    );
}

#[test]
fn import_pkgs_gives_the_writers_through_the_overlay() {
    // `pkgs = import "${krops}/pkgs" {}` as the READMEs write it, over a
    // stand-in nixpkgs: just `callPackage`, overlays and `writers`. The
    // user's overlay supplies krops-rs (the real one needs rustPlatform).
    let world = World::new();
    let (writers, krops_rs) = world.nix_fixtures();
    world.write(
        "fake-nixpkgs/default.nix",
        format!(
            r#"{{ overlays ? [ ], ... }}:
let
  callPackageWith = set: f: args:
    let fn = if builtins.isFunction f then f else import f;
    in fn (builtins.intersectAttrs (builtins.functionArgs fn) set // args);
  base = self: {{
    callPackage = callPackageWith self;
    writers = import {writers};
  }};
  extend = f: overlay: self: let super = f self; in super // overlay self super;
  fix = f: let x = f x; in x;
in fix (builtins.foldl' extend base overlays)
"#,
            writers = nix_str(writers.to_str().unwrap()),
        ),
    );
    let dest = world.path("local/src");
    let file = world.write(
        "krops.nix",
        format!(
            r#"let
  krops = {krops};
  lib = import "${{krops}}/lib";
  pkgs = import "${{krops}}/pkgs" {{
    overlays = [ (self: super: {{ krops-rs = {krops_rs}; }}) ];
  }};
  source = lib.evalSource [ {{ link.symlink = "there"; }} ];
in {{
  populate = pkgs.populate {{ inherit source; target = {dest}; force = true; }};
  command = pkgs.krops.writeCommand "command" {{ inherit source; target = {dest}; }};
}}
"#,
            krops = nix_str(krops_dir().to_str().unwrap()),
            krops_rs = nix_str(krops_rs.to_str().unwrap()),
            dest = nix_str(dest.to_str().unwrap()),
        ),
    );
    let nix_path = format!("nixpkgs={}", world.path("fake-nixpkgs").display());
    let build = |attr: &str| world.nix_build_with_path(&nix_path, &file, attr);
    let populate = build("populate");
    world
        .run_command(&mut world.command(&populate), b"")
        .assert_success();
    assert_eq!(
        std::fs::read_link(dest.join("link")).unwrap(),
        Path::new("there")
    );
    let command = build("command");
    let out = world.run_command(&mut world.command(&command), b"");
    out.assert_success();
    assert_eq!(out.stdout_str(), format!("{}\n", dest.display()));
}

/// nix-bitcoin's wrapper, as it calls krops: `pkgs.callPackage
/// "${krops}/pkgs/krops" { inherit populate; }` and
/// `pkgs.callPackage "${krops}/pkgs/populate" {}` from plain nixpkgs,
/// without krops-rs's overlay (krops's own flake calls it the same way).
/// The nixpkgs is a stand-in: `callPackage`, `writers`, and what
/// pkgs/krops-rs takes, its `rustPlatform.buildRustPackage` giving the
/// tools as built here.
#[test]
fn nix_bitcoins_call_package_of_pkgs_krops_works_unchanged() {
    let world = World::new();
    let (writers, krops_rs) = world.nix_fixtures();
    world.write(
        "plain-nixpkgs/default.nix",
        format!(
            r#"{{ ... }}:
let
  callPackageWith = set: f: args:
    let fn = if builtins.isFunction f then f else import f;
    in fn (builtins.intersectAttrs (builtins.functionArgs fn) set // args);
  pkgs = {{
    callPackage = callPackageWith pkgs;
    writers = import {writers};
    lib = {{ }};
    rustPlatform.buildRustPackage = attrs: {krops_rs};
    makeWrapper = null; git = null; gnupg = null; openssh = null; rsync = null;
    nix = null;
  }};
in pkgs
"#,
            writers = nix_str(writers.to_str().unwrap()),
            krops_rs = nix_str(krops_rs.to_str().unwrap()),
        ),
    );
    let dest = world.path("local/src");
    let file = world.write(
        "krops.nix",
        format!(
            r#"let
  src = {krops};
  pkgs = import <nixpkgs> {{ }};
  krops = {{
    lib = import "${{src}}/lib";
    pkgs = rec {{
      krops = pkgs.callPackage "${{src}}/pkgs/krops" {{ inherit populate; }};
      populate = pkgs.callPackage "${{src}}/pkgs/populate" {{ }};
    }};
  }};
  source = krops.lib.evalSource [ {{ link.symlink = "there"; }} ];
  target = {dest};
in {{
  populate = krops.pkgs.populate {{ inherit source target; force = true; }};
  command = krops.pkgs.krops.writeCommand "command" {{ inherit source target; }};
  deploy = krops.pkgs.krops.writeDeploy "deploy" {{ inherit source target; }};
}}
"#,
            krops = nix_str(krops_tests::nix::krops_dir().to_str().unwrap()),
            dest = nix_str(dest.to_str().unwrap()),
        ),
    );
    let nix_path = format!("nixpkgs={}", world.path("plain-nixpkgs").display());
    let build = |attr: &str| world.nix_build_with_path(&nix_path, &file, attr);
    let populate = build("populate");
    world
        .run_command(&mut world.command(&populate), b"")
        .assert_success();
    assert_eq!(
        std::fs::read_link(dest.join("link")).unwrap(),
        std::path::Path::new("there")
    );
    let command = build("command");
    let out = world.run_command(&mut world.command(&command), b"");
    out.assert_success();
    assert_eq!(out.stdout_str(), format!("{}\n", dest.display()));
    let deploy = build("deploy");
    let out = world.run_command(world.command(&deploy).arg("--dry-run"), b"");
    out.assert_success()
        .assert_stdout_contains("nixos-rebuild switch");
}
