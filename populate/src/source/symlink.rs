//! The symlink source: `ln -fnsT -- TARGET P` on the target, batched with
//! the other cheap steps, and only when P is not that link already.

use anyhow::{bail, Result};
use mktarget::Session;
use serde_json::Value;

use mktarget::json::shown;
use mktarget::target::PATH_MAX_BYTES;

use super::fields::{text, Fields};
use crate::script::{Function, Script};
use crate::step::Work;

/// `krops_symlink P SHOWN TARGET` (`symlink.sh`).
pub(crate) static SYMLINK: Function = Function {
    name: "krops_symlink",
    text: include_str!("symlink.sh"),
};

/// `krops_links P INDEX SHOWN TARGET…` (`links.sh`): a batch's symlinks,
/// those already as they should be without a process each.
static LINKS: Function = Function {
    name: "krops_links",
    text: include_str!("links.sh"),
};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SymlinkSource {
    /// What the link points to, as given (relative or absolute).
    pub target: String,
}

/// `"TARGET"` or `{"target": TARGET}`.
pub(super) fn parse(path: &str, value: &Value) -> Result<SymlinkSource> {
    let target = match value {
        Value::String(target) => target.clone(),
        _ => {
            let mut fields = Fields::new(path, value)?;
            let target = fields.text("target")?;
            fields.finish()?;
            target
        }
    };
    // A link's text may hold any character but NUL (see `text`); it is
    // quoted for the target's shell.
    text(&format!("{path}.target"), &target)?;
    if target.is_empty() {
        bail!("{path}.target: must not be empty");
    }
    if target.len() > PATH_MAX_BYTES {
        bail!(
            "{path}.target: {} is too long (a symlink's text has at most {PATH_MAX_BYTES} bytes)",
            shown(&target)
        );
    }
    Ok(SymlinkSource { target })
}

impl SymlinkSource {
    pub(super) fn work(&self, session: &Session, p: &str) -> Result<Work> {
        Ok(Work::Batched {
            script: Script::call_together(
                &SYMLINK,
                &LINKS,
                &[p, &session.display_path(p), &self.target],
            ),
        })
    }
}
