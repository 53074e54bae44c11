//! Taking a source's JSON object apart, field by field, with every refusal
//! naming the JSON path of what is wrong.

use anyhow::{bail, Result};
use mktarget::target::kind;
use serde_json::{Map, Value};

pub(super) fn absolute(path: &str, value: &Value) -> Result<String> {
    match value {
        Value::String(s) if s.starts_with('/') => Ok(s.clone()),
        Value::String(s) => bail!("{path}: {s:?} is not an absolute path"),
        _ => bail!("{path}: expected a string, got {}", kind(value)),
    }
}

/// The fields of one JSON object, taken one by one; what is left over is an
/// unknown field. A null field counts as absent, as in krops's evaluated form.
pub(super) struct Fields<'a> {
    path: String,
    map: &'a Map<String, Value>,
    taken: Vec<&'a str>,
}

impl<'a> Fields<'a> {
    pub(super) fn new(path: &str, value: &'a Value) -> Result<Fields<'a>> {
        let Value::Object(map) = value else {
            bail!("{path}: expected an object, got {}", kind(value));
        };
        Ok(Fields {
            path: path.to_owned(),
            map,
            taken: Vec::new(),
        })
    }

    pub(super) fn take(&mut self, key: &str) -> Option<&'a Value> {
        let (key, value) = self.map.get_key_value(key)?;
        self.taken.push(key);
        Some(value).filter(|v| !v.is_null())
    }

    fn field(&self, key: &str) -> String {
        format!("{}.{key}", self.path)
    }

    pub(super) fn string(&mut self, key: &str) -> Result<String> {
        match self.opt_string(key)? {
            Some(s) => Ok(s),
            None => bail!("{}: missing field", self.field(key)),
        }
    }

    pub(super) fn opt_string(&mut self, key: &str) -> Result<Option<String>> {
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

    pub(super) fn absolute(&mut self, key: &str) -> Result<String> {
        let field = self.field(key);
        match self.take(key) {
            None => bail!("{field}: missing field"),
            Some(value) => absolute(&field, value),
        }
    }

    pub(super) fn opt_bool(&mut self, key: &str) -> Result<Option<bool>> {
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

    pub(super) fn list<T>(
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

    pub(super) fn strings(&mut self, key: &str) -> Result<Vec<String>> {
        self.list(key, |path, value| match value {
            Value::String(s) => Ok(s.clone()),
            other => bail!("{path}: expected a string, got {}", kind(other)),
        })
    }

    pub(super) fn finish(self) -> Result<()> {
        match self
            .map
            .keys()
            .find(|key| !self.taken.contains(&key.as_str()))
        {
            None => Ok(()),
            Some(key) => bail!("{}.{key}: unknown field", self.path),
        }
    }
}
