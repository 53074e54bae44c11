//! End-to-end: what a demanding user tried of the day's work that nobody
//! had tried before (the lock through the final command, `--check`, the
//! lived-target claim and the git source), and what it found.

use krops_tests::{git_head, World};
use serde_json::json;

/// A shallow clone of one branch at `PATH/NAME` (`git clone --depth 1
/// --branch old`, as a user or another tool leaves it) fetches only that
/// branch: a full git source of a commit on another branch must still get
/// it, as a fresh deploy does.
#[test]
fn a_single_branch_shallow_clone_gets_a_full_sources_commit_of_another_branch() {
    let world = World::new();
    let repo = world.git_repo("repo");
    repo.write("a", "old\n");
    repo.commit("old");
    repo.git(&["branch", "old"]);
    repo.write("a", "main 1\n");
    repo.commit("main 1");
    repo.write("a", "main 2\n");
    let wanted = repo.commit("main 2");
    let dest = world.mkdir("dest");
    world.write("dest/.populate", "");
    let at = dest.join("src");
    world
        .sh(&format!(
            "git clone -q --depth 1 --branch old {} {}",
            krops_tests::quote(repo.file_url().as_ref() as &std::ffi::OsStr),
            krops_tests::quote(at.as_os_str()),
        ))
        .assert_success();
    for git_ref in [wanted.as_str(), "main~1", "main"] {
        let sources = json!({"src": {"git": {"url": repo.url(), "ref": git_ref}}});
        world
            .run(
                "populate",
                &["--target", dest.to_str().unwrap()],
                sources.to_string().as_bytes(),
            )
            .assert_success();
        let origin = repo.git(&["rev-parse", "--verify", &format!("{git_ref}^{{commit}}")]);
        assert_eq!(git_head(&at), origin, "ref {git_ref}");
    }
}
