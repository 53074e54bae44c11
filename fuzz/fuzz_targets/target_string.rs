//! `--target` as the tools read it (`Target::from_arg`: krops's string
//! form, or a JSON object): never a panic, and a target it takes is valid
//! and reads back the same from its JSON and, when that can say it all,
//! from its string form.

#![no_main]

use libfuzzer_sys::fuzz_target;
use mktarget::{Origin, Target};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let origin = Origin {
        user: Some("alice".into()),
        host: "laptop".into(),
    };
    let Ok(target) = Target::from_arg(text, &origin) else {
        return;
    };
    target.validate().expect("a target the tools take is valid");
    let json = serde_json::to_value(&target).expect("a target is JSON");
    assert_eq!(Target::from_json(&json, &origin).unwrap(), target);
    // The string form has no sudo and no ssh options, and cannot name a
    // user with '@' (the first '@' ends the user) nor "no user".
    let string_form = target
        .user
        .as_deref()
        .is_some_and(|user| !user.contains('@'))
        && !target.sudo
        && target.extra_options.is_empty();
    if string_form {
        let again = Target::parse(&target.to_string(), &origin)
            .unwrap_or_else(|err| panic!("{target} does not read back: {err:#}"));
        assert_eq!(again, target, "{target}");
    }
});
