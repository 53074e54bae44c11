//! The end-to-end tests of the krops tools: one test binary, one module a
//! feature, against the test world of `tests/world/` (the `krops_tests`
//! library: real sshd hosts, git repos, pass and passage stores, NixOS
//! machines, stand-ins, and the helpers every module shares, on `World`).
//!
//! Each module's own `//!` comment says what belongs there. A new file of
//! tests is `tests/NAME.rs` and one `mod NAME;` line below, in its group;
//! nothing in `tests/Cargo.toml`. Run one module with
//! `cargo test -p krops-tests --test e2e NAME::`.

// The test world itself.
mod world_selftest;

// Targets and the connection to one.
mod ipv6;
mod sessions;
mod speed;
mod target_library;

// populate: the sources, one feature a module.
mod git_refs;
mod git_safety;
mod secrets;
mod sources;
mod sudo_password;
mod together;

// Targets that already hold something, and the lock on them.
mod existing_targets;
mod lock;
mod lock_final;
mod shapes;

// The drivers: deploy, test, command, fleets, safe activation.
mod activate;
mod check_stream;
mod drivers;
mod dry_run_modes;
mod flake;
mod fleet;
mod fleet_ops;
mod keys;
mod real_nixos;

// When things go wrong: connection faults, interrupts, bad input.
mod faults;
mod hostile;
mod interrupts;

// What the tools show and what they document.
mod docs;
mod examples;
mod output;

// The Nix API, and what Rust and Nix both write down.
mod contract;
mod nix_api;
