//! `cargo bench -p populate`: the parts of a run that are ours alone (no ssh,
//! rsync or git): parsing sources.json, planning, printing the plan, and
//! quoting. Each case runs for about a second; the mean time per iteration
//! is printed. No timing is asserted anywhere.

use std::hint::black_box;
use std::time::{Duration, Instant};

use mktarget::shell::quote;
use std::sync::Arc;

use mktarget::{Multiplex, Origin, Session, Target};
use populate::{source, Options, Plan};

fn bench(name: &str, mut f: impl FnMut()) {
    f();
    let start = Instant::now();
    let mut iterations = 0u64;
    while start.elapsed() < Duration::from_secs(1) {
        f();
        iterations += 1;
    }
    let per = start.elapsed() / iterations as u32;
    println!("{name:<60} {per:>12.2?} per iteration ({iterations} iterations)");
}

/// 1000 sources in krops's evaluated form, null keys and all.
fn evaluated_sources(n: usize) -> String {
    let one = |i: usize| {
        format!(
            r#""src{i:04}":{{"derivation":null,"file":null,"git":{{"clean":{{"exclude":["/.version-suffix"]}},"fetchAlways":false,"ref":"4b4bbce199d3b3a8001ee93495604289b01aaad3","shallow":true,"url":"https://github.com/NixOS/nixpkgs"}},"pass":null,"passage":null,"pipe":null,"symlink":null,"type":"git"}}"#
        )
    };
    format!("{{{}}}", (0..n).map(one).collect::<Vec<_>>().join(","))
}

fn main() {
    let origin = Origin {
        user: Some("root".into()),
        host: "origin".into(),
    };
    let target = Target::parse("deploy@server01:2222/var/src", &origin).unwrap();
    let text = evaluated_sources(1000);
    bench("parse 1000 git sources (evaluated form, 0.4 MB)", || {
        black_box(source::parse(black_box(&text), None).unwrap());
    });
    let sources = source::parse(&text, None).unwrap();
    // As --dry-run opens it: nothing to connect.
    let session = Arc::new(Session::open(&target, &origin, Multiplex::Off).unwrap());
    bench("plan 1000 git sources for a remote target", || {
        black_box(Plan::new(&session, &sources, Options::default()).unwrap());
    });
    let plan = Plan::new(&session, &sources, Options::default()).unwrap();
    bench(
        "print the plan of 1000 git sources as sh (--dry-run)",
        || {
            black_box(plan.script());
        },
    );
    let words: Vec<String> = (0..1000)
        .map(|i| format!("it's $(word {i}) `x` \"q\""))
        .collect();
    bench("quote 1000 words with shell syntax", || {
        for word in &words {
            black_box(quote(black_box(word)));
        }
    });
    bench("parse a target string", || {
        black_box(Target::parse(black_box("root@server01:4444/etc/krops"), &origin).unwrap());
    });
}
