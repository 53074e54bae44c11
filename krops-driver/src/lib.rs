//! krops-driver: what the drivers (krops-deploy, krops-command, krops-test)
//! share on top of populate's engine: a run as one ordered list of
//! [`Stages`] (populate these plans, then each final command), run or
//! printed as the `--dry-run` script from the same value.

mod final_command;
pub mod flake;
pub mod fleet;
pub mod keys;
mod stages;

pub use final_command::{Final, Reporting};
pub use flake::{Flake, FlakeArgs};
pub use stages::{Aftermath, Flow, Stage, Stages};
