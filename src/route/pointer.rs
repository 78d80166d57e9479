//! JSON pointer lookup over raw JSON text: walks only the path it needs, borrowing the rest.

use std::borrow::Cow;
use std::fmt;

use serde::Deserializer as _;
use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

/// Finds the value at `pointer` (RFC 6901) inside `root`. Each level is read only as far as
/// needed to reach the next key: siblings are syntax-checked but neither kept nor copied, and
/// no map of the level is built.
pub fn lookup<'a>(root: &'a RawValue, pointer: &str) -> Result<Option<&'a RawValue>, serde_json::Error> {
    if pointer.is_empty() {
        return Ok(Some(root));
    }
    let mut node = root;
    for token in pointer.split('/').skip(1) {
        let token: Cow<'_, str> = if token.contains('~') { token.replace("~1", "/").replace("~0", "~").into() } else { token.into() };
        let mut de = serde_json::Deserializer::from_str(node.get());
        let next = de.deserialize_any(Child { token: &token })?;
        de.end()?;
        match next {
            Some(n) => node = n,
            None => return Ok(None),
        }
    }
    Ok(Some(node))
}

/// A user id found at a pointer: a non-empty string, or an integer as its decimal text (as
/// `crate::auth::user_id_from_json` reads a claim), read without building a JSON tree.
pub fn user_id(leaf: &RawValue) -> Option<String> {
    struct UserId;
    impl Visitor<'_> for UserId {
        type Value = Option<String>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a string or an integer")
        }
        fn visit_str<E>(self, s: &str) -> Result<Self::Value, E> {
            Ok((!s.is_empty()).then(|| s.to_owned()))
        }
        fn visit_string<E>(self, s: String) -> Result<Self::Value, E> {
            Ok((!s.is_empty()).then_some(s))
        }
        fn visit_i64<E>(self, n: i64) -> Result<Self::Value, E> {
            Ok(Some(n.to_string()))
        }
        fn visit_u64<E>(self, n: u64) -> Result<Self::Value, E> {
            Ok(Some(n.to_string()))
        }
        fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
    }
    // Objects and arrays are refused by the visitor's defaults: no user id either.
    serde_json::Deserializer::from_str(leaf.get()).deserialize_any(UserId).ok().flatten()
}

/// Groups found at a pointer: one name (as [`user_id`] reads it), or a non-empty array of them.
pub fn groups(leaf: &RawValue) -> Option<Vec<String>> {
    if let Some(one) = user_id(leaf) {
        return Some(vec![one]);
    }
    let items: Vec<&RawValue> = serde_json::from_str(leaf.get()).ok()?;
    let names: Option<Vec<String>> = items.into_iter().map(user_id).collect();
    names.filter(|n| !n.is_empty())
}

/// Reads one level: the member named `token` of an object (the last one, if repeated), or the
/// element at index `token` of an array.
struct Child<'t> {
    token: &'t str,
}

impl<'de> Visitor<'de> for Child<'_> {
    type Value = Option<&'de RawValue>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut found = None;
        while let Some(matches) = map.next_key_seed(KeyIs(self.token))? {
            if matches {
                found = Some(map.next_value::<&'de RawValue>()?);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(found)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let wanted = self.token.parse::<usize>().ok();
        let (mut found, mut i) = (None, 0);
        loop {
            if Some(i) == wanted {
                match seq.next_element::<&'de RawValue>()? {
                    Some(v) => found = Some(v),
                    None => return Ok(found),
                }
            } else if seq.next_element::<IgnoredAny>()?.is_none() {
                return Ok(found);
            }
            i += 1;
        }
    }

    // Scalars have no children.
    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
}

/// An object key, compared with the one wanted without being copied.
struct KeyIs<'t>(&'t str);

impl<'de> DeserializeSeed<'de> for KeyIs<'_> {
    type Value = bool;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeyIs<'_> {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_str<E>(self, key: &str) -> Result<bool, E> {
        Ok(key == self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn find(json: &str, pointer: &str) -> Option<String> {
        let raw: &RawValue = serde_json::from_str(json).unwrap();
        lookup(raw, pointer).unwrap().map(|v| v.get().to_owned())
    }

    #[test]
    fn follows_objects_arrays_and_escapes() {
        let doc = r#"{"a":{"b":[10,{"c":"x"}]},"s/l":1,"t~":2,"esc\"aped":3}"#;
        assert_eq!(find(doc, "/a/b/1/c").as_deref(), Some("\"x\""));
        assert_eq!(find(doc, "/a/b/0").as_deref(), Some("10"));
        assert_eq!(find(doc, "/s~1l").as_deref(), Some("1"));
        assert_eq!(find(doc, "/t~0").as_deref(), Some("2"));
        assert_eq!(find(doc, "/esc\"aped").as_deref(), Some("3"));
        assert_eq!(find(doc, "/a/zz"), None);
        assert_eq!(find(doc, "/a/b/9"), None);
        assert_eq!(find(doc, "/a/b/0/deeper"), None);
        assert_eq!(find(doc, "").as_deref(), Some(doc));
        assert_eq!(find(r#"{"a":1,"a":2}"#, "/a").as_deref(), Some("2"), "the last of repeated keys, as a map would keep");
        assert_eq!(find(r#"{"u\u0069d":"x"}"#, "/uid").as_deref(), Some("\"x\""), "escaped keys compare decoded");
        assert_eq!(find("[1,[2,3]]", "/1/1").as_deref(), Some("3"));
        assert_eq!(find("7", "/a"), None);
    }

    #[test]
    fn groups_are_one_name_or_an_array_of_names() {
        let groups = |json: &str| groups(&RawValue::from_string(json.into()).unwrap());
        assert_eq!(groups(r#""team""#), Some(vec!["team".to_owned()]));
        assert_eq!(groups(r#"["a", 2]"#), Some(vec!["a".to_owned(), "2".to_owned()]));
        assert_eq!(groups("[]"), None);
        assert_eq!(groups(r#"["a", ""]"#), None);
        assert_eq!(groups(r#"{"a":1}"#), None);
    }

    #[test]
    fn user_ids_are_non_empty_strings_or_integers() {
        let id = |json: &str| user_id(serde_json::from_str(json).unwrap());
        assert_eq!(id(r#""u42""#).as_deref(), Some("u42"));
        assert_eq!(id(r#""u\u0034""#).as_deref(), Some("u4"));
        assert_eq!(id("42").as_deref(), Some("42"));
        assert_eq!(id("-7").as_deref(), Some("-7"));
        for bad in [r#""""#, "1.5", "true", "null", "{}", "[1]"] {
            assert_eq!(id(bad), None, "{bad}");
        }
    }

    #[test]
    fn siblings_are_still_syntax_checked() {
        let raw: &RawValue = serde_json::from_str(r#"{"a":1,"b":[1,2]}"#).unwrap();
        assert!(lookup(raw, "/a").is_ok());
        // RawValue checked the whole text already; a value checked only as far as the key would
        // accept what follows it unread.
        let mut de = serde_json::Deserializer::from_str(r#"{"a":1,"b":[1,}"#);
        assert!(de.deserialize_any(Child { token: "a" }).is_err());
    }
}
