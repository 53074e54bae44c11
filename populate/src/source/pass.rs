//! The pass source: the entries below NAME of a password store, decrypted
//! here with `pass show` and synced as a tree ([`Secrets`]).

use std::path::Path;

use anyhow::{bail, Result};
use mktarget::json::shown;
use mktarget::{Cmd, Session};
use serde_json::Value;

use super::fields::Fields;
use super::store::Secrets;
use crate::step::Work;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PassSource {
    /// The password store (`PASSWORD_STORE_DIR`).
    pub dir: String,
    /// The entry or folder in it to sync.
    pub name: String,
}

/// `{"dir": DIR, "name": NAME}`.
pub(super) fn parse(path: &str, value: &Value) -> Result<PassSource> {
    let mut fields = Fields::new(path, value)?;
    let dir = fields.absolute("dir")?;
    let name = fields.line("name")?;
    fields.finish()?;
    let components: Vec<&str> = name.split('/').filter(|c| !c.is_empty()).collect();
    if name.starts_with('/') || components.is_empty() || components.contains(&"..") {
        bail!(
            "{path}.name: {} must be a relative path inside the password store",
            shown(&name)
        );
    }
    Ok(PassSource { dir, name })
}

impl PassSource {
    pub(super) fn work(&self, _session: &Session, p: &str) -> Result<Work> {
        let root = Path::new(&self.dir).join(&self.name);
        if !root.is_dir() {
            bail!(
                "pass: {} is not a directory in the password store",
                root.display()
            );
        }
        Ok(Work::Secrets(Box::new(Secrets {
            path: p.to_owned(),
            root,
            show: Cmd::new("pass")
                .env("PASSWORD_STORE_DIR", &self.dir)
                .arg("show"),
            pass: Some((self.dir.clone(), self.name.clone())),
        })))
    }
}
