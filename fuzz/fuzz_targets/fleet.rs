//! A fleet file as `krops-deploy --fleet` and `krops-command --fleet` read
//! it (`krops_driver::fleet::parse`): never a panic, and every word of a
//! host's command line can be an argument (no NUL byte).

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use mktarget::Origin;
use krops_driver::fleet::{host_args, parse, Forwarded};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let origin = Origin {
        user: Some("alice".into()),
        host: "laptop".into(),
    };
    for settings in [krops_deploy::FLEET_SETTINGS, krops_command::FLEET_SETTINGS] {
        let Ok(hosts) = parse(text, settings, &origin, Some("/home/alice")) else {
            continue;
        };
        for host in &hosts {
            let args = host_args(host, Path::new("/tmp/x.json"), &Forwarded::default())
                .expect("a host's command line");
            for arg in &args {
                assert!(!arg.contains('\0'), "{}: {arg:?}", host.name);
            }
        }
    }
});
