//! The passage source: an age-encrypted store, decrypted here with
//! `passage show` and synced as a tree ([`Secrets`]).

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use mktarget::{Cmd, Session};
use serde_json::Value;

use mktarget::json::shown;

use super::fields::{absolute, Fields};
use super::store::Secrets;
use crate::step::Work;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PassageSource {
    /// The store (`PASSAGE_DIR`), `~/` expanded.
    pub dir: String,
    /// The age identities (`PASSAGE_IDENTITIES_FILE`), `~/` expanded.
    pub identities_file: String,
    /// The age program (`PASSAGE_AGE`).
    pub age: String,
}

/// `"DIR"` or `{"dir": DIR, "identities_file": FILE, "age": PROGRAM}`;
/// `home` expands `~/` in the paths.
pub(super) fn parse(path: &str, value: &Value, home: Option<&str>) -> Result<PassageSource> {
    let expand = |field: &str, p: String| -> Result<String> {
        let expanded = match (p.strip_prefix("~/"), home) {
            (Some(rest), Some(home)) => format!("{home}/{rest}"),
            (Some(_), None) => bail!(
                "{path}.{field}: {} starts with ~/ but HOME is not set",
                shown(&p)
            ),
            (None, _) => p,
        };
        absolute(&format!("{path}.{field}"), &Value::String(expanded))
    };
    let (dir, identities_file, age) = match value {
        Value::String(dir) => (dir.clone(), None, None),
        _ => {
            let mut fields = Fields::new(path, value)?;
            let dir = fields.string("dir")?;
            let identities = fields.opt_string("identities_file")?;
            let age = fields.opt_line("age")?;
            fields.finish()?;
            (dir, identities, age)
        }
    };
    let dir = expand("dir", dir)?;
    let identities_file = expand(
        "identities_file",
        identities_file.unwrap_or_else(|| "~/.passage/identities".to_owned()),
    )?;
    let age = age.unwrap_or_else(|| "age".to_owned());
    if age.is_empty() || age.starts_with('-') {
        bail!("{path}.age: {} is not a program name or path", shown(&age));
    }
    Ok(PassageSource {
        dir,
        identities_file,
        age,
    })
}

impl PassageSource {
    pub(super) fn work(&self, _session: &Session, p: &str) -> Result<Work> {
        if !Path::new(&self.dir).is_dir() {
            bail!("passage.dir: {} is not a directory", self.dir);
        }
        if !Path::new(&self.identities_file).is_file() {
            bail!(
                "passage.identities_file: {} does not exist \
                 (passage needs it to decrypt the store)",
                self.identities_file
            );
        }
        Ok(Work::Secrets(Box::new(Secrets {
            path: p.to_owned(),
            root: PathBuf::from(&self.dir),
            show: Cmd::new("passage")
                .env("PASSAGE_AGE", &self.age)
                .env("PASSAGE_DIR", &self.dir)
                .env("PASSAGE_IDENTITIES_FILE", &self.identities_file)
                .arg("show"),
            pass: None,
        })))
    }
}
