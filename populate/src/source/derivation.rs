//! The derivation source: `nix-build -E TEXT -o P` on the target, after the
//! other sources (it may build from them).

use anyhow::{bail, Result};
use mktarget::Session;
use serde_json::Value;

use super::fields::{self, Fields};
use crate::script::{Function, Script};
use crate::step::Work;

/// `krops_derivation P SHOWN TEXT` (`derivation.sh`).
static DERIVATION: Function = Function {
    name: "krops_derivation",
    text: include_str!("derivation.sh"),
};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DerivationSource {
    /// A Nix expression.
    pub text: String,
}

/// `"TEXT"` or `{"text": TEXT}`.
pub(super) fn parse(path: &str, value: &Value) -> Result<DerivationSource> {
    let text = match value {
        Value::String(text) => text.clone(),
        _ => {
            let mut fields = Fields::new(path, value)?;
            let text = fields.string("text")?;
            fields.finish()?;
            text
        }
    };
    // A Nix expression may span lines and hold tabs (see `text`).
    fields::text(&format!("{path}.text"), &text)?;
    if text.trim().is_empty() {
        bail!("{path}.text: must be a Nix expression, not empty");
    }
    Ok(DerivationSource { text })
}

impl DerivationSource {
    pub(super) fn work(&self, session: &Session, p: &str) -> Result<Work> {
        Ok(Work::Alone {
            script: Script::call(&DERIVATION, &[p, &session.display_path(p), &self.text]),
            late: true,
        })
    }
}
