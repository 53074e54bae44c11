//! The JSON the tools read (`mktarget::json::parse`) and a target object
//! in it (`Target::from_json`): the strict parser reads what serde_json
//! reads, the same, except that it refuses a duplicate key; and a target
//! it takes reads back the same from its JSON.

#![no_main]

use libfuzzer_sys::fuzz_target;
use mktarget::{Origin, Target};
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let strict = mktarget::json::parse(text);
    let loose = serde_json::from_str::<Value>(text);
    match (&strict, &loose) {
        (Ok(strict), Ok(loose)) => assert_eq!(strict, loose),
        (Ok(_), Err(err)) => panic!("taken, though serde_json refuses it: {err}"),
        (Err(err), Ok(_)) => assert!(err.to_string().contains("duplicate key"), "{err}"),
        (Err(_), Err(_)) => {}
    }
    let Ok(value) = strict else {
        return;
    };
    let origin = Origin {
        user: None,
        host: "laptop".into(),
    };
    let Ok(target) = Target::from_json(&value, &origin) else {
        return;
    };
    target.validate().expect("a target the tools take is valid");
    let json = serde_json::to_value(&target).expect("a target is JSON");
    assert_eq!(Target::from_json(&json, &origin).unwrap(), target);
});
