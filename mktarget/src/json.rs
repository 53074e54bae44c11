//! JSON input as the tools read it: like `serde_json::from_str`, but a key
//! given twice in one object is an error naming it by its path
//! (`nixpkgs.git.url`; serde_json would keep the last one, so a copy-pasted
//! source silently replaces another). Input nested deeper than serde_json's
//! limit (128) is an error too. And how error messages show what the input
//! said: a string quoted and cut short ([`shown`]), a key in a JSON path
//! ([`shown_key`]), a value's kind ([`kind`]).

use std::borrow::Cow;
use std::fmt;
use std::io::Read;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// The most input the tools read as JSON. sources.json of 10,000 sources
/// is a few MB; this much means a device or an endless pipe
/// (`--sources /dev/zero`), which would otherwise fill the memory.
pub const MAX_INPUT_BYTES: u64 = 64 * 1024 * 1024;

/// Reads all of `input` as text, at most [`MAX_INPUT_BYTES`]; `what` names
/// it in errors (`sources from stdin`).
pub fn read(input: impl Read, what: &str) -> anyhow::Result<String> {
    let mut bytes = Vec::new();
    input
        .take(MAX_INPUT_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|err| anyhow::anyhow!("cannot read {what}: {err}"))?;
    if bytes.len() as u64 > MAX_INPUT_BYTES {
        anyhow::bail!(
            "cannot read {what}: more than {} MiB, which no JSON input of krops is; \
             is it a device or an endless pipe?",
            MAX_INPUT_BYTES / 1024 / 1024
        );
    }
    String::from_utf8(bytes).map_err(|err| {
        anyhow::anyhow!(
            "cannot read {what}: it is not UTF-8 text (byte {} is not)",
            err.utf8_error().valid_up_to()
        )
    })
}

/// Parses `text`, refusing duplicate keys. A leading byte order mark (as
/// some Windows editors write) is ignored, as RFC 8259 allows: else the
/// error would be a puzzling `expected value at line 1 column 1`.
pub fn parse(text: &str) -> serde_json::Result<Value> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let value = Strict { at: &Place::Root }.deserialize(&mut deserializer)?;
    deserializer.end()?;
    Ok(value)
}

/// Where a value is in the input, for the message about a duplicate key:
/// a chain up to the root, made only of borrows (nothing is allocated
/// unless a duplicate is found).
enum Place<'a> {
    Root,
    Key(&'a Place<'a>, &'a str),
    Index(&'a Place<'a>, usize),
}

impl fmt::Display for Place<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Place::Root => Ok(()),
            Place::Key(Place::Root, key) => f.write_str(&shown_key(key)),
            Place::Key(parent, key) => write!(f, "{parent}.{}", shown_key(key)),
            Place::Index(parent, i) => write!(f, "{parent}[{i}]"),
        }
    }
}

/// Deserializes any value at a place, refusing duplicate keys.
struct Strict<'a> {
    at: &'a Place<'a>,
}

impl<'de> DeserializeSeed<'de> for Strict<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Strict<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        loop {
            let at = Place::Index(self.at, items.len());
            match seq.next_element_seed(Strict { at: &at })? {
                Some(item) => items.push(item),
                None => return Ok(Value::Array(items)),
            }
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Value, A::Error> {
        let mut map = Map::new();
        while let Some(key) = access.next_key::<String>()? {
            if map.contains_key(&key) {
                let within = match self.at {
                    Place::Root => String::new(),
                    parent => format!(" in {parent}"),
                };
                return Err(de::Error::custom(format_args!(
                    "duplicate key {}{within} (a key may appear once in an object)",
                    shown(&key)
                )));
            }
            let at = Place::Key(self.at, &key);
            let value = access.next_value_seed(Strict { at: &at })?;
            map.insert(key, value);
        }
        Ok(Value::Object(map))
    }
}

/// How an error message shows a string from the input: quoted, with control
/// characters escaped, and cut after [`SHOWN_CHARS`] characters (the whole
/// length said instead), so that a 50 MB field does not become a 50 MB
/// message.
pub fn shown(value: &str) -> String {
    match value.char_indices().nth(SHOWN_CHARS) {
        None => format!("{value:?}"),
        Some((cut, _)) => format!("{:?}… ({} bytes)", &value[..cut], value.len()),
    }
}

/// How many characters of a string [`shown`] keeps.
pub const SHOWN_CHARS: usize = 80;

/// How an error message names an object's key in a JSON path
/// (`nixpkgs.git.url`): as it is when it has only portable filename
/// characters and is short, else as [`shown`] quotes it.
pub fn shown_key(key: &str) -> Cow<'_, str> {
    let plain = !key.is_empty()
        && key.len() <= SHOWN_CHARS
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if plain {
        Cow::Borrowed(key)
    } else {
        Cow::Owned(shown(key))
    }
}

/// What kind of JSON value this is, for error messages.
pub fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn messages_show_input_quoted_and_cut_short() {
        assert_eq!(shown("a\nb"), "\"a\\nb\"");
        let long = "é".repeat(100);
        assert_eq!(
            shown(&long),
            format!("\"{}\"… (200 bytes)", "é".repeat(SHOWN_CHARS))
        );
        assert_eq!(shown_key("git"), "git");
        assert_eq!(shown_key("a b"), "\"a b\"");
        assert_eq!(shown_key(""), "\"\"");
    }

    #[test]
    fn parses_like_serde_json() {
        let text = r#"{"a": [1, -2, 3.5, true, null, "s"], "b": {"c": {}}}"#;
        assert_eq!(
            parse(text).unwrap(),
            serde_json::from_str::<Value>(text).unwrap()
        );
        assert_eq!(parse(" 7 ").unwrap(), json!(7));
    }

    #[test]
    fn duplicate_keys_are_named_at_any_depth() {
        let err = parse(r#"{"a": {"symlink": "x"}, "a": {"symlink": "y"}}"#).unwrap_err();
        assert!(
            err.to_string().contains("duplicate key \"a\" (a key"),
            "{err}"
        );
        let err = parse(r#"{"a": {"git": {"url": "u", "url": "v"}}}"#).unwrap_err();
        assert!(
            err.to_string().contains("duplicate key \"url\" in a.git ("),
            "{err}"
        );
        let err = parse(r#"[0, {"l": [{}, {"b c": {"k": 1, "k": 2}}]}]"#).unwrap_err();
        assert!(
            err.to_string()
                .contains(r#"duplicate key "k" in [1].l[1]."b c" ("#),
            "{err}"
        );
        // The same key in two objects is no duplicate.
        assert!(parse(r#"{"a": {"k": 1}, "b": {"k": 1}}"#).is_ok());
    }

    #[test]
    fn input_is_read_up_to_a_limit_and_must_be_text() {
        assert_eq!(read(&b"{}"[..], "x").unwrap(), "{}");
        let err = read(std::io::repeat(b' '), "sources from stdin").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("cannot read sources from stdin: more than 64 MiB"),
            "{err}"
        );
        let err = read(&b"{\"a\": \"\xff\"}"[..], "x").unwrap_err();
        assert!(err.to_string().contains("not UTF-8 text (byte 7"), "{err}");
    }

    #[test]
    fn a_leading_byte_order_mark_is_ignored() {
        assert_eq!(
            parse("\u{feff}{\"a\": 1}").unwrap(),
            serde_json::json!({"a": 1})
        );
        // Only one, and only at the start.
        assert!(parse("\u{feff}\u{feff}{}").is_err());
        assert!(parse("{}\u{feff}").is_err());
    }

    #[test]
    fn trailing_garbage_is_refused() {
        assert!(parse("{} x").is_err());
        assert!(parse(r#"{"a": 1"#).is_err());
    }

    #[test]
    fn very_deep_input_is_an_error_not_a_crash() {
        let err = parse(&"[".repeat(100_000)).unwrap_err();
        assert!(err.to_string().contains("recursion limit"), "{err}");
    }
}
