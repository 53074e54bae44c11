//! End-to-end: how many ssh sessions (commands over the shared connection)
//! a run costs (README: Sources, one connection a run), counted from the test sshd's log, which logs at
//! VERBOSE: one "Starting session" line per session. On a link with a real
//! round-trip time every session costs a few round trips, so what can run
//! together does.

use krops_tests::World;
use serde_json::{json, Value};

/// Sessions host `alias`'s sshd started so far.
fn sessions(world: &World, alias: &str) -> usize {
    world.sshd_log(alias).matches("Starting session: ").count()
}

/// The twelve sources of issue 22's figures: 8 file trees, 2 git
/// checkouts at a commit hash, 2 symlinks.
fn twelve(world: &World) -> Value {
    let mut sources = serde_json::Map::new();
    for i in 0..8 {
        world.write(&format!("trees/t{i}/a.nix"), format!("{{ t = {i}; }}\n"));
        sources.insert(
            format!("tree{i}"),
            json!({"file": world.path(&format!("trees/t{i}")).to_str().unwrap()}),
        );
    }
    for i in 0..2 {
        let repo = world.git_repo(&format!("repo{i}"));
        repo.write("default.nix", format!("{{ r = {i}; }}\n"));
        let commit = repo.commit("first");
        sources.insert(
            format!("repo{i}"),
            json!({"git": {"url": repo.url(), "ref": commit}}),
        );
    }
    sources.insert("link0".into(), json!({"symlink": "tree0"}));
    sources.insert("link1".into(), json!({"symlink": "repo1/default.nix"}));
    Value::Object(sources)
}

/// (handshakes, sessions) one run of populate costs host alpha.
fn cost(world: &World, target: &str, flags: &[&str], sources: &Value) -> (usize, usize) {
    let (h, s) = (world.handshakes("alpha"), sessions(world, "alpha"));
    world.populate(target, flags, sources).assert_success();
    (world.handshakes("alpha") - h, sessions(world, "alpha") - s)
}

#[test]
fn a_run_of_twelve_sources_costs_one_session_for_the_lock_checks_and_checkouts_and_one_for_the_trees(
) {
    let world = World::new();
    let alpha = world.add_host("alpha");
    let dest = world.path("src");
    let target = alpha.target("root", &dest);
    let sources = twelve(&world);
    // One session holds the lock and runs the sentinel check, the
    // symlinks and then both checkouts; the 8 trees are one rsync.
    for (run, flags) in [("first deploy", &["--force"][..]), ("no-op redeploy", &[])] {
        assert_eq!(cost(&world, &target, flags, &sources), (1, 1 + 1), "{run}");
    }
    // One source at a time, each tree is an rsync of its own.
    assert_eq!(
        cost(&world, &target, &["--source-jobs", "1"], &sources),
        (1, 1 + 8)
    );
    assert_eq!(
        std::fs::read_link(dest.join("link0")).unwrap().to_str(),
        Some("tree0")
    );
    // Each source of the batches in the lock's session is told apart: the
    // checkouts are synced, as the trees are.
    let out = world.populate(&target, &["--json"], &sources);
    out.assert_success();
    let results: Value = serde_json::from_str(&out.stdout_str()).unwrap();
    let statuses: Vec<(&str, &str)> = results["targets"][0]["sources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["name"].as_str().unwrap(), s["status"].as_str().unwrap()))
        .collect();
    assert_eq!(statuses.len(), 12, "{statuses:?}");
    assert!(
        statuses.iter().all(|(_, status)| *status == "synced"),
        "{statuses:?}"
    );
    // Without the lock, the checks and symlinks are one session of their
    // own, and so is each checkout.
    assert_eq!(
        cost(&world, &target, &["--no-lock"], &sources),
        (1, 1 + 2 + 1)
    );
}

#[test]
fn symlinks_alone_cost_one_session_however_many() {
    let world = World::new();
    let alpha = world.add_host("alpha");
    let dest = world.path("src");
    let target = alpha.target("root", &dest);
    // 300 fit one batch; 3,000 take several, which run one after another
    // in the lock's session too.
    for n in [300, 3000] {
        let sources: serde_json::Map<String, Value> = (0..n)
            .map(|i| (format!("link{i:04}"), json!({"symlink": "x"})))
            .collect();
        let sources = Value::Object(sources);
        assert_eq!(cost(&world, &target, &["--force"], &sources), (1, 1), "{n}");
        assert_eq!(cost(&world, &target, &[], &sources), (1, 1), "{n}");
    }
}
