//! Taking a source's JSON object apart, field by field, with every refusal
//! naming the JSON path of what is wrong.

use anyhow::{bail, Result};
use mktarget::json::{kind, shown, shown_key};
use mktarget::target::PATH_MAX_BYTES;
use serde_json::{Map, Value};

/// A path here or on the target: absolute, one line (see [`line`]), and
/// no longer than a program takes.
pub(crate) fn absolute(path: &str, value: &Value) -> Result<String> {
    match value {
        Value::String(s) if s.starts_with('/') => {
            line(path, s)?;
            if s.len() > PATH_MAX_BYTES {
                bail!(
                    "{path}: {} is too long (a path has at most {PATH_MAX_BYTES} bytes)",
                    shown(s)
                );
            }
            Ok(s.clone())
        }
        Value::String(s) => bail!("{path}: {} is not an absolute path", shown(s)),
        _ => bail!("{path}: expected a string, got {}", kind(value)),
    }
}

/// Refuses a NUL byte, which no argument, file name or file text on the
/// way holds. Free text (a Nix expression, a symlink's text, a filter or
/// clean pattern) may hold any other character: a file name may hold a
/// newline, a tab or an escape, and a pattern or link may name it.
pub(crate) fn text<'a>(path: &str, s: &'a str) -> Result<&'a str> {
    if s.contains('\0') {
        bail!("{path}: {} contains a NUL byte", shown(s));
    }
    Ok(s)
}

/// Refuses control characters (a newline, a tab, a NUL byte, an escape)
/// in what is one line: a path, a URL, a ref, a program. There they are a
/// mistake (a pasted line break), and a newline would split the line in
/// logs and in what git and pass read.
pub(crate) fn line<'a>(path: &str, s: &'a str) -> Result<&'a str> {
    if s.contains(char::is_control) {
        bail!(
            "{path}: {} contains a control character (a newline, a tab, a NUL byte)",
            shown(s)
        );
    }
    Ok(s)
}

/// The fields of one JSON object, taken one by one; what is left over is an
/// unknown field. A null field counts as absent, as in krops's evaluated form.
pub(crate) struct Fields<'a> {
    path: String,
    map: &'a Map<String, Value>,
    taken: Vec<&'a str>,
}

impl<'a> Fields<'a> {
    pub(crate) fn new(path: &str, value: &'a Value) -> Result<Fields<'a>> {
        let Value::Object(map) = value else {
            bail!("{path}: expected an object, got {}", kind(value));
        };
        Ok(Fields {
            path: path.to_owned(),
            map,
            taken: Vec::new(),
        })
    }

    pub(crate) fn take(&mut self, key: &str) -> Option<&'a Value> {
        let (key, value) = self.map.get_key_value(key)?;
        self.taken.push(key);
        Some(value).filter(|v| !v.is_null())
    }

    fn field(&self, key: &str) -> String {
        format!("{}.{key}", self.path)
    }

    pub(crate) fn string(&mut self, key: &str) -> Result<String> {
        match self.opt_string(key)? {
            Some(s) => Ok(s),
            None => bail!("{}: missing field", self.field(key)),
        }
    }

    pub(crate) fn opt_string(&mut self, key: &str) -> Result<Option<String>> {
        match self.take(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => bail!(
                "{}: expected a string, got {}",
                self.field(key),
                kind(other)
            ),
        }
    }

    pub(crate) fn absolute(&mut self, key: &str) -> Result<String> {
        let field = self.field(key);
        match self.take(key) {
            None => bail!("{field}: missing field"),
            Some(value) => absolute(&field, value),
        }
    }

    pub(crate) fn opt_bool(&mut self, key: &str) -> Result<Option<bool>> {
        match self.take(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(other) => bail!(
                "{}: expected a boolean, got {}",
                self.field(key),
                kind(other)
            ),
        }
    }

    pub(crate) fn list<T>(
        &mut self,
        key: &str,
        item: impl Fn(&str, &Value) -> Result<T>,
    ) -> Result<Vec<T>> {
        let field = self.field(key);
        match self.take(key) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, v)| item(&format!("{field}[{i}]"), v))
                .collect(),
            Some(other) => bail!("{field}: expected a list, got {}", kind(other)),
        }
    }

    /// A string that is one line (see [`line`]).
    pub(crate) fn line(&mut self, key: &str) -> Result<String> {
        let s = self.string(key)?;
        line(&self.field(key), &s)?;
        Ok(s)
    }

    pub(crate) fn opt_line(&mut self, key: &str) -> Result<Option<String>> {
        let s = self.opt_string(key)?;
        if let Some(s) = &s {
            line(&self.field(key), s)?;
        }
        Ok(s)
    }

    /// A string of free text (see [`text`]).
    pub(crate) fn text(&mut self, key: &str) -> Result<String> {
        let s = self.string(key)?;
        text(&self.field(key), &s)?;
        Ok(s)
    }

    /// A list of free texts (see [`text`]).
    pub(crate) fn texts(&mut self, key: &str) -> Result<Vec<String>> {
        self.list(key, |path, value| match value {
            Value::String(s) => Ok(text(path, s)?.to_owned()),
            other => bail!("{path}: expected a string, got {}", kind(other)),
        })
    }

    pub(crate) fn finish(self) -> Result<()> {
        match self
            .map
            .keys()
            .find(|key| !self.taken.contains(&key.as_str()))
        {
            None => Ok(()),
            Some(key) => bail!("{}.{}: unknown field", self.path, shown_key(key)),
        }
    }
}
