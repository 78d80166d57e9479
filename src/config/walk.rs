//! A typed walk over a parsed YAML tree that collects every problem instead of stopping at the first.
//!
//! serde's derive stops at the first error; operators want the whole list at once, each problem
//! with its path, so each config section reads its own keys through a [`Walk`], and the typed
//! readers every section shares (`read_addr`, `ranged`, `one_of`, `secs`) live here too.

use std::cell::RefCell;
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

/// One problem in the configuration, with the dotted path of the key it concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() { write!(f, "{}", self.message) } else { write!(f, "{}: {}", self.path, self.message) }
    }
}

/// Every problem found in a configuration, in the order they were found.
#[derive(Debug, Clone, Default)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        writeln!(f, "{n} problem{} in the configuration:", if n == 1 { "" } else { "s" })?;
        for e in &self.0 {
            writeln!(f, "  - {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Joins a parent path and a key: `join("kafka", "topics") == "kafka.topics"`.
pub fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() { key.to_owned() } else { format!("{parent}.{key}") }
}

/// Collects problems while config sections read their keys.
#[derive(Default)]
pub struct Walk {
    errors: Vec<ConfigError>,
    /// The dotted path of every key the sections looked at, for the documentation check.
    #[cfg(test)]
    keys: Vec<String>,
}

impl Walk {
    pub fn error(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.errors.push(ConfigError { path: path.into(), message: message.into() });
    }

    /// Every key read so far, as dotted paths.
    #[cfg(test)]
    pub fn keys(&self) -> &[String] {
        &self.keys
    }

    pub fn into_result<T>(self, value: T) -> Result<T, ConfigErrors> {
        if self.errors.is_empty() { Ok(value) } else { Err(ConfigErrors(self.errors)) }
    }

    /// Reads `value` as a mapping with `read`; an absent or null value is an empty mapping.
    /// Every key of the mapping that `read` did not look at is then reported as unknown, with
    /// the keys it did: a section's keys are named once, where they are read.
    pub fn section<T>(&mut self, value: Option<&Value>, path: &str, read: impl FnOnce(&mut Walk, &Section<'_>) -> T) -> T {
        static EMPTY: std::sync::OnceLock<Map<String, Value>> = std::sync::OnceLock::new();
        let empty = EMPTY.get_or_init(Map::new);
        let map = match value {
            None | Some(Value::Null) => empty,
            Some(Value::Object(map)) => map,
            Some(other) => {
                self.error(path, format!("expected a mapping, found {}", kind(other)));
                empty
            }
        };
        let section = Section { map, path: path.to_owned(), read: RefCell::default() };
        let value = read(self, &section);
        let known = section.read.into_inner();
        for key in map.keys() {
            if !known.contains(key) {
                self.error(join(path, key), format!("unknown key (known keys: {})", known.join(", ")));
            }
        }
        #[cfg(test)]
        self.keys.extend(known.iter().map(|key| join(path, key)));
        value
    }

    /// Reads an optional key of type `T`; a wrong type is reported and yields `None`.
    ///
    /// A string is also accepted where a number or boolean is expected, so that `${PORT}` style
    /// substitutions (always strings) can fill numeric keys.
    pub fn opt<T: DeserializeOwned>(&mut self, section: &Section<'_>, key: &str) -> Option<T> {
        let value = section.raw(key)?;
        match T::deserialize(value) {
            Ok(v) => Some(v),
            Err(first) => {
                if let Value::String(s) = value
                    && let Ok(reparsed) = serde_json::from_str::<Value>(s.trim())
                    && let Ok(v) = T::deserialize(&reparsed)
                {
                    return Some(v);
                }
                self.error(section.path(key), describe_type_error(&first, value));
                None
            }
        }
    }

    /// Reads a key of type `T`, or `default` when it is absent or invalid (the problem is recorded).
    pub fn get<T: DeserializeOwned>(&mut self, section: &Section<'_>, key: &str, default: T) -> T {
        self.opt(section, key).unwrap_or(default)
    }
}

/// A mapping being read, with its path for error messages and the keys read so far.
pub struct Section<'a> {
    map: &'a Map<String, Value>,
    pub path: String,
    read: RefCell<Vec<String>>,
}

impl<'a> Section<'a> {
    pub fn path(&self, key: &str) -> String {
        join(&self.path, key)
    }

    /// The value of `key`, if present and not null; `key` is a key of this section from now on.
    pub fn raw(&self, key: &str) -> Option<&'a Value> {
        let mut read = self.read.borrow_mut();
        if !read.iter().any(|k| k == key) {
            read.push(key.to_owned());
        }
        self.map.get(key).filter(|v| !v.is_null())
    }
}

pub fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

fn describe_type_error(err: &serde_json::Error, value: &Value) -> String {
    let msg = err.to_string();
    // serde_json phrases these as "invalid type: string \"x\", expected u16"; keep its "expected"
    // part, which names the wanted type, and say what was found in our own words.
    match msg.split_once("expected ") {
        Some((_, expected)) => format!("expected {expected}, found {}", kind(value)),
        None => msg,
    }
}

// Typed readers the sections share: each reports a bad value with its path and falls back to
// the default.

pub(super) fn read_addr(walk: &mut Walk, s: &Section<'_>, key: &str, default: &str) -> SocketAddr {
    let fallback = default.parse().expect("default address is valid");
    match walk.opt::<String>(s, key) {
        None => fallback,
        Some(text) => text.parse().unwrap_or_else(|_| {
            walk.error(s.path(key), format!("expected an ip:port address such as {default}, found `{text}`"));
            fallback
        }),
    }
}

pub(super) fn ranged<T>(walk: &mut Walk, s: &Section<'_>, key: &str, default: T, range: std::ops::RangeInclusive<T>) -> T
where
    T: serde::de::DeserializeOwned + PartialOrd + Copy + std::fmt::Display,
{
    let value = walk.get(s, key, default);
    if range.contains(&value) {
        value
    } else {
        walk.error(s.path(key), format!("must be between {} and {}, found {value}", range.start(), range.end()));
        default
    }
}

/// Reads a key whose value is one of a few words; the first choice is the default.
pub(super) fn one_of<T: Copy>(walk: &mut Walk, s: &Section<'_>, key: &str, choices: &[(&str, T)]) -> T {
    let found: String = walk.get(s, key, choices[0].0.into());
    if let Some((_, value)) = choices.iter().find(|(word, _)| *word == found) {
        return *value;
    }
    let expected: Vec<String> = choices.iter().map(|(word, _)| format!("`{word}`")).collect();
    walk.error(s.path(key), format!("expected {}, found `{found}`", expected.join(" or ")));
    choices[0].1
}

pub(super) fn secs(walk: &mut Walk, s: &Section<'_>, key: &str, default: u64, range: std::ops::RangeInclusive<u64>) -> Duration {
    Duration::from_secs(ranged(walk, s, key, default, range))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn unknown_keys_and_wrong_types_are_all_reported() {
        let v = json!({"a": 1, "b": "x", "zzz": true});
        let mut walk = Walk::default();
        let (a, b) = walk.section(Some(&v), "top", |walk, s| (walk.get::<u16>(s, "a", 0), walk.get::<u16>(s, "b", 7)));
        assert_eq!((a, b), (1, 7));
        let errs = walk.into_result(()).unwrap_err().0;
        let paths: Vec<_> = errs.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["top.b", "top.zzz"]);
        assert!(errs[0].message.contains("found a string"), "{}", errs[0].message);
        assert_eq!(errs[1].message, "unknown key (known keys: a, b)");
    }

    #[test]
    fn numeric_strings_fill_numeric_keys() {
        let v = json!({"port": "3000", "flag": "true"});
        let mut walk = Walk::default();
        let (port, flag) = walk.section(Some(&v), "", |walk, s| (walk.get::<u16>(s, "port", 0), walk.get::<bool>(s, "flag", false)));
        assert_eq!(port, 3000);
        assert!(flag);
        assert!(walk.into_result(()).is_ok());
    }

    #[test]
    fn a_scalar_where_a_mapping_belongs_is_reported() {
        let v = json!("oops");
        let mut walk = Walk::default();
        walk.section(Some(&v), "server", |_, _| ());
        let errs = walk.into_result(()).unwrap_err().0;
        assert_eq!(errs[0].to_string(), "server: expected a mapping, found a string");
    }
}
