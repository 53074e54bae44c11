//! sources.json as populate reads it (`populate::source::parse`), and the
//! plan of what it takes (`Plan::new`, `--dry-run`'s script) for a remote
//! target: never a panic; every source name is one portable path
//! component that is not populate's own; the script names every source.

#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use mktarget::{Multiplex, Origin, Session, Target};
use populate::source::{is_portable, Source};
use populate::{Options, Plan};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(sources) = populate::source::parse(text, Some("/home/alice")) else {
        return;
    };
    for name in sources.keys() {
        assert!(
            is_portable(name)
                && !name.is_empty()
                && name != "."
                && name != ".."
                && !name.starts_with('-')
                && !name.starts_with(".populate")
                && name.len() <= 255,
            "{name:?}"
        );
    }
    // A pass or passage store's plan lists the store's files: a fuzzed
    // store dir of / would walk the whole machine.
    let stores = sources
        .values()
        .any(|source| matches!(source, Source::Pass(_) | Source::Passage(_)));
    if stores {
        return;
    }
    let origin = Origin {
        user: Some("alice".into()),
        host: "laptop".into(),
    };
    let target = Target::parse("root@server01:2222/var/src", &origin).unwrap();
    let session = Arc::new(Session::open(&target, &origin, Multiplex::Off).unwrap());
    // Local paths that do not exist here are refused; that is no finding.
    let Ok(plan) = Plan::new(&session, &sources, Options::default()) else {
        return;
    };
    let script = plan.script();
    for (name, source) in &sources {
        let label = format!("# source {name} ({})", source.type_name());
        assert!(script.contains(&label), "{label} is not in the script");
    }
});
