//! Fixtures the workspace's unit tests share (the `testing` feature, which
//! the other crates enable as a dev-dependency): a test deploys from
//! alice@laptop, to targets parsed from there.

use crate::session::SshConfig;
use crate::{Multiplex, Origin, Session, Target};

/// The machine the tests deploy from: alice@laptop.
pub fn origin() -> Origin {
    Origin {
        user: Some("alice".into()),
        host: "laptop".into(),
    }
}

/// The target `s` names, parsed as from [`origin`].
pub fn target(s: &str) -> Target {
    Target::parse(s, &origin()).unwrap()
}

/// An unshared session to `target`, for a user whose ssh config sets the
/// options sessions would add (so command lines carry none of them).
pub fn session(target: &Target) -> Session {
    let config =
        SshConfig::parse("connecttimeout 5\nserveraliveinterval 30\nserveralivecountmax 2\n");
    Session::open_with(target, &origin(), Multiplex::Off, &config).unwrap()
}
