//! The derivation source: `nix-build -E TEXT -o P` on the target, after the
//! other sources (it may build from them).

use anyhow::Result;
use mktarget::shell::quote;
use mktarget::Session;
use serde_json::Value;

use super::fields::Fields;
use crate::step::{claim_line, Makes, Work};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DerivationSource {
    /// A Nix expression.
    pub text: String,
}

/// `"TEXT"` or `{"text": TEXT}`.
pub(super) fn parse(path: &str, value: &Value) -> Result<DerivationSource> {
    if let Value::String(text) = value {
        return Ok(DerivationSource { text: text.clone() });
    }
    let mut fields = Fields::new(path, value)?;
    let text = fields.string("text")?;
    fields.finish()?;
    Ok(DerivationSource { text })
}

impl DerivationSource {
    pub(super) fn work(&self, session: &Session, p: &str) -> Result<Work> {
        Ok(Work::Alone {
            body: format!(
                "{}run nix-build -E {} -o {} >&2\n",
                claim_line(session, p, Makes::OutLink),
                quote(&self.text),
                quote(p)
            ),
            late: true,
        })
    }
}
