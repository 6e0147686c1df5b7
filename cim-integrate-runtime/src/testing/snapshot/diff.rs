//! Readable differences between a committed snapshot and the current one: for schemas, in terms
//! of fields (`field \`quantity\` removed`, `field \`amount\` added (required)`); for other JSON,
//! by JSON pointer; and a line diff of the texts.

use serde_json::{Map, Value};
use std::collections::BTreeSet;

/// The changes from the committed schema `old` to `new`, one line each, naming fields.
pub(super) fn schema_changes(old: &Value, new: &Value) -> Vec<String> {
    let mut out = Vec::new();
    schema_walk(old, new, &[], "", &mut out);
    if out.is_empty() {
        out.push("the schemas differ".to_owned());
    }
    out
}

/// Where in the payload: `the payload`, `field \`a.b\``, plus the schema keyword path.
fn place(fields: &[String], keywords: &str) -> String {
    let base = if fields.is_empty() {
        "the payload".to_owned()
    } else {
        format!("field `{}`", fields.join("."))
    };
    if keywords.is_empty() {
        base
    } else {
        format!("{base} ({keywords})")
    }
}

fn required(schema: &Map<String, Value>) -> BTreeSet<&str> {
    schema
        .get("required")
        .and_then(Value::as_array)
        .map(|names| names.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

fn schema_walk(old: &Value, new: &Value, fields: &[String], keywords: &str, out: &mut Vec<String>) {
    if old == new {
        return;
    }
    let (Value::Object(old_map), Value::Object(new_map)) = (old, new) else {
        return leaf(old, new, &place(fields, keywords), out);
    };
    let (old_req, new_req) = (required(old_map), required(new_map));
    let old_props = old_map.get("properties").and_then(Value::as_object);
    let new_props = new_map.get("properties").and_then(Value::as_object);
    if let (Some(old_props), Some(new_props)) = (old_props, new_props) {
        let field = |name: &str| {
            let mut f = fields.to_vec();
            f.push(name.to_owned());
            f
        };
        for (name, schema) in sorted(old_props) {
            match new_props.get(name) {
                None => out.push(format!(
                    "{} removed (was {})",
                    place(&field(name), ""),
                    summary(schema, old_req.contains(name.as_str()))
                )),
                Some(now) => {
                    schema_walk(schema, now, &field(name), "", out);
                    match (old_req.contains(name.as_str()), new_req.contains(name.as_str())) {
                        (false, true) => out.push(format!("{} became required", place(&field(name), ""))),
                        (true, false) => out.push(format!("{} became optional", place(&field(name), ""))),
                        _ => {}
                    }
                }
            }
        }
        for (name, schema) in sorted(new_props) {
            if !old_props.contains_key(name) {
                out.push(format!(
                    "{} added ({})",
                    place(&field(name), ""),
                    summary(schema, new_req.contains(name.as_str()))
                ));
            }
        }
    }
    for (key, old_value) in sorted(old_map) {
        if matches!(key.as_str(), "properties" | "required") && old_props.is_some() && new_props.is_some() {
            continue;
        }
        let keyword = join(keywords, key);
        match new_map.get(key) {
            None => out.push(format!(
                "{}: removed (was {})",
                place(fields, &keyword),
                compact(old_value)
            )),
            Some(new_value) => schema_walk(old_value, new_value, fields, &keyword, out),
        }
    }
    for (key, new_value) in sorted(new_map) {
        if !old_map.contains_key(key) {
            out.push(format!(
                "{}: added ({})",
                place(fields, &join(keywords, key)),
                compact(new_value)
            ));
        }
    }
}

/// A map's entries by key, whatever serde_json's map order (`preserve_order` or not).
fn sorted(map: &Map<String, Value>) -> Vec<(&String, &Value)> {
    let mut entries: Vec<_> = map.iter().collect();
    entries.sort_by(|a, b| a.0.cmp(b.0));
    entries
}

/// `string, required`, `["integer", "null"], optional`.
fn summary(schema: &Value, required: bool) -> String {
    let ty = schema.get("type").map_or_else(|| compact(schema), compact);
    format!("{ty}, {}", if required { "required" } else { "optional" })
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

fn leaf(old: &Value, new: &Value, place: &str, out: &mut Vec<String>) {
    out.push(format!("{place}: {} -> {}", compact(old), compact(new)));
}

fn compact(value: &Value) -> String {
    let text = value.to_string();
    if text.chars().count() > 80 {
        format!("{}...", text.chars().take(77).collect::<String>())
    } else {
        text
    }
}

/// The changes from `old` to `new` by JSON pointer: `/title: "a" -> "b"`, `/tags removed`.
pub(super) fn value_changes(old: &Value, new: &Value) -> Vec<String> {
    let mut out = Vec::new();
    value_walk(old, new, "", &mut out);
    out
}

fn value_walk(old: &Value, new: &Value, at: &str, out: &mut Vec<String>) {
    if old == new {
        return;
    }
    let here = if at.is_empty() { "/" } else { at };
    match (old, new) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in sorted(a) {
                let path = format!("{at}/{k}");
                match b.get(k) {
                    None => out.push(format!("`{path}` removed (was {})", compact(v))),
                    Some(w) => value_walk(v, w, &path, out),
                }
            }
            for (k, w) in sorted(b) {
                if !a.contains_key(k) {
                    out.push(format!("`{at}/{k}` added ({})", compact(w)));
                }
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (v, w)) in a.iter().zip(b).enumerate() {
                value_walk(v, w, &format!("{at}/{i}"), out);
            }
        }
        _ => out.push(format!("`{here}`: {} -> {}", compact(old), compact(new))),
    }
}

/// A unified line diff of two texts (3 lines of context).
pub(super) fn text(old: &str, new: &str) -> String {
    similar::TextDiff::from_lines(old, new)
        .unified_diff()
        .context_radius(3)
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn schema_changes_name_the_fields() {
        let old = json!({
            "type": "object",
            "properties": { "version": {"const": "1.0"}, "order_id": {"type": "string"}, "quantity": {"type": "integer"},
                            "note": {"type": ["string", "null"]} },
            "required": ["version", "order_id", "quantity"],
        });
        let new = json!({
            "type": "object",
            "properties": { "version": {"const": "1.0"}, "order_id": {"type": "integer"}, "amount": {"type": "integer"},
                            "note": {"type": ["string", "null"]} },
            "required": ["version", "order_id", "amount", "note"],
        });
        assert_eq!(
            schema_changes(&old, &new),
            [
                "field `note` became required",
                r#"field `order_id` (type): "string" -> "integer""#,
                r#"field `quantity` removed (was "integer", required)"#,
                r#"field `amount` added ("integer", required)"#,
            ]
        );
    }

    #[test]
    fn value_changes_are_pointers() {
        let old = json!({"version": "1.0", "title": "a", "tags": ["x"]});
        let new = json!({"version": "1.0", "title": "b", "tags": ["y"], "n": 1});
        assert_eq!(
            value_changes(&old, &new),
            [r#"`/tags/0`: "x" -> "y""#, r#"`/title`: "a" -> "b""#, "`/n` added (1)"]
        );
    }
}
