//! What a route script returned, turned into notifications: `()`, a map, or an array of maps,
//! each map naming its audience (`user_id`, `group`, `groups` or `broadcast: true`).

use std::sync::Arc;

use rhai::Dynamic;

use super::record::{Record, parse_value};
use crate::notification::{Audience, Notification};

const KEYS: &str = "user_id, group, groups, broadcast, event, payload";

/// Appends the notifications `result` stands for to `out`.
pub fn collect(
    result: Dynamic,
    event: &Arc<str>,
    record: &Record<'_>,
    timestamp_ms: i64,
    out: &mut Vec<Notification>,
) -> Result<(), String> {
    if result.is_unit() {
        return Ok(());
    }
    if result.is_array() {
        let items = result.into_array().map_err(|t| format!("route() returned {t}"))?;
        for (i, item) in items.into_iter().enumerate() {
            if !item.is_unit() {
                notifications(item, event, record, timestamp_ms, out).map_err(|e| format!("item {i} of the returned array: {e}"))?;
            }
        }
        return Ok(());
    }
    notifications(result, event, record, timestamp_ms, out)
}

/// One returned map: one notification, or one per group for `groups`.
fn notifications(
    item: Dynamic,
    event: &Arc<str>,
    record: &Record<'_>,
    timestamp_ms: i64,
    out: &mut Vec<Notification>,
) -> Result<(), String> {
    let type_name = item.type_name();
    let map = item
        .try_cast::<rhai::Map>()
        .ok_or_else(|| format!("route() must return (), a map #{{user_id, event, payload}} or an array of them, not {type_name}"))?;
    let mut audiences: Vec<Vec<Audience>> = Vec::new();
    let mut event = event.clone();
    let mut payload = None;
    for (key, value) in map {
        match key.as_str() {
            "user_id" => {
                let user = name(value).ok_or("`user_id` must be a non-empty string or an integer")?;
                audiences.push(vec![Audience::User(user)]);
            }
            "group" => {
                let group = name(value).ok_or("`group` must be a non-empty string or an integer")?;
                audiences.push(Audience::groups(vec![group]));
            }
            "groups" => {
                let items = value.into_array().map_err(|t| format!("`groups` must be an array of group names, not {t}"))?;
                let groups: Option<Vec<String>> = items.into_iter().map(name).collect();
                match groups {
                    Some(groups) if !groups.is_empty() => audiences.push(Audience::groups(groups)),
                    _ => return Err("`groups` must be a non-empty array of non-empty strings or integers".into()),
                }
            }
            "broadcast" => match value.as_bool() {
                Ok(true) => audiences.push(vec![Audience::Broadcast]),
                _ => return Err("`broadcast` must be `true` (leave it out otherwise)".into()),
            },
            "event" => {
                let name = value.into_string().map_err(|t| format!("`event` must be a string, not {t}"))?;
                if name.is_empty() {
                    return Err("`event` must not be empty".into());
                }
                event = name.into();
            }
            "payload" => {
                // Serialised straight into a RawValue: our own output needs no re-validation.
                payload = Some(serde_json::value::to_raw_value(&value).map_err(|e| format!("`payload` cannot be turned into JSON: {e}"))?);
            }
            other => return Err(format!("unexpected key `{other}` in the returned map (expected {KEYS})")),
        }
    }
    let to = match audiences.len() {
        0 => return Err("the returned map has no `user_id` (nor `group`, `groups` or `broadcast`)".into()),
        1 => audiences.pop().expect("one"),
        _ => return Err("the returned map must name one audience: `user_id`, `group`, `groups` or `broadcast`".into()),
    };
    let payload = match payload {
        Some(p) => p,
        // Without a payload the record value is passed through as it is.
        None => parse_value(record).map_err(|e| format!("no `payload` given and {e}"))?.to_owned(),
    };
    out.extend(to.into_iter().map(|to| Notification::new(to, event.clone(), payload.clone(), timestamp_ms)));
    Ok(())
}

/// A user id or group name: a non-empty string, or an integer as its decimal text.
fn name(value: Dynamic) -> Option<String> {
    if value.is_string() {
        value.into_string().ok().filter(|s| !s.is_empty())
    } else if value.is_int() {
        value.as_int().ok().map(|i| i.to_string())
    } else {
        None
    }
}

#[cfg(test)]
pub mod tests {
    use super::*;

    /// A notification's audience as one string, for comparing results: a user's id,
    /// `group:<name>`, or `*` for everyone.
    pub fn label(to: &Audience) -> String {
        match to {
            Audience::User(u) => u.clone(),
            Audience::Group { name, .. } => format!("group:{name}"),
            Audience::Broadcast => "*".into(),
        }
    }

    fn run(source: &str) -> Result<Vec<Notification>, String> {
        let engine = rhai::Engine::new();
        let result: Dynamic = engine.eval(source).map_err(|e| e.to_string())?;
        let record =
            Record { topic: "t", partition: 0, offset: 0, key: None, value: Some(b"{}"), timestamp_ms: None, headers: &[], trace: None };
        let mut out = Vec::new();
        collect(result, &Arc::from("n"), &record, 1, &mut out).map(|()| out)
    }

    #[test]
    fn each_audience_a_map_may_name() {
        let labels = |source: &str| run(source).unwrap().iter().map(|n| label(&n.to)).collect::<Vec<_>>();
        assert_eq!(labels(r#"#{ user_id: "u" }"#), ["u"]);
        assert_eq!(labels(r#"#{ group: "team-7" }"#), ["group:team-7"]);
        assert_eq!(labels(r#"#{ groups: ["a", "b", "a", 3] }"#), ["group:a", "group:b", "group:3"]);
        assert_eq!(labels(r#"[#{ broadcast: true }, #{ group: 1 }]"#), ["*", "group:1"]);
        let both = run(r#"#{ groups: ["a", "b"] }"#).unwrap();
        assert!(matches!(&both[1].to, Audience::Group { among: Some(all), .. } if all.len() == 2), "each names the others");
    }

    #[test]
    fn an_audience_that_is_not_one_is_refused() {
        for (source, expected) in [
            (r#"#{ payload: 1 }"#, "no `user_id`"),
            (r#"#{ user_id: "u", group: "g" }"#, "one audience"),
            (r#"#{ groups: [] }"#, "non-empty array"),
            (r#"#{ groups: "g" }"#, "array of group names"),
            (r#"#{ groups: ["a", ""] }"#, "non-empty array"),
            (r#"#{ broadcast: false }"#, "must be `true`"),
            (r#"#{ group: 1.5 }"#, "`group` must be"),
        ] {
            let e = run(source).unwrap_err();
            assert!(e.contains(expected), "{source}: {e}");
        }
    }
}
