//! End-to-end, generated (README: Reliability, Lived targets): nothing outside PATH is ever written,
//! whatever shape a lived target has.
//!
//! For every source type, a seeded generator puts at `PATH/NAME` one of the
//! shapes an earlier deploy, a person or a crash leaves ([`Shape`]), and at
//! `PATH`, `PATH/.populate` and `PATH/.populate-lock` one of theirs
//! ([`PlaceShape`]), and places PATH in surroundings that invite escapes
//! ([`Surroundings`]: inside another git work tree, under a symlinked
//! parent, next to directories with the sources' names). It runs populate
//! or krops-command against it, locally and over sshd, as root, through
//! sudo and as a plain user. The oracle, after every run:
//!
//! - everything outside PATH the world can see (the surroundings, the outer
//!   repository's HEAD, index, refs, config and files, the symlinks'
//!   targets, the sources themselves: contents, modes, owners, link
//!   targets) is exactly as before;
//! - the run succeeded and every `PATH/NAME` is what a fresh deploy to an
//!   empty PATH makes, or it failed and the error names each failed source
//!   (a failed source is then dropped and the rest run again);
//! - a second run of what succeeded leaves the same tree.
//!
//! Every (shape, source type) pair runs in every round, several sources a
//! run (one a NAME); the seed picks the surroundings, the driver, `--force`
//! and the shapes at PATH. CI runs [`DEFAULT_SEED`] and [`DEFAULT_ROUNDS`];
//! `scripts/fuzz --shapes ROUNDS` runs more with a random seed
//! (`KROPS_SHAPES_SEED`, `KROPS_SHAPES_ROUNDS`). Pairs listed in [`KNOWN`]
//! fail today for a bug being fixed elsewhere: they are reported, not run.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::Write as _;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;

use krops_tests::{GitRepo, Output, Tree, World, SUDO_USER};
use serde_json::{json, Value};

/// The seed CI runs with.
const DEFAULT_SEED: u64 = 23;

/// Rounds per mode in CI: every pair in each; the four modes' rounds put
/// PATH in surroundings where each two of the three escapes come in all
/// four combinations (see [`shapes_in`]).
const DEFAULT_ROUNDS: usize = 1;

/// What is known to fail today, for a bug another change fixes: skipped and
/// reported as `KNOWN:`; remove a line once its fix has landed.
const KNOWN: &[(Shape, Kind, &str)] = &[];

/// A source type, as the sources of a round have them (git twice: a full
/// clone at a commit hash, and shallow at a branch).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    File,
    Git,
    GitShallow,
    Pass,
    Passage,
    Pipe,
    Symlink,
    Derivation,
}

const KINDS: [Kind; 8] = [
    Kind::File,
    Kind::Git,
    Kind::GitShallow,
    Kind::Pass,
    Kind::Passage,
    Kind::Pipe,
    Kind::Symlink,
    Kind::Derivation,
];

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::File => "file",
            Kind::Git => "git",
            Kind::GitShallow => "gitshallow",
            Kind::Pass => "pass",
            Kind::Passage => "passage",
            Kind::Pipe => "pipe",
            Kind::Symlink => "symlink",
            Kind::Derivation => "derivation",
        }
    }
}

/// What stands at `PATH/NAME` before the run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Shape {
    Nothing,
    EmptyDir,
    Dir,
    File,
    LinkToFile,
    LinkToDir,
    LinkToNothing,
    LinkUp,
    Fifo,
    ReadOnlyDir,
    ForeignDir,
    DotGitSymlink,
    DotGitFile,
    DotGitSkeleton,
    DotGitCorrupt,
    DotGitBadHead,
    OtherOrigin,
    Shallow,
    Submodules,
    LocalChanges,
    OutLinkStore,
    /// A directory holding a read-only file with a second link, outside
    /// PATH (as `cp -al` or a local `git clone` leave).
    Hardlink,
}

const SHAPES: [Shape; 22] = [
    Shape::Nothing,
    Shape::EmptyDir,
    Shape::Dir,
    Shape::File,
    Shape::LinkToFile,
    Shape::LinkToDir,
    Shape::LinkToNothing,
    Shape::LinkUp,
    Shape::Fifo,
    Shape::ReadOnlyDir,
    Shape::ForeignDir,
    Shape::DotGitSymlink,
    Shape::DotGitFile,
    Shape::DotGitSkeleton,
    Shape::DotGitCorrupt,
    Shape::DotGitBadHead,
    Shape::OtherOrigin,
    Shape::Shallow,
    Shape::Submodules,
    Shape::LocalChanges,
    Shape::OutLinkStore,
    Shape::Hardlink,
];

impl Shape {
    fn name(self) -> &'static str {
        match self {
            Shape::Nothing => "nothing",
            Shape::EmptyDir => "emptydir",
            Shape::Dir => "dir",
            Shape::File => "file",
            Shape::LinkToFile => "linkfile",
            Shape::LinkToDir => "linkdir",
            Shape::LinkToNothing => "linknothing",
            Shape::LinkUp => "linkup",
            Shape::Fifo => "fifo",
            Shape::ReadOnlyDir => "readonly",
            Shape::ForeignDir => "foreign",
            Shape::DotGitSymlink => "dotgitlink",
            Shape::DotGitFile => "dotgitfile",
            Shape::DotGitSkeleton => "dotgitempty",
            Shape::DotGitCorrupt => "dotgitcorrupt",
            Shape::DotGitBadHead => "dotgitbadhead",
            Shape::OtherOrigin => "otherorigin",
            Shape::Shallow => "shallow",
            Shape::Submodules => "submodules",
            Shape::LocalChanges => "localchanges",
            Shape::OutLinkStore => "outlink",
            Shape::Hardlink => "hardlink",
        }
    }
}

/// Where the tools run as whom.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// A local target, as root.
    Local,
    /// `root@alpha` over sshd.
    Remote,
    /// The sudo test user over sshd, with `sudo: true`.
    Sudo,
    /// The sudo test user over sshd without sudo, PATH its own: no
    /// derivations (nix's store is root's on this machine).
    User,
}

impl Mode {
    fn kinds(self) -> Vec<Kind> {
        KINDS
            .into_iter()
            .filter(|kind| self != Mode::User || *kind != Kind::Derivation)
            .collect()
    }

    /// Another user than [`Mode::writer`], who owns a foreign directory.
    fn other(self) -> &'static str {
        if self == Mode::User {
            "root"
        } else {
            SUDO_USER
        }
    }
}

/// Where PATH is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Surroundings {
    /// PATH is inside another git work tree (with commits, staged and
    /// unstaged changes and an untracked file).
    in_git_tree: bool,
    /// A parent of PATH is a symlink to a directory.
    linked_parent: bool,
    /// PATH's parent holds a directory named like each source.
    namesakes: bool,
}

impl Surroundings {
    /// How many of the three escapes are there.
    fn escapes(self) -> usize {
        [self.in_git_tree, self.linked_parent, self.namesakes]
            .into_iter()
            .filter(|on| *on)
            .count()
    }

    fn all() -> Vec<Surroundings> {
        let mut all = Vec::new();
        for bits in 0..8u8 {
            all.push(Surroundings {
                in_git_tree: bits & 1 != 0,
                linked_parent: bits & 2 != 0,
                namesakes: bits & 4 != 0,
            });
        }
        all
    }
}

impl std::fmt::Display for Surroundings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        if self.in_git_tree {
            parts.push("in a git work tree");
        }
        if self.linked_parent {
            parts.push("under a symlinked parent");
        }
        if self.namesakes {
            parts.push("next to namesakes");
        }
        if parts.is_empty() {
            parts.push("plain");
        }
        write!(f, "{}", parts.join(", "))
    }
}

/// What stands at PATH, PATH/.populate or PATH/.populate-lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PlaceShape {
    Nothing,
    EmptyDir,
    Dir,
    File,
    LinkToFile,
    LinkToDir,
    LinkToNothing,
    Fifo,
    ReadOnlyDir,
    ForeignDir,
}

impl PlaceShape {
    /// Whether PATH with this shape is a directory the cases can be put in.
    fn keeps_a_directory(self) -> bool {
        matches!(
            self,
            PlaceShape::Dir | PlaceShape::ReadOnlyDir | PlaceShape::ForeignDir
        )
    }
}

/// Which of populate's own places a [`PlaceShape`] is put at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Place {
    Path,
    Sentinel,
    Lock,
}

/// The shapes each place gets, the default (a deployed target) first.
fn place_shapes(place: Place) -> Vec<PlaceShape> {
    use PlaceShape::*;
    match place {
        Place::Path => vec![
            Dir,
            Nothing,
            File,
            LinkToDir,
            LinkToNothing,
            Fifo,
            ReadOnlyDir,
            ForeignDir,
        ],
        Place::Sentinel => vec![
            File,
            Nothing,
            EmptyDir,
            Dir,
            LinkToFile,
            LinkToDir,
            LinkToNothing,
            Fifo,
            ForeignDir,
        ],
        Place::Lock => vec![
            Nothing,
            File,
            EmptyDir,
            LinkToFile,
            LinkToNothing,
            Fifo,
            ForeignDir,
        ],
    }
}

/// A small seeded generator (splitmix64): the same seed, the same rounds.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn coin(&mut self) -> bool {
        self.next() & 1 == 1
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }

    fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            items.swap(i, self.below(i + 1));
        }
    }
}

fn seed() -> u64 {
    std::env::var("KROPS_SHAPES_SEED")
        .ok()
        .map(|s| s.parse().expect("KROPS_SHAPES_SEED must be a number"))
        .unwrap_or(DEFAULT_SEED)
}

fn rounds() -> usize {
    std::env::var("KROPS_SHAPES_ROUNDS")
        .ok()
        .map(|s| s.parse().expect("KROPS_SHAPES_ROUNDS must be a number"))
        .unwrap_or(DEFAULT_ROUNDS)
}

/// Says `text` on the test's real stderr: libtest captures only the print
/// macros, and a KNOWN line must show in every run.
fn say(text: &str) {
    let _ = writeln!(std::io::stderr(), "{text}");
}

/// The world of one mode's rounds: its host, the sources of each type and
/// what a fresh deploy of them looks like.
struct Setup {
    world: World,
    mode: Mode,
    alpha: Option<krops_tests::Host>,
    sources: BTreeMap<Kind, Value>,
    /// Another project, cloned to where the `.git` symlinks lead.
    other: GitRepo,
    /// A store path that is no source's output.
    store_path: PathBuf,
    /// The checkouts of the git shapes, made once, copied into each place.
    templates: PathBuf,
    /// A fresh deploy of every kind, by kind.
    fresh: BTreeMap<Kind, View>,
}

impl Setup {
    fn new(mode: Mode) -> Setup {
        let world = World::new();
        let alpha = (mode != Mode::Local).then(|| world.add_host("alpha"));
        if mode == Mode::Sudo || mode == Mode::User {
            world.sudo_user();
        }
        world.write("src/tree/a.txt", "a\n");
        world.write("src/tree/sub/b.txt", "b\n");
        let sub = world.git_repo("shape-sub");
        sub.write("sub.txt", "in the submodule\n");
        sub.commit("sub");
        let repo = world.git_repo("shape-src");
        repo.write("default.nix", "{ }\n");
        // By a file:// URL, which git never hardlinks from: a checkout
        // sharing inodes with the world's repos would be a shape of its
        // own (see [`Shape::Hardlink`]).
        repo.git(&[
            "-c",
            "protocol.file.allow=always",
            "submodule",
            "add",
            "-q",
            &sub.file_url(),
            "sub",
        ]);
        repo.commit("old");
        repo.tag("old");
        repo.write("default.nix", "{ new = true; }\n");
        let commit = repo.commit("new");
        let other = world.git_repo("shape-other");
        other.write("other.txt", "another project\n");
        other.commit("other");
        let pass = world.pass_store();
        pass.insert_many(
            &[("shapes/k1", "pass-1"), ("shapes/deep/k2", "pass-2")],
            None,
        );
        let passage = world.passage_store();
        passage.insert("p1", "passage-1");
        passage.insert("deep/p2", "passage-2");
        let pipe = world.write_executable("src/gen", "#!/bin/sh\necho piped\n");
        let derivation = |text: &str| {
            format!(
                "builtins.derivation {{ name = \"krops-shape\"; system = builtins.currentSystem; \
                 builder = \"/bin/sh\"; args = [ \"-c\" \"echo {text} > $out\" ]; }}"
            )
        };
        let store_path = {
            let out = world.run_command(
                world.command("nix-build").args([
                    "--no-out-link",
                    "-E",
                    &derivation("an-older-build"),
                ]),
                b"",
            );
            out.assert_success();
            PathBuf::from(out.stdout_str().trim())
        };
        let templates = world.mkdir("templates");
        for shape in [
            Shape::DotGitCorrupt,
            Shape::DotGitBadHead,
            Shape::OtherOrigin,
            Shape::Shallow,
            Shape::Submodules,
            Shape::LocalChanges,
        ] {
            make_checkout(&world, &repo, &other, shape, &templates.join(shape.name()));
        }
        let mut sources = BTreeMap::new();
        let s = |p: &Path| p.to_str().unwrap().to_owned();
        sources.insert(Kind::File, json!({"file": s(&world.path("src/tree"))}));
        sources.insert(
            Kind::Git,
            json!({"git": {"url": repo.url(), "ref": commit}}),
        );
        sources.insert(
            Kind::GitShallow,
            json!({"git": {"url": repo.url(), "ref": "main", "shallow": true}}),
        );
        sources.insert(
            Kind::Pass,
            json!({"pass": {"dir": s(pass.dir()), "name": "shapes"}}),
        );
        sources.insert(Kind::Passage, json!({"passage": s(passage.dir())}));
        sources.insert(Kind::Pipe, json!({"pipe": s(&pipe)}));
        sources.insert(Kind::Symlink, json!({"symlink": "some/where"}));
        sources.insert(
            Kind::Derivation,
            json!({"derivation": derivation("built-by-nix")}),
        );
        let mut setup = Setup {
            world,
            mode,
            alpha,
            sources,
            other,
            store_path,
            templates,
            fresh: BTreeMap::new(),
        };
        setup.fresh = setup.fresh_deploy();
        setup
    }

    /// The target naming `path` in this mode.
    fn target(&self, mode: Mode, path: &Path) -> String {
        let p = path.to_str().unwrap();
        match mode {
            Mode::Local => p.to_owned(),
            Mode::Remote => self.alpha.as_ref().unwrap().target("root", path),
            Mode::Sudo => {
                json!({"user": SUDO_USER, "host": "alpha", "path": p, "sudo": true}).to_string()
            }
            Mode::User => json!({"user": SUDO_USER, "host": "alpha", "path": p}).to_string(),
        }
    }

    /// Every kind deployed with `--force` to an empty PATH, by kind.
    fn fresh_deploy(&self) -> BTreeMap<Kind, View> {
        let parent = self.world.mkdir("fresh");
        if self.mode == Mode::User {
            chown(&self.world, &parent, SUDO_USER);
        }
        let path = parent.join("src");
        let sources: serde_json::Map<String, Value> = self
            .mode
            .kinds()
            .into_iter()
            .map(|kind| (kind.name().to_owned(), self.sources[&kind].clone()))
            .collect();
        let out = self.populate(
            self.mode,
            Driver::Populate,
            &path,
            &["--force"],
            &Value::Object(sources),
        );
        out.output.assert_success();
        self.mode
            .kinds()
            .into_iter()
            .map(|kind| (kind, View::of(&path.join(kind.name()))))
            .collect()
    }

    fn populate(
        &self,
        mode: Mode,
        driver: Driver,
        path: &Path,
        flags: &[&str],
        sources: &Value,
    ) -> Run {
        let file = self.world.write("sources.json", sources.to_string());
        let results = self.world.path("results.json");
        let _ = std::fs::remove_file(&results);
        let target = self.target(mode, path);
        let mut args = vec![
            "--target",
            &target,
            "--sources",
            file.to_str().unwrap(),
            "--json-file",
            results.to_str().unwrap(),
        ];
        args.extend_from_slice(flags);
        let tool = match driver {
            Driver::Populate => "populate",
            Driver::Command => {
                args.push("true");
                "krops-command"
            }
        };
        let output = self.world.run(tool, &args, b"");
        let statuses = std::fs::read(&results)
            .ok()
            .and_then(|bytes| serde_json::from_slice::<Value>(&bytes).ok())
            .map(|doc| {
                doc["targets"][0]["sources"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|s| {
                        (
                            s["name"].as_str().unwrap_or("").to_owned(),
                            s["status"].as_str().unwrap_or("").to_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        Run { output, statuses }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Driver {
    Populate,
    Command,
}

/// A run and the status of each source from its `--json-file`.
struct Run {
    output: Output,
    statuses: BTreeMap<String, String>,
}

/// What a deployed `PATH/NAME` is, for comparing with a fresh deploy: every
/// path with its kind, content, mode and owner, but inside a checkout's
/// `.git` only what a user sees of it (HEAD, shallow or not, origin, status,
/// submodules), never git's own files.
#[derive(Clone, Debug, PartialEq, Eq)]
struct View(BTreeMap<String, String>);

impl View {
    fn of(path: &Path) -> View {
        let tree = Tree::snapshot(path);
        let mut view = BTreeMap::new();
        for (rel, entry) in &tree.0 {
            if rel
                .split('/')
                .collect::<Vec<_>>()
                .windows(2)
                .any(|w| w[0] == ".git")
            {
                continue;
            }
            view.insert(rel.clone(), format!("{entry:?}"));
        }
        if tree.get(".git").is_some() {
            // One shell for all of it: a run checks dozens of checkouts.
            let script = "g() { echo \"<$1>\"; shift; git -c safe.directory='*' \"$@\" 2>&1; echo \"exit $?\"; }
g HEAD rev-parse HEAD
g shallow rev-parse --is-shallow-repository
g origin config remote.origin.url
g status status --porcelain --ignored --ignore-submodules=none
g submodules submodule status --recursive";
            let out = Command::new("/bin/sh")
                .args(["-c", script])
                .current_dir(path)
                .output()
                .expect("run /bin/sh");
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            let mut key = String::new();
            for line in text.lines() {
                if line.starts_with('<') && line.ends_with('>') {
                    key = line.to_owned();
                    view.insert(key.clone(), String::new());
                } else if let Some(value) = view.get_mut(&key) {
                    value.push_str(line);
                    value.push('\n');
                }
            }
        }
        View(view)
    }

    fn diff(&self, fresh: &View) -> Vec<String> {
        let mut lines = Vec::new();
        for (rel, now) in &self.0 {
            match fresh.0.get(rel) {
                None => lines.push(format!("extra {rel}: {now}")),
                Some(want) if want != now => lines.push(format!("{rel}: {now}, fresh: {want}")),
                Some(_) => {}
            }
        }
        for (rel, want) in &fresh.0 {
            if !self.0.contains_key(rel) {
                lines.push(format!("missing {rel}: {want}"));
            }
        }
        lines
    }
}

/// Everything outside PATH that the world can see: the world's whole tree
/// but PATH (and where a symlinked PATH leads), the other rounds'
/// directories (no shape leads out of its own round's) and the places only
/// the tools' helpers write (TMPDIR, which must end up empty anyway; sshd's
/// logs; gpg's agent; the stand-ins' records; the run's own input and
/// results).
fn outside(world: &World, round_dir: &Path, path: &Path) -> Tree {
    let root = world.root();
    let mut skip: Vec<PathBuf> = [path.to_owned()]
        .into_iter()
        .chain(path.canonicalize().ok())
        .collect();
    let helpers = [
        "tmp",
        "hosts",
        "gnupg",
        "records",
        "results.json",
        "sources.json",
    ];
    let mut tree = Tree::default();
    for entry in std::fs::read_dir(root).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_str().unwrap().to_owned();
        let other_round =
            (name.starts_with("round-") || name == "fresh") && entry.path() != round_dir;
        if helpers.contains(&name.as_str()) || other_round {
            continue;
        }
        for (rel, item) in Tree::snapshot(&entry.path()).0 {
            let full = if rel == "." {
                name.clone()
            } else {
                format!("{name}/{rel}")
            };
            tree.0.insert(full, item);
        }
    }
    skip.retain(|p| p.starts_with(root));
    tree.0.retain(|rel, _| {
        let full = root.join(rel);
        !skip.iter().any(|s| full.starts_with(s))
    });
    tree
}

/// Makes the checkout of a git `shape` at `at`.
fn make_checkout(world: &World, repo: &GitRepo, other: &GitRepo, shape: Shape, at: &Path) {
    let clone = |url: &str, flags: &str| {
        sh(
            world,
            &format!(
                "git clone -q --no-hardlinks --recurse-submodules {flags} {} {}",
                krops_tests::quote(url.as_ref()),
                q(at)
            ),
        )
    };
    match shape {
        Shape::DotGitCorrupt => {
            // A clone whose objects are gone: git still takes it for a
            // repository, but nothing in it can be read.
            clone(&repo.url(), "");
            sh(
                world,
                &format!("find {}/.git/objects -type f -delete", q(at)),
            );
        }
        Shape::DotGitBadHead => {
            // A clone whose HEAD is garbage: git no longer takes its .git
            // for a repository at all.
            clone(&repo.url(), "");
            std::fs::write(at.join(".git/HEAD"), "garbage\n").unwrap();
        }
        Shape::OtherOrigin => clone(&other.url(), ""),
        Shape::Shallow => clone(
            &repo.file_url(),
            "--depth 1 --branch old --no-recurse-submodules",
        ),
        Shape::Submodules => {
            clone(&repo.url(), "");
            std::fs::write(at.join("sub/sub.txt"), "changed in the submodule\n").unwrap();
            std::fs::write(at.join("sub/extra.txt"), "untracked in the submodule\n").unwrap();
        }
        Shape::LocalChanges => {
            clone(&repo.url(), "");
            std::fs::write(at.join("default.nix"), "{ changed = true; }\n").unwrap();
            std::fs::write(at.join("staged.nix"), "{ }\n").unwrap();
            sh(world, &format!("git -C {} add staged.nix", q(at)));
            std::fs::write(at.join("untracked.txt"), "untracked\n").unwrap();
        }
        _ => unreachable!("{shape:?} is no checkout"),
    }
}

/// Copies the tree at `from` to `to`: directories, files and symlinks,
/// with their modes, as new files (no link to the template).
fn copy_tree(from: &Path, to: &Path) {
    let meta = std::fs::symlink_metadata(from).unwrap();
    if meta.file_type().is_symlink() {
        symlink(std::fs::read_link(from).unwrap(), to).unwrap();
    } else if meta.is_dir() {
        std::fs::create_dir(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            copy_tree(&entry.path(), &to.join(entry.file_name()));
        }
        std::fs::set_permissions(to, meta.permissions()).unwrap();
    } else {
        std::fs::copy(from, to).unwrap();
    }
}

fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// One source of a round: its name, type and the shape at its place.
#[derive(Clone, Debug)]
struct Case {
    name: String,
    kind: Kind,
    shape: Shape,
}

/// One round: PATH in its surroundings, a shape at each of populate's
/// places, the driver and the flags, and a case for every pair.
struct Round {
    index: usize,
    /// Where the tools run as whom (the setup's mode, or for the rounds
    /// of populate's own places, any but [`Mode::User`]).
    mode: Mode,
    surroundings: Surroundings,
    driver: Driver,
    force: bool,
    place: Option<(Place, PlaceShape)>,
    /// The round's own directory and PATH in it.
    dir: PathBuf,
    path: PathBuf,
    /// Where symlinks of the shapes lead: a file, a directory, a checkout.
    out: PathBuf,
}

fn sh(world: &World, script: &str) {
    world.sh(script).assert_success();
}

fn chown(world: &World, path: &Path, user: &str) {
    let out = world.run_command(
        Command::new("chown")
            .arg("-R")
            .arg(format!("{user}:{user}"))
            .arg(path),
        b"",
    );
    out.assert_success();
}

fn q(path: &Path) -> String {
    krops_tests::quote(path.as_os_str())
}

impl Round {
    /// Makes the round's directory, the outside places its symlinks lead
    /// to, and PATH's parent in its surroundings (PATH itself not yet).
    fn new(s: &Setup, index: usize, rng: &mut Rng, surroundings: Surroundings) -> Round {
        let world = &s.world;
        let rel = format!("round-{index}");
        let dir = world.mkdir(&rel);
        let out = world.mkdir(&format!("{rel}/outside"));
        world.write(&format!("{rel}/outside/file"), "precious\n");
        world.write(&format!("{rel}/outside/dir/kept.txt"), "kept\n");
        sh(
            world,
            &format!(
                "git clone -q --no-hardlinks {} {}/repo",
                krops_tests::quote(s.other.url().as_ref()),
                q(&out)
            ),
        );
        let mut parent = dir.clone();
        if surroundings.in_git_tree {
            parent = parent.join("outer");
            std::fs::create_dir_all(parent.join("docs")).unwrap();
            std::fs::write(parent.join("docs/readme"), "outer repo\n").unwrap();
            std::fs::write(parent.join("tracked"), "committed\n").unwrap();
            sh(
                world,
                &format!(
                    "cd {p} && git init -q -b main . && git add -A && git commit -q -m outer && \
                     echo unstaged >>tracked && echo staged >docs/staged && git add docs/staged && \
                     echo untracked >untracked",
                    p = q(&parent)
                ),
            );
        }
        if surroundings.linked_parent {
            std::fs::create_dir_all(parent.join("real")).unwrap();
            symlink("real", parent.join("linked")).unwrap();
            parent = parent.join("linked");
        } else {
            parent = parent.join("plain");
            std::fs::create_dir_all(&parent).unwrap();
        }
        if s.mode == Mode::User {
            chown(world, &parent.canonicalize().unwrap(), SUDO_USER);
        }
        let driver = if rng.coin() {
            Driver::Populate
        } else {
            Driver::Command
        };
        Round {
            index,
            mode: s.mode,
            surroundings,
            driver,
            force: rng.coin(),
            place: None,
            path: parent.join("src"),
            dir,
            out,
        }
    }

    /// Puts `shape` at `at`, a place of PATH, as `user` would have it.
    fn put(&self, s: &Setup, at: &Path, shape: Shape) {
        let world = &s.world;
        let out = &self.out;
        match shape {
            Shape::Nothing => {}
            Shape::EmptyDir => std::fs::create_dir(at).unwrap(),
            Shape::Dir => {
                std::fs::create_dir_all(at.join("sub")).unwrap();
                std::fs::write(at.join("old.txt"), "old\n").unwrap();
                std::fs::write(at.join("sub/deep.txt"), "deep\n").unwrap();
            }
            Shape::File => std::fs::write(at, "an old file\n").unwrap(),
            Shape::LinkToFile => symlink(out.join("file"), at).unwrap(),
            Shape::LinkToDir => symlink(out.join("dir"), at).unwrap(),
            Shape::LinkToNothing => symlink(out.join("missing"), at).unwrap(),
            Shape::LinkUp => symlink("..", at).unwrap(),
            Shape::Fifo => sh(world, &format!("mkfifo {}", q(at))),
            Shape::ReadOnlyDir => {
                std::fs::create_dir(at).unwrap();
                std::fs::write(at.join("old.txt"), "read-only\n").unwrap();
                chmod(&at.join("old.txt"), 0o444);
                chmod(at, 0o555);
            }
            Shape::ForeignDir => {
                std::fs::create_dir(at).unwrap();
                std::fs::write(at.join("old.txt"), "someone else's\n").unwrap();
                chown(world, at, s.mode.other());
            }
            Shape::DotGitSymlink => {
                std::fs::create_dir(at).unwrap();
                symlink(out.join("repo/.git"), at.join(".git")).unwrap();
            }
            Shape::DotGitFile => {
                std::fs::create_dir(at).unwrap();
                let text = format!("gitdir: {}\n", out.join("repo/.git").display());
                std::fs::write(at.join(".git"), text).unwrap();
            }
            Shape::DotGitSkeleton => std::fs::create_dir_all(at.join(".git")).unwrap(),
            Shape::DotGitCorrupt
            | Shape::DotGitBadHead
            | Shape::OtherOrigin
            | Shape::Shallow
            | Shape::Submodules
            | Shape::LocalChanges => copy_tree(&s.templates.join(shape.name()), at),
            Shape::OutLinkStore => symlink(&s.store_path, at).unwrap(),
            Shape::Hardlink => {
                std::fs::create_dir(at).unwrap();
                let name = at.file_name().unwrap().to_str().unwrap();
                let outside = out.join(format!("linked-{name}"));
                std::fs::write(&outside, "read-only, linked from PATH\n").unwrap();
                chmod(&outside, 0o444);
                std::fs::hard_link(&outside, at.join("linked")).unwrap();
            }
        }
    }

    /// Puts `shape` at one of populate's own places (PATH, which then
    /// exists as a directory with a sentinel unless the shape says
    /// otherwise).
    fn put_place(&self, s: &Setup, at: &Path, shape: PlaceShape) {
        let world = &s.world;
        let out = &self.out;
        match shape {
            PlaceShape::Nothing => {}
            PlaceShape::EmptyDir => std::fs::create_dir(at).unwrap(),
            PlaceShape::Dir => {
                std::fs::create_dir_all(at.join("sub")).unwrap();
                std::fs::write(at.join("sub/old.txt"), "old\n").unwrap();
            }
            PlaceShape::File => std::fs::write(at, "").unwrap(),
            PlaceShape::LinkToFile => symlink(out.join("file"), at).unwrap(),
            PlaceShape::LinkToDir => symlink(out.join("dir"), at).unwrap(),
            PlaceShape::LinkToNothing => symlink(out.join("missing"), at).unwrap(),
            PlaceShape::Fifo => sh(world, &format!("mkfifo {}", q(at))),
            PlaceShape::ReadOnlyDir => {
                std::fs::create_dir(at).unwrap();
                std::fs::write(at.join(".populate"), "").unwrap();
                sh(world, &format!("chmod 0555 {}", q(at)));
            }
            PlaceShape::ForeignDir => {
                std::fs::create_dir_all(at).unwrap();
                chown(world, at, s.mode.other());
            }
        }
    }

    /// Makes PATH and the cases' shapes in it, and the namesakes beside it.
    fn build(&self, s: &Setup, cases: &[Case]) {
        let world = &s.world;
        let path = &self.path;
        match self.place {
            Some((Place::Path, shape)) => self.put_place(s, path, shape),
            _ => std::fs::create_dir(path).unwrap(),
        }
        if path.is_dir() && !path.is_symlink() {
            let sentinel = path.join(".populate");
            match self.place {
                Some((Place::Sentinel, shape)) => self.put_place(s, &sentinel, shape),
                Some((Place::Path, PlaceShape::ReadOnlyDir)) => {}
                _ => std::fs::write(&sentinel, "").unwrap(),
            }
            if let Some((Place::Lock, shape)) = self.place {
                self.put_place(s, &path.join(".populate-lock"), shape);
            }
            let read_only = self.place == Some((Place::Path, PlaceShape::ReadOnlyDir));
            if read_only {
                sh(world, &format!("chmod 0755 {}", q(path)));
            }
            for case in cases {
                let at = path.join(&case.name);
                self.put(s, &at, case.shape);
                assert!(
                    case.shape == Shape::Nothing || at.symlink_metadata().is_ok(),
                    "{}: no {:?} made",
                    at.display(),
                    case.shape
                );
            }
            if s.mode == Mode::User && self.place != Some((Place::Path, PlaceShape::ForeignDir)) {
                // PATH is the user's; a foreign shape stays root's.
                sh(
                    world,
                    &format!("chown -R {SUDO_USER}:{SUDO_USER} {}", q(path)),
                );
                for case in cases.iter().filter(|c| c.shape == Shape::ForeignDir) {
                    chown(world, &path.join(&case.name), "root");
                }
                if let Some((place, PlaceShape::ForeignDir)) = self.place {
                    let at = match place {
                        Place::Sentinel => path.join(".populate"),
                        _ => path.join(".populate-lock"),
                    };
                    chown(world, &at, "root");
                }
            }
            if read_only {
                sh(world, &format!("chmod 0555 {}", q(path)));
            }
        }
        if self.surroundings.namesakes {
            let parent = path.parent().unwrap();
            for case in cases {
                let namesake = parent.join(&case.name);
                std::fs::create_dir(&namesake).unwrap();
                std::fs::write(namesake.join("namesake.txt"), "beside PATH\n").unwrap();
            }
        }
    }

    fn describe(&self) -> String {
        format!(
            "round {} ({:?}, {}, {:?}{}{})",
            self.index,
            self.mode,
            self.surroundings,
            self.driver,
            if self.force { ", --force" } else { "" },
            match self.place {
                Some((place, shape)) => format!(", {place:?} is {shape:?}"),
                None => String::new(),
            }
        )
    }
}

/// What the rounds found, for the summary and the assertion.
#[derive(Default)]
struct Findings {
    problems: Vec<String>,
    /// (shape, kind) → how it ended: "ok" or "failed, named".
    outcomes: BTreeMap<(Shape, Kind), BTreeSet<&'static str>>,
    runs: usize,
    /// (place, shape) → how the run ended.
    places: BTreeMap<String, BTreeSet<&'static str>>,
    /// Each round, as [`Round::describe`] says it.
    rounds: Vec<String>,
    /// The cases already found to differ from a fresh deploy (said once).
    differ: BTreeSet<String>,
    /// Rounds made to find which cases wrote outside PATH.
    isolations: usize,
}

fn is_known(shape: Shape, kind: Kind) -> Option<&'static str> {
    KNOWN
        .iter()
        .find(|(s, k, _)| *s == shape && *k == kind)
        .map(|(_, _, why)| *why)
}

/// Runs one round: the cases' sources until what is left succeeds, then
/// once more; checks the oracle after every run.
fn run_round(s: &Setup, round: &Round, cases: Vec<Case>, found: &mut Findings) {
    let world = &s.world;
    round.build(s, &cases);
    let what = round.describe();
    found.rounds.push(what.clone());
    let mut left = cases;
    let mut flags: Vec<&str> = Vec::new();
    if round.force {
        flags.push("--force");
    }
    let mut place_failed = false;
    loop {
        let sources: serde_json::Map<String, Value> = left
            .iter()
            .map(|case| (case.name.clone(), s.sources[&case.kind].clone()))
            .collect();
        let sources = Value::Object(sources);
        let before = outside(world, &round.dir, &round.path);
        let run = s.populate(round.mode, round.driver, &round.path, &flags, &sources);
        found.runs += 1;
        let after = outside(world, &round.dir, &round.path);
        let diff = before.diff(&after);
        let out = &run.output;
        let stderr = out.stderr_str();
        if !diff.is_empty() {
            let culprits = if left.len() == 1 {
                left.clone()
            } else {
                culprits(s, round, &left, found)
            };
            for case in &culprits {
                found
                    .outcomes
                    .entry((case.shape, case.kind))
                    .or_default()
                    .insert("WROTE OUTSIDE PATH");
            }
            found.problems.push(format!(
                "{what}: wrote outside PATH ({}):\n  {}\n{}",
                culprits
                    .iter()
                    .map(|c| c.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                diff.iter()
                    .take(12)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("\n  "),
                excerpt(&stderr, &culprits)
            ));
            // Go on without them: the snapshot is taken anew each run.
            if culprits.is_empty() {
                return;
            }
            left.retain(|case| !culprits.iter().any(|c| c.name == case.name));
            continue;
        }
        let leftovers: Vec<_> = std::fs::read_dir(world.tmp_dir()).unwrap().collect();
        if !leftovers.is_empty() {
            found
                .problems
                .push(format!("{what}: files left in TMPDIR: {leftovers:?}"));
        }
        let failed: Vec<Case> = left
            .iter()
            .filter(|case| run.statuses.get(&case.name).map(String::as_str) == Some("failed"))
            .cloned()
            .collect();
        for case in &left {
            let status = run.statuses.get(&case.name).map(String::as_str);
            if status == Some("failed") {
                if !stderr.contains(&case.name) {
                    found.problems.push(format!(
                        "{what}: {} failed, and the error does not name it\n{}",
                        case.name,
                        excerpt(&stderr, std::slice::from_ref(case))
                    ));
                }
                found
                    .outcomes
                    .entry((case.shape, case.kind))
                    .or_default()
                    .insert("fails naming the source");
                continue;
            }
            // What is left is looked at once, when it all succeeded.
            if !out.success() {
                continue;
            }
            let view = View::of(&round.path.join(&case.name));
            let diff = view.diff(&s.fresh[&case.kind]);
            if diff.is_empty() {
                found
                    .outcomes
                    .entry((case.shape, case.kind))
                    .or_default()
                    .insert("deployed");
            } else {
                found
                    .outcomes
                    .entry((case.shape, case.kind))
                    .or_default()
                    .insert("NOT AS A FRESH DEPLOY");
                if !found.differ.insert(case.name.clone()) {
                    continue;
                }
                found.problems.push(format!(
                    "{what}: {} ({}) is not what a fresh deploy makes (exit {:?}):\n  {}\n{}",
                    case.name,
                    status.unwrap_or("?"),
                    out.code(),
                    diff.join("\n  "),
                    excerpt(&stderr, std::slice::from_ref(case))
                ));
            }
        }
        if out.success() {
            if let (Some((place, shape)), false) = (round.place, place_failed) {
                found
                    .places
                    .entry(format!("{place:?} is {shape:?}"))
                    .or_default()
                    .insert("deployed");
            }
            break;
        }
        if failed.is_empty() {
            // The run as a whole failed: only a shape at PATH, its sentinel
            // or its lock may do that, and the error must say where.
            let shown = round.path.to_str().unwrap();
            if round.place.is_none() || place_failed {
                found.problems.push(format!(
                    "{what}: failed, naming no source\n{}",
                    excerpt(&stderr, &[])
                ));
                return;
            }
            if !stderr.contains(shown) {
                found.problems.push(format!(
                    "{what}: failed without naming {shown}\n{}",
                    excerpt(&stderr, &[])
                ));
            }
            if let Some((place, shape)) = round.place {
                found
                    .places
                    .entry(format!("{place:?} is {shape:?}"))
                    .or_default()
                    .insert("refused, naming PATH");
            }
            // Repair the place, as a person would, and go on.
            place_failed = true;
            repair_place(s, round);
            continue;
        }
        left.retain(|case| !failed.iter().any(|f| f.name == case.name));
        if left.is_empty() {
            return;
        }
    }
    // A second run leaves the same tree.
    let sources: serde_json::Map<String, Value> = left
        .iter()
        .map(|case| (case.name.clone(), s.sources[&case.kind].clone()))
        .collect();
    let first = path_tree(&round.path);
    let run = s.populate(
        round.mode,
        round.driver,
        &round.path,
        &flags,
        &Value::Object(sources),
    );
    found.runs += 1;
    let second = path_tree(&round.path);
    if !run.output.success() {
        found.problems.push(format!(
            "{what}: the second run failed\n{}",
            excerpt(&run.output.stderr_str(), &left)
        ));
    }
    let diff = first.diff(&second);
    if !diff.is_empty() {
        found.problems.push(format!(
            "{what}: the second run changed the tree:\n  {}",
            diff.join("\n  ")
        ));
    }
}

/// Which of `cases` write outside PATH, each alone or with others: the
/// halves run again, each in a fresh round like `round`, until single
/// cases are left.
fn culprits(s: &Setup, round: &Round, cases: &[Case], found: &mut Findings) -> Vec<Case> {
    let writes = |cases: &[Case], found: &mut Findings| {
        let index = found.isolations + 1000;
        found.isolations += 1;
        let mut rng = Rng(index as u64);
        let mut again = Round::new(s, index, &mut rng, round.surroundings);
        again.mode = round.mode;
        again.driver = round.driver;
        again.force = round.force;
        again.build(s, cases);
        let flags: &[&str] = if round.force { &["--force"] } else { &[] };
        // A failed source stops the ones after it: drop it and run again.
        let mut left = cases.to_vec();
        while !left.is_empty() {
            let sources: serde_json::Map<String, Value> = left
                .iter()
                .map(|case| (case.name.clone(), s.sources[&case.kind].clone()))
                .collect();
            let before = outside(&s.world, &again.dir, &again.path);
            let run = s.populate(
                again.mode,
                again.driver,
                &again.path,
                flags,
                &Value::Object(sources),
            );
            found.runs += 1;
            if before != outside(&s.world, &again.dir, &again.path) {
                return true;
            }
            let count = left.len();
            left.retain(|case| run.statuses.get(&case.name).map(String::as_str) != Some("failed"));
            if run.output.success() || left.len() == count {
                break;
            }
        }
        false
    };
    if cases.len() == 1 {
        return if writes(cases, found) {
            cases.to_vec()
        } else {
            Vec::new()
        };
    }
    let (a, b) = cases.split_at(cases.len() / 2);
    let mut all = Vec::new();
    for half in [a, b] {
        if writes(half, found) {
            all.extend(culprits(s, round, half, found));
        }
    }
    all
}

/// The lines of `stderr` that name one of `cases`, or say an error.
fn excerpt(stderr: &str, cases: &[Case]) -> String {
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|line| {
            line.contains("error") || cases.iter().any(|case| line.contains(case.name.as_str()))
        })
        .collect();
    let start = lines.len().saturating_sub(20);
    lines[start..].join("\n")
}

/// PATH's tree as a second run must leave it: all of it but the lock
/// file's holder line, which names each run.
fn path_tree(path: &Path) -> Tree {
    let mut tree = Tree::snapshot(path);
    tree.0.remove(".populate-lock");
    tree
}

/// After a run that failed for a shape at PATH, its sentinel or its lock:
/// makes that place what a deployed target has.
fn repair_place(s: &Setup, round: &Round) {
    let path = &round.path;
    let remove = |at: &Path| {
        sh(
            &s.world,
            &format!("chmod -R u+w {0} 2>/dev/null; rm -fR {0}", q(at)),
        )
    };
    match round.place {
        Some((Place::Path, _)) => {
            if !path.is_dir() || path.is_symlink() {
                remove(path);
                std::fs::create_dir(path).unwrap();
                std::fs::write(path.join(".populate"), "").unwrap();
            }
            sh(&s.world, &format!("chmod 0755 {}", q(path)));
            if !path.join(".populate").exists() {
                std::fs::write(path.join(".populate"), "").unwrap();
            }
        }
        Some((Place::Sentinel, _)) => {
            remove(&path.join(".populate"));
            std::fs::write(path.join(".populate"), "").unwrap();
        }
        Some((Place::Lock, _)) => remove(&path.join(".populate-lock")),
        None => {}
    }
    if s.mode == Mode::User {
        // PATH alone: the shapes in it keep their owners.
        sh(
            &s.world,
            &format!("chown {SUDO_USER}:{SUDO_USER} {}", q(path)),
        );
    }
}

/// All pairs but the known ones, named `KIND-SHAPE`.
fn cases(mode: Mode, found: &mut BTreeSet<String>) -> Vec<Case> {
    let mut cases = Vec::new();
    for kind in mode.kinds() {
        for shape in SHAPES {
            if let Some(why) = is_known(shape, kind) {
                found.insert(format!(
                    "KNOWN: {} at PATH/NAME of a {} source skipped: {why}",
                    shape.name(),
                    kind.name()
                ));
                continue;
            }
            cases.push(Case {
                name: format!("{}-{}", kind.name(), shape.name()),
                kind,
                shape,
            });
        }
    }
    cases
}

/// Runs `rounds()` rounds in `mode` and fails with every problem found.
fn shapes_in(mode: Mode, mode_index: usize) {
    let seed = seed();
    let mut rng = Rng(seed ^ (mode_index as u64) << 32);
    let s = Setup::new(mode);
    // The first four cover each pair of the three escapes both ways (an
    // orthogonal array: 000, 011, 101, 110), the other four come after.
    let (mut first, mut then): (Vec<Surroundings>, Vec<Surroundings>) = Surroundings::all()
        .into_iter()
        .partition(|s| s.escapes().is_multiple_of(2));
    Rng(seed).shuffle(&mut first);
    Rng(seed).shuffle(&mut then);
    let surroundings: Vec<Surroundings> = first.into_iter().chain(then).collect();
    let mut found = Findings::default();
    let mut known = BTreeSet::new();
    let rounds = rounds();
    for index in 0..rounds {
        // Across the modes' CI rounds, each surroundings comes once.
        let around = surroundings[(mode_index * rounds + index) % surroundings.len()];
        let mut round = Round::new(&s, index, &mut rng, around);
        // One of populate's own places gets a shape in half the rounds
        // (PATH only one it is still a directory in: see
        // `every_shape_at_populate_s_own_places` for the others).
        if rng.coin() {
            let place = rng.pick(&[Place::Path, Place::Sentinel, Place::Lock]);
            let shapes: Vec<PlaceShape> = place_shapes(place)
                .into_iter()
                .skip(1)
                .filter(|shape| place != Place::Path || shape.keeps_a_directory())
                .collect();
            round.place = Some((place, rng.pick(&shapes)));
        }
        let mut cases = cases(mode, &mut known);
        rng.shuffle(&mut cases);
        run_round(&s, &round, cases, &mut found);
    }
    for line in &known {
        say(line);
    }
    report(&format!("{mode:?}"), seed, &found);
}

/// Says what the rounds did and fails with every problem found.
fn report(what: &str, seed: u64, found: &Findings) {
    let rounds = rounds();
    let mut summary = String::new();
    let deployed = found
        .outcomes
        .values()
        .filter(|outcomes| outcomes.iter().eq(["deployed"].iter()))
        .count();
    let _ = writeln!(
        summary,
        "  {deployed} pairs always deployed as fresh; the others:"
    );
    for ((shape, kind), outcomes) in &found.outcomes {
        if outcomes.iter().eq(["deployed"].iter()) {
            continue;
        }
        let _ = writeln!(
            summary,
            "  {:>12} × {:<10} {}",
            shape.name(),
            kind.name(),
            outcomes.iter().copied().collect::<Vec<_>>().join(", ")
        );
    }
    for round in &found.rounds {
        let _ = writeln!(summary, "  {round}");
    }
    for (place, outcomes) in &found.places {
        let _ = writeln!(
            summary,
            "  {place:>24}: {}",
            outcomes.iter().copied().collect::<Vec<_>>().join(", ")
        );
    }
    say(&format!(
        "shapes {what} (seed {seed}, {rounds} rounds, {} runs): {} pairs\n{summary}",
        found.runs,
        found.outcomes.len()
    ));
    if !found.problems.is_empty() {
        panic!(
            "{} problems (seed {seed}):\n\n{}",
            found.problems.len(),
            found.problems.join("\n\n")
        );
    }
}

/// Reliability (Lived target): every shape at PATH/NAME × every source type, a local target, PATH in a git work tree, under a symlinked parent, next to namesakes → nothing outside PATH changes; each PATH/NAME is what a fresh deploy makes, or the run fails naming the source; a second run leaves the same tree
#[test]
fn every_shape_on_a_local_target() {
    shapes_in(Mode::Local, 0);
}

/// Reliability (Lived target): the same over sshd as root → same
#[test]
fn every_shape_over_ssh() {
    shapes_in(Mode::Remote, 1);
}

/// Reliability (Lived target): the same through sudo → same
#[test]
fn every_shape_through_sudo() {
    shapes_in(Mode::Sudo, 2);
}

/// Reliability (Lived target): the same as a plain user without sudo (no derivations) → same; what the user may not replace fails naming the source
#[test]
fn every_shape_as_a_plain_user() {
    shapes_in(Mode::User, 3);
}

/// Every shape at PATH, PATH/.populate and PATH/.populate-lock, each in a
/// round of its own with a few sources, as root here, over ssh or through
/// sudo (the seed picks which, the surroundings, the driver and `--force`).
/// Reliability (Lived target): every shape at PATH, PATH/.populate and PATH/.populate-lock → nothing outside PATH changes; refused naming PATH, or deployed as fresh
#[test]
fn every_shape_at_populate_s_own_places() {
    let seed = seed();
    let mut rng = Rng(seed ^ 0x0077_6e00_0000_0000);
    let s = Setup::new(Mode::Remote);
    // Some rounds run through sudo: say so first when it cannot.
    s.world.sudo_user();
    let mut found = Findings::default();
    let mut index = 0;
    for _ in 0..rounds().div_ceil(DEFAULT_ROUNDS) {
        for place in [Place::Path, Place::Sentinel, Place::Lock] {
            for shape in place_shapes(place).into_iter().skip(1) {
                let around = rng.pick(&Surroundings::all());
                let mut round = Round::new(&s, index, &mut rng, around);
                index += 1;
                round.mode = rng.pick(&[Mode::Local, Mode::Remote, Mode::Sudo]);
                round.place = Some((place, shape));
                let cases = [Kind::File, Kind::Git, Kind::Symlink, Kind::Pipe]
                    .into_iter()
                    .map(|kind| Case {
                        name: kind.name().to_owned(),
                        kind,
                        shape: Shape::Nothing,
                    })
                    .collect();
                run_round(&s, &round, cases, &mut found);
            }
        }
    }
    report("populate's own places", seed, &found);
}

/// What the generator found, each pinned by a test of its own.
mod regressions {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    /// Found by the generator (`foreign` × file, pass, passage): rsync
    /// keeps a directory's owner, so the secrets landed in a directory the
    /// other user could swap them in.
    ///
    /// Reliability (Secrets): a directory at PATH/NAME owned by another user, deployed through sudo → replaced, not kept: the secrets and files are root's, as a fresh deploy makes them
    #[test]
    fn a_directory_owned_by_another_user_is_replaced_not_kept() {
        let world = World::new();
        let alpha = world.add_host("alpha");
        let user = world.sudo_user();
        let dest = world.mkdir("src");
        world.write("src/.populate", "");
        world.write("cfg/a.nix", "{ }\n");
        let pass = world.pass_store();
        pass.insert("h/k", "the secret");
        for name in ["cfg", "secrets"] {
            world.write(&format!("src/{name}/old"), "planted\n");
            chown(&world, &dest.join(name), user);
        }
        let sources = json!({
            "cfg": {"file": world.path("cfg").to_str().unwrap()},
            "secrets": {"pass": {"dir": pass.dir().to_str().unwrap(), "name": "h"}},
        });
        let target =
            json!({"user": user, "host": "alpha", "path": dest.to_str().unwrap(), "sudo": true});
        let out = world.run(
            "populate",
            &["--target", &target.to_string()],
            sources.to_string().as_bytes(),
        );
        out.assert_success()
            .assert_stderr_contains("it belongs to another user");
        for name in ["cfg", "secrets"] {
            let meta = std::fs::metadata(dest.join(name)).unwrap();
            assert_eq!((meta.uid(), meta.gid()), (0, 0), "{name} is not root's");
            assert!(
                !dest.join(name).join("old").exists(),
                "{name}: old file kept"
            );
        }
        let secrets = std::fs::metadata(dest.join("secrets")).unwrap();
        assert_eq!(secrets.mode() & 0o7777, 0o700);
        assert_eq!(
            std::fs::read_to_string(dest.join("secrets/k"))
                .unwrap()
                .trim_end(),
            "the secret"
        );
        drop(alpha);
    }

    /// Found by the generator (`readonly` × pipe, symlink, as a plain
    /// user): the user's own read-only directory where a file or a link
    /// goes could not be removed (rm needs to write to a directory to
    /// delete in it), and the run failed where a fresh deploy succeeds.
    #[test]
    fn a_read_only_directory_of_one_s_own_is_replaced() {
        let world = World::new();
        let alpha = world.add_host("alpha");
        let user = world.sudo_user();
        let dest = world.mkdir("src");
        world.write("src/.populate", "");
        for name in ["l", "p"] {
            world.write(&format!("src/{name}/deep/old"), "old\n");
        }
        chown(&world, &dest, user);
        for name in ["l", "p"] {
            sh(
                &world,
                &format!(
                    "chmod 0444 {0}/{name}/deep/old && chmod 0555 {0}/{name}/deep {0}/{name}",
                    q(&dest)
                ),
            );
        }
        let cmd = world.write_executable("gen", "#!/bin/sh\necho piped\n");
        let target = json!({"user": user, "host": "alpha", "path": dest.to_str().unwrap()});
        let sources = json!({"l": {"symlink": "x"}, "p": {"pipe": cmd.to_str().unwrap()}});
        let out = world.run(
            "populate",
            &["--target", &target.to_string()],
            sources.to_string().as_bytes(),
        );
        out.assert_success();
        assert_eq!(std::fs::read_link(dest.join("l")).unwrap(), Path::new("x"));
        assert_eq!(std::fs::read_to_string(dest.join("p")).unwrap(), "piped\n");
        drop(alpha);
    }

    /// The other side of the fix below: a checkout cloned from a path on
    /// the target shares its read-only objects with that repository, and
    /// those links are git's, not rsync's, to keep.
    #[test]
    fn a_checkout_cloned_from_a_local_path_keeps_its_linked_objects() {
        let world = World::new();
        let alpha = world.add_host("alpha");
        let user = world.sudo_user();
        let dest = world.mkdir("src");
        world.write("src/.populate", "");
        let repo = world.git_repo("local");
        repo.write("default.nix", "{ }\n");
        let first = repo.commit("first");
        chown(&world, repo.path(), user);
        chown(&world, &dest, user);
        let target = json!({"user": user, "host": "alpha", "path": dest.to_str().unwrap()});
        let deploy = |commit: &str| {
            let sources = json!({"repo": {"git": {"url": repo.url(), "ref": commit}}});
            world.run(
                "populate",
                &["--target", &target.to_string()],
                sources.to_string().as_bytes(),
            )
        };
        let linked = || {
            let out = world.sh(&format!(
                "find {}/repo/.git/objects -type f -links +1 | sort",
                q(&dest)
            ));
            out.assert_success();
            out.stdout_str()
        };
        deploy(&first).assert_success();
        let before = linked();
        assert!(!before.is_empty(), "git made no links here");
        deploy(&first).assert_success();
        assert_eq!(linked(), before, "the checkout's objects were removed");
        sh(
            &world,
            &format!(
                "git -c safe.directory='*' -C {}/repo fsck --no-dangling",
                q(&dest)
            ),
        );
        drop(alpha);
    }

    /// Found by the generator (`hardlink` × file, pass, passage, as a
    /// plain user): rsync made the read-only file writable to delete it,
    /// and so changed the mode of the same file outside PATH.
    ///
    /// Reliability (Lived target): a read-only file at PATH/NAME with a second link outside PATH, deployed by a plain user → removed without a change to the file outside
    #[test]
    fn a_read_only_file_linked_from_outside_keeps_its_mode() {
        let world = World::new();
        let alpha = world.add_host("alpha");
        let user = world.sudo_user();
        let dest = world.mkdir("src");
        world.write("src/.populate", "");
        world.write("cfg/a.nix", "{ }\n");
        let outside = world.write("outside/objects", "read-only, elsewhere\n");
        world.mkdir("src/cfg");
        std::fs::hard_link(&outside, dest.join("cfg/linked")).unwrap();
        sh(&world, &format!("chmod 0444 {}", q(&outside)));
        chown(&world, &dest, user);
        let before = Tree::snapshot(&world.path("outside"));
        let target = json!({"user": user, "host": "alpha", "path": dest.to_str().unwrap()});
        let sources = json!({"cfg": {"file": world.path("cfg").to_str().unwrap()}});
        let out = world.run(
            "populate",
            &["--target", &target.to_string()],
            sources.to_string().as_bytes(),
        );
        out.assert_success();
        before.assert_unchanged(&Tree::snapshot(&world.path("outside")));
        assert!(!dest.join("cfg/linked").exists());
        assert!(dest.join("cfg/a.nix").is_file());
        drop(alpha);
    }
}
