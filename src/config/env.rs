//! `${VAR}` substitution inside config values, and the `HERALD_*` environment overrides.

use serde_json::{Map, Value};

use super::walk::{Walk, join};

/// Environment variables that override one config key each, applied after the file is read.
pub const OVERRIDES: &[(&str, &str)] = &[
    ("HERALD_LISTEN", "server.listen"),
    ("HERALD_KAFKA_BROKERS", "kafka.brokers"),
    ("HERALD_KAFKA_GROUP_ID", "kafka.group_id"),
    ("HERALD_REDIS_URL", "redis.url"),
    ("HERALD_JWT_SECRET", "auth.jwt.secret"),
    ("HERALD_API_KEY", "api.key"),
    ("HERALD_LOG_FORMAT", "log.format"),
    ("HERALD_LOG_LEVEL", "log.level"),
    ("HERALD_DEMO", "demo.enabled"),
];

/// Override targets that take `true` / `false` rather than text.
const BOOLEAN_KEYS: &[&str] = &["demo.enabled"];

/// Replaces `${NAME}` and `${NAME:-default}` in every string of the tree; `$${` stands for a
/// literal `${`. An unset variable without a default is reported with the key's path.
pub fn substitute(value: &mut Value, path: &str, env: &dyn Fn(&str) -> Option<String>, walk: &mut Walk) {
    match value {
        Value::String(s) if s.contains("${") => match expand(s, env) {
            Ok(expanded) => *s = expanded,
            Err(message) => walk.error(path, message),
        },
        Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                substitute(item, &format!("{path}[{i}]"), env, walk);
            }
        }
        Value::Object(map) => {
            for (key, item) in map.iter_mut() {
                substitute(item, &join(path, key), env, walk);
            }
        }
        _ => {}
    }
}

fn expand(input: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(start) = rest.find("${") {
        if rest[..start].ends_with('$') {
            // `$${` escapes the substitution.
            out.push_str(&rest[..start - 1]);
            out.push_str("${");
            rest = &rest[start + 2..];
            continue;
        }
        out.push_str(&rest[..start]);
        let body_and_tail = &rest[start + 2..];
        let end = body_and_tail.find('}').ok_or_else(|| format!("unclosed `${{` in {input:?}"))?;
        let body = &body_and_tail[..end];
        let (name, default) = match body.split_once(":-") {
            Some((name, default)) => (name, Some(default)),
            None => (body, None),
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("`${{{body}}}` is not a valid variable reference"));
        }
        match (env(name).filter(|v| !v.is_empty()), default) {
            (Some(v), _) => out.push_str(&v),
            (None, Some(d)) => out.push_str(d),
            (None, None) => return Err(format!("environment variable {name} is not set and has no default")),
        }
        rest = &body_and_tail[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Applies the [`OVERRIDES`] that are set (and not empty) to the tree, creating sections as needed.
pub fn apply_overrides(root: &mut Value, env: &dyn Fn(&str) -> Option<String>) {
    for (var, path) in OVERRIDES {
        if let Some(value) = env(var).filter(|v| !v.is_empty()) {
            let value = match value.as_str() {
                "true" if BOOLEAN_KEYS.contains(path) => Value::Bool(true),
                "false" if BOOLEAN_KEYS.contains(path) => Value::Bool(false),
                // Anything else stays text, and a boolean key then reports a type error.
                _ => Value::String(value),
            };
            set_path(root, path, value);
        }
    }
}

fn set_path(root: &mut Value, path: &str, value: Value) {
    let mut node = root;
    let mut keys = path.split('.').peekable();
    while let Some(key) = keys.next() {
        if !node.is_object() {
            *node = Value::Object(Map::new());
        }
        let map = node.as_object_mut().expect("made an object above");
        if keys.peek().is_none() {
            map.insert(key.to_owned(), value);
            return;
        }
        node = map.entry(key).or_insert_with(|| Value::Object(Map::new()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn env(name: &str) -> Option<String> {
        match name {
            "HOST" => Some("kafka".into()),
            "EMPTY" => Some(String::new()),
            "HERALD_REDIS_URL" => Some("redis://r:6379".into()),
            _ => None,
        }
    }

    #[test]
    fn expands_variables_defaults_and_escapes() {
        assert_eq!(expand("${HOST}:9092", &env).unwrap(), "kafka:9092");
        assert_eq!(expand("${NOPE:-x}-${EMPTY:-y}", &env).unwrap(), "x-y");
        assert_eq!(expand("a$${HOST}b", &env).unwrap(), "a${HOST}b");
        assert!(expand("${NOPE}", &env).unwrap_err().contains("NOPE is not set"));
        assert!(expand("${HOST", &env).unwrap_err().contains("unclosed"));
        assert!(expand("${a b}", &env).unwrap_err().contains("not a valid"));
    }

    #[test]
    fn substitution_errors_carry_the_path() {
        let mut v = json!({"kafka": {"topics": ["ok", "${MISSING}"]}});
        let mut walk = Walk::default();
        substitute(&mut v, "", &env, &mut walk);
        let errs = walk.into_result(()).unwrap_err().0;
        assert_eq!(errs[0].path, "kafka.topics[1]");
    }

    #[test]
    fn overrides_create_missing_sections() {
        let mut v = json!({"server": {"listen": "0.0.0.0:1"}});
        apply_overrides(&mut v, &env);
        assert_eq!(v["redis"]["url"], "redis://r:6379");
        assert_eq!(v["server"]["listen"], "0.0.0.0:1");
    }

    #[test]
    fn boolean_overrides_become_booleans() {
        for (text, expected) in [("true", json!(true)), ("false", json!(false)), ("yes", json!("yes"))] {
            let mut v = json!({});
            apply_overrides(&mut v, &|name| (name == "HERALD_DEMO").then(|| text.to_owned()));
            assert_eq!(v["demo"]["enabled"], expected, "HERALD_DEMO={text}");
        }
    }
}
