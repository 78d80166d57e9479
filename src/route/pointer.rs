//! JSON pointer lookup over raw JSON text: walks only the path it needs, borrowing the rest.

use std::collections::HashMap;

use serde_json::value::RawValue;

/// Finds the value at `pointer` (RFC 6901) inside `root`. Each level is parsed only as far as
/// needed to reach the next key; sibling values stay unparsed (but are still syntax-checked).
pub fn lookup<'a>(root: &'a RawValue, pointer: &str) -> Result<Option<&'a RawValue>, serde_json::Error> {
    if pointer.is_empty() {
        return Ok(Some(root));
    }
    let mut node = root;
    for token in pointer.split('/').skip(1) {
        let token = token.replace("~1", "/").replace("~0", "~");
        let text = node.get().trim_start();
        let next = if text.starts_with('{') {
            let map: HashMap<std::borrow::Cow<'a, str>, &'a RawValue> = serde_json::from_str(node.get())?;
            map.get(token.as_str()).copied()
        } else if text.starts_with('[') {
            let items: Vec<&'a RawValue> = serde_json::from_str(node.get())?;
            token.parse::<usize>().ok().and_then(|i| items.get(i).copied())
        } else {
            None
        };
        match next {
            Some(n) => node = n,
            None => return Ok(None),
        }
    }
    Ok(Some(node))
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
    }
}
