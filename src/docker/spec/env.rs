//! The environment (`environmentVariables`): an object or a list of `KEY=value`, whose values
//! are secrets never echoed.

use std::collections::HashMap;

use serde_json::Value;

use super::{SpecError, index_path, key_path, kind};

const ENV_EXPECTED: &str = "an object {\"KEY\": \"value\"} or a list [\"KEY=value\"]";
const ENV_KEY_RULE: &str = "keys match [A-Za-z_][A-Za-z0-9_]*";

/// Parse `environmentVariables`: an object (string values; numbers and booleans are stringified;
/// null, lists and objects refused) or a list of `KEY=VALUE` strings (split at the first `=`; the
/// value may be empty). Keys match `[A-Za-z_][A-Za-z0-9_]*` and are unique; NUL bytes are refused.
/// Absent or null: no variables.
///
/// Order: the list form keeps input order; the object form comes in the iteration order of
/// `serde_json::Map` (sorted by key in this build, which does not enable `preserve_order`). The
/// spec hash sorts either way.
///
/// Values are secrets: no error message contains one, and invalid keys are not echoed (they may be
/// a value put in the wrong place). Duplicate keys can only be reported for the list form: a JSON
/// object with a repeated key has already kept the last one when it reaches here.
pub fn parse_env(field: &str, value: Option<&Value>) -> Result<Vec<(String, String)>, SpecError> {
    match value {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Object(map)) => {
            let mut out = Vec::with_capacity(map.len());
            for (key, value) in map {
                if !valid_env_key(key) {
                    return Err(SpecError::new(
                        field,
                        format!(
                            "a key is not a variable name ({ENV_KEY_RULE}); it is not repeated \
                             here since it may hold a secret"
                        ),
                    ));
                }
                let path = key_path(field, key);
                let value = match value {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    Value::Bool(b) => b.to_string(),
                    Value::Null => {
                        return Err(SpecError::new(
                            path,
                            "the value is null; give a string (\"\" for an empty value)",
                        ));
                    }
                    other => {
                        return Err(SpecError::new(
                            path,
                            format!(
                                "the value is {}; give a string, a number or a boolean",
                                kind(other)
                            ),
                        ));
                    }
                };
                if value.contains('\0') {
                    return Err(SpecError::new(path, "the value contains a NUL byte"));
                }
                out.push((key.clone(), value));
            }
            Ok(out)
        }
        Some(Value::Array(list)) => {
            let mut out: Vec<(String, String)> = Vec::with_capacity(list.len());
            let mut seen: HashMap<&str, usize> = HashMap::new();
            for (i, entry) in list.iter().enumerate() {
                let path = index_path(field, i);
                let Value::String(entry) = entry else {
                    return Err(SpecError::new(
                        path,
                        format!("expected a \"KEY=value\" string; got {}", kind(entry)),
                    ));
                };
                let Some((key, value)) = entry.split_once('=') else {
                    return Err(SpecError::new(
                        path,
                        "expected \"KEY=value\" but there is no '='; the entry is not repeated \
                         here since it may hold a secret",
                    ));
                };
                if !valid_env_key(key) {
                    return Err(SpecError::new(
                        path,
                        format!(
                            "the part before '=' is not a variable name ({ENV_KEY_RULE}); it is \
                             not repeated here since it may hold a secret"
                        ),
                    ));
                }
                if value.contains('\0') {
                    return Err(SpecError::new(
                        path,
                        format!("the value of {key} contains a NUL byte"),
                    ));
                }
                if let Some(first) = seen.insert(key, i) {
                    return Err(SpecError::new(
                        path,
                        format!(
                            "duplicate key {key} (first at `{}`)",
                            index_path(field, first)
                        ),
                    ));
                }
                out.push((key.to_owned(), value.to_owned()));
            }
            Ok(out)
        }
        Some(other) => Err(SpecError::new(
            field,
            format!("expected {ENV_EXPECTED}; got {}", kind(other)),
        )),
    }
}

fn valid_env_key(key: &str) -> bool {
    let mut bytes = key.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::docker::spec::tests::{fails, pairs};
    use serde_json::json;

    fn env(v: Value) -> Vec<(String, String)> {
        parse_env("environmentVariables", Some(&v)).unwrap_or_else(|e| panic!("{v}: {e}"))
    }

    #[test]
    fn env_as_an_object() {
        let mut got = env(json!({
            "API_KEY": "secret",
            "PORT": 8080,
            "RATIO": 0.5,
            "DEBUG": true,
            "EMPTY": "",
            "_x1": "a=b",
        }));
        // The object's order is serde_json::Map's: compare as a set.
        got.sort();
        assert_eq!(
            got,
            pairs(&[
                ("API_KEY", "secret"),
                ("DEBUG", "true"),
                ("EMPTY", ""),
                ("PORT", "8080"),
                ("RATIO", "0.5"),
                ("_x1", "a=b"),
            ])
        );
    }

    #[test]
    fn env_as_a_list_keeps_its_order() {
        assert_eq!(
            env(json!(["ZED=1", "A=x=y", "EMPTY=", "_=ü"])),
            pairs(&[("ZED", "1"), ("A", "x=y"), ("EMPTY", ""), ("_", "ü")])
        );
    }

    #[test]
    fn no_env() {
        assert_eq!(parse_env("e", None), Ok(vec![]));
        assert_eq!(parse_env("e", Some(&Value::Null)), Ok(vec![]));
        assert_eq!(env(json!({})), vec![]);
        assert_eq!(env(json!([])), vec![]);
    }

    #[test]
    fn bad_env_is_refused_naming_the_field() {
        let f = "servers[0].environmentVariables";
        let cases: Vec<(Value, String)> = vec![
            (json!("A=1"), f.into()),
            (json!(1), f.into()),
            (json!(true), f.into()),
            (json!({"1A": "x"}), f.into()),
            (json!({"A-B": "x"}), f.into()),
            (json!({"": "x"}), f.into()),
            (json!({"A B": "x"}), f.into()),
            (json!({"A\u{0}": "x"}), f.into()),
            (json!({"A": null}), format!("{f}.A")),
            (json!({"A": ["x"]}), format!("{f}.A")),
            (json!({"A": {"x": "y"}}), format!("{f}.A")),
            (json!({"A": "x\u{0}y"}), format!("{f}.A")),
            (json!(["A=1", 2]), format!("{f}[1]")),
            (json!([null]), format!("{f}[0]")),
            (json!([["A=1"]]), format!("{f}[0]")),
            (json!([{"A": "1"}]), format!("{f}[0]")),
            (json!(["A"]), format!("{f}[0]")),
            (json!(["=x"]), format!("{f}[0]")),
            (json!(["1A=x"]), format!("{f}[0]")),
            (json!(["A B=x"]), format!("{f}[0]")),
            (json!(["A=x\u{0}"]), format!("{f}[0]")),
            (json!(["A=1", "B=2", "A=3"]), format!("{f}[2]")),
        ];
        for (v, field) in cases {
            fails(parse_env(f, Some(&v)), &field);
        }
        let m = fails(parse_env("e", Some(&json!(["A=1", "A=2"]))), "e[1]");
        assert!(m.contains("duplicate key A") && m.contains("`e[0]`"), "{m}");
        let m = fails(parse_env("e", Some(&json!({"1A": "x"}))), "e");
        assert!(m.contains("[A-Za-z_][A-Za-z0-9_]*"), "{m}");
    }

    /// Every bad shape a secret can arrive in: the message (and the error's Debug) never
    /// contains it, nor does it contain it as an invalid key.
    #[test]
    fn env_errors_never_contain_a_value() {
        const S: &str = "s3cr3t-value";
        const T: &str = "s3cr3tvalue"; // also a valid key, so it might be echoed as one
        let cases: Vec<Value> = vec![
            json!(S),
            json!(format!("KEY={S}")),
            json!({"KEY": {"nested": S}}),
            json!({"KEY": [S]}),
            json!({"KEY": format!("{S}\u{0}")}),
            json!({"KEY": format!("{T}\u{0}")}),
            json!({S: "x"}),
            json!({format!("{S}=x"): "y"}),
            json!({format!("K {T}"): "y"}),
            json!([S]),
            json!([T]),
            json!([format!("{S}=x")]),
            json!([format!("BAD-KEY={S}")]),
            json!([format!("KEY={S}\u{0}")]),
            json!([format!("KEY={T}\u{0}")]),
            json!([format!("1KEY={T}")]),
            json!([format!(" KEY={T}")]),
            json!([format!("KEY={S}"), format!("KEY={S}")]),
            json!([format!("KEY={T}"), format!("KEY={T}")]),
            json!([{"KEY": S}]),
            json!([[S]]),
            json!([123456789]),
            json!({"KEY": null, "OTHER": S}),
        ];
        for v in cases {
            let e = match parse_env("environmentVariables", Some(&v)) {
                Ok(_) => panic!("accepted {v}"),
                Err(e) => e,
            };
            for shown in [e.to_string(), format!("{e:?}")] {
                assert!(
                    !shown.contains(S) && !shown.contains(T) && !shown.contains("123456789"),
                    "leaks a value: {shown}"
                );
            }
        }
    }
}
