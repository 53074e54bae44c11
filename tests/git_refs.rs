//! End-to-end: every git ref a krops configuration uses checks out what
//! `git rev-parse` names in origin, on a local target, over ssh and with sudo
//! (README: Sources, git).

use std::path::Path;

use krops_tests::{git_head, GitRepo, World};
use serde_json::{json, Map, Value};

/// What `rev` names in origin, as a commit.
fn in_origin(repo: &GitRepo, rev: &str) -> String {
    let object = repo.git(&["rev-parse", "--verify", rev]);
    repo.git(&["rev-parse", "--verify", &format!("{object}^{{commit}}")])
}

/// A git source with a ref of one form.
struct Form {
    name: &'static str,
    git_ref: String,
    /// The same revision as origin itself spells it (`origin/main` is
    /// origin's `main`).
    in_origin: String,
    shallow: bool,
    fetch_always: bool,
}

fn ref_forms(short: &str, full: &str) -> Vec<Form> {
    let form = |name, git_ref: &str, in_origin: &str, shallow, fetch_always| Form {
        name,
        git_ref: git_ref.to_owned(),
        in_origin: in_origin.to_owned(),
        shallow,
        fetch_always,
    };
    vec![
        form("branch", "main", "main", false, false),
        form("tracking", "origin/main", "main", false, true),
        form(
            "tracking-no-fetch-always",
            "origin/main",
            "main",
            false,
            false,
        ),
        form("parent", "main~1", "main~1", false, false),
        form("tag", "v1", "v1", false, false),
        form("tag-peeled", "v1^{}", "v1^{}", false, false),
        form("annotated", "ann", "ann", false, false),
        form("annotated-peeled", "ann^{}", "ann^{}", false, false),
        form("short-hash", short, short, false, false),
        form("full-hash", full, full, false, false),
        form("shallow-branch", "main", "main", true, false),
        form("shallow-tag", "v1", "v1", true, false),
        form("shallow-annotated", "ann", "ann", true, false),
        form("shallow-peeled", "ann^{}", "ann", true, false),
        form("shallow-hash", full, full, true, false),
    ]
}

fn sources(repo: &GitRepo, forms: &[Form]) -> Value {
    let mut sources = Map::new();
    for form in forms {
        // A shallow fetch of a commit by hash needs a URL git fetches over a
        // protocol, as with a real remote.
        let url = if form.shallow {
            repo.file_url()
        } else {
            repo.url()
        };
        sources.insert(
            form.name.to_owned(),
            json!({"git": {"url": url, "ref": form.git_ref,
                           "shallow": form.shallow, "fetchAlways": form.fetch_always}}),
        );
    }
    Value::Object(sources)
}

#[track_caller]
fn assert_checkouts_match_origin(dest: &Path, repo: &GitRepo, forms: &[Form], when: &str) {
    for form in forms {
        assert_eq!(
            git_head(&dest.join(form.name)),
            in_origin(repo, &form.in_origin),
            "{when}: source {} (ref {:?}) is not at what origin names",
            form.name,
            form.git_ref
        );
    }
}

fn every_ref_form_checks_out_what_origin_names(world: &World, target: &str, dest: &Path) {
    let repo = world.git_repo("repo");
    repo.write("a", "1\n");
    let first = repo.commit("first");
    repo.write("a", "2\n");
    repo.commit("second");
    repo.tag("v1");
    repo.git(&["tag", "-a", "-m", "annotated", "ann"]);
    repo.write("a", "3\n");
    repo.commit("third");
    let forms = ref_forms(&first[..7], &first);
    let sources = sources(&repo, &forms);
    world
        .populate(target, &["--force"], &sources)
        .assert_success();
    assert_checkouts_match_origin(dest, &repo, &forms, "first deploy");

    // origin moves on: its branch, and both tags are moved to the new commit.
    repo.write("a", "4\n");
    repo.commit("fourth");
    repo.git(&["tag", "-f", "v1"]);
    repo.git(&["tag", "-f", "-a", "-m", "moved", "ann"]);
    world.populate(target, &[], &sources).assert_success();
    assert_checkouts_match_origin(dest, &repo, &forms, "after origin moved");
    assert_eq!(git_head(&dest.join("full-hash")), first, "a hash stays put");

    // Nothing moved: `main~1` stays origin's main~1, although `git reset
    // --hard` moved the checkout's local main to it last time.
    world.populate(target, &[], &sources).assert_success();
    assert_checkouts_match_origin(dest, &repo, &forms, "deployed again");
}

#[test]
fn every_ref_form_on_a_local_target() {
    let world = World::new();
    let dest = world.path("local/src");
    every_ref_form_checks_out_what_origin_names(&world, dest.to_str().unwrap(), &dest);
}

#[test]
fn every_ref_form_over_ssh() {
    let world = World::new();
    let alpha = world.add_host("alpha");
    let dest = world.path("remote/src");
    every_ref_form_checks_out_what_origin_names(&world, &alpha.target("root", &dest), &dest);
}

#[test]
fn every_ref_form_with_sudo() {
    let world = World::new();
    let _alpha = world.add_host("alpha");
    let dest = world.mkdir("root-owned").join("src");
    let target = json!({"user": world.sudo_user(), "host": "alpha", "path": dest.to_str().unwrap(), "sudo": true});
    every_ref_form_checks_out_what_origin_names(&world, &target.to_string(), &dest);
}

#[test]
fn a_ref_that_names_nothing_names_the_source_and_the_git_command() {
    let world = World::new();
    let alpha = world.add_host("alpha");
    let repo = world.git_repo("repo");
    repo.write("a", "1\n");
    repo.commit("first");
    let dest = world.path("remote/src");
    let target = alpha.target("root", &dest);
    for (git_ref, command) in [
        ("no-such-branch", "git fetch origin no-such-branch"),
        (
            "origin/no-such-branch",
            "git fetch origin refs/heads/no-such-branch",
        ),
        ("main~5", "git rev-parse --verify FETCH_HEAD~5^{commit}"),
        ("abcdef1", "git rev-parse --verify abcdef1^{commit}"),
    ] {
        let sources = json!({"gone": {"git": {"url": repo.url(), "ref": git_ref}}});
        let out = world.populate(&target, &["--force"], &sources);
        out.assert_failure();
        out.assert_stderr_contains("source gone (git)");
        out.assert_stderr_contains(&format!("populate: failed: {command} (exit status"));
    }
}

#[test]
fn shallow_refuses_refs_that_need_history_before_anything_runs() {
    let world = World::new();
    let repo = world.git_repo("repo");
    repo.commit("first");
    let dest = world.path("local/src");
    for git_ref in ["main~1", "origin/main^", ":/first"] {
        let sources =
            json!({"x": {"git": {"url": repo.file_url(), "ref": git_ref, "shallow": true}}});
        let out = world.populate(dest.to_str().unwrap(), &["--force"], &sources);
        out.assert_failure();
        out.assert_stderr_contains("x.git.ref: ");
        out.assert_stderr_contains("set shallow to false");
        assert!(!dest.exists(), "{git_ref}: nothing may run");
    }
}

#[test]
fn rev_parse_forms_that_are_not_names_are_resolved_after_fetching() {
    let world = World::new();
    let repo = world.git_repo("repo");
    repo.write("a", "1\n");
    repo.commit("the wanted one");
    repo.write("a", "2\n");
    repo.commit("later");
    let dest = world.path("local/src");
    let sources = json!({"x": {"git": {"url": repo.url(), "ref": ":/wanted"}}});
    world
        .populate(dest.to_str().unwrap(), &["--force"], &sources)
        .assert_success();
    assert_eq!(git_head(&dest.join("x")), in_origin(&repo, ":/wanted"));
}
