//! The symlink source: `ln -fnsT -- TARGET P` on the target, batched with
//! the other cheap steps.

use anyhow::{bail, Result};
use mktarget::shell::quote;
use mktarget::Session;
use serde_json::Value;

use super::fields::Fields;
use crate::step::{claim_line, Makes, Work};

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
            let target = fields.string("target")?;
            fields.finish()?;
            target
        }
    };
    if target.is_empty() {
        bail!("{path}.target: must not be empty");
    }
    Ok(SymlinkSource { target })
}

impl SymlinkSource {
    pub(super) fn work(&self, session: &Session, p: &str) -> Result<Work> {
        Ok(Work::Batched {
            // `--`: a link text may begin with '-'.
            body: format!(
                "{}run ln -fnsT -- {} {}\n",
                claim_line(session, p, Makes::Link),
                quote(&self.target),
                quote(p)
            ),
        })
    }
}
