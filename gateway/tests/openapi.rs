//! gateway/openapi.json cannot drift from the router: every route is documented and every
//! documented path is routed; every example validates against its schema; request examples
//! are protocol requests the agent's own decoder accepts; SSE examples number events by seq.

use std::collections::BTreeSet;

use serde_json::Value;

fn doc() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.json");
    let text = std::fs::read_to_string(path).unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("openapi.json: {e}"))
}

const METHODS: [&str; 5] = ["get", "post", "put", "delete", "patch"];

/// Every (method, path, operation) of the document.
fn operations(doc: &Value) -> Vec<(String, String, Value)> {
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            if METHODS.contains(&method.as_str()) {
                out.push((method.to_uppercase(), path.clone(), op.clone()));
            }
        }
    }
    out
}

/// A validator for `schema`, with the document's components in scope for `$ref`s.
fn validator(doc: &Value, schema: &Value) -> jsonschema::Validator {
    let mut s = schema.clone();
    if let Some(obj) = s.as_object_mut() {
        obj.insert("components".into(), doc["components"].clone());
    }
    jsonschema::draft202012::new(&s).unwrap_or_else(|e| panic!("bad schema {schema}: {e}"))
}

/// Each (where, schema, example) of a `content` map.
fn examples(content: &Value, place: &str) -> Vec<(String, String, Value, Value)> {
    let mut out = Vec::new();
    for (media, m) in content.as_object().into_iter().flatten() {
        let schema = m["schema"].clone();
        if let Some(e) = m.get("example") {
            out.push((
                format!("{place} {media}"),
                media.clone(),
                schema.clone(),
                e.clone(),
            ));
        }
        for (name, e) in m["examples"].as_object().into_iter().flatten() {
            out.push((
                format!("{place} {media} example {name}"),
                media.clone(),
                schema.clone(),
                e["value"].clone(),
            ));
        }
    }
    out
}

#[test]
fn every_route_is_documented_and_every_documented_route_exists() {
    let doc = doc();
    assert_eq!(doc["openapi"], "3.1.0");
    let documented: BTreeSet<(String, String)> = operations(&doc)
        .into_iter()
        .map(|(m, p, _)| (m, p))
        .collect();
    let routed: BTreeSet<(String, String)> = dtma_gateway::http::ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(documented, routed);
}

#[test]
fn every_operation_says_its_errors_and_auth() {
    let doc = doc();
    for (method, path, op) in operations(&doc) {
        let responses = op["responses"].as_object().unwrap();
        assert!(responses.contains_key("200"), "{method} {path}");
        let open = op
            .get("security")
            .is_some_and(|s| s == &serde_json::json!([]));
        // Health (for load balancers), metrics (counts only) and the console's static files;
        // never a /v1 route.
        let public = path == "/healthz"
            || path == "/metrics"
            || path == "/console"
            || path.starts_with("/console/");
        assert_eq!(
            open, public,
            "{method} {path}: only health and the console's files are open"
        );
        if !open {
            assert!(responses.contains_key("401"), "{method} {path}: 401");
        }
        for (code, r) in responses {
            if code != "200" {
                let schema = &r["content"]["application/json"]["schema"]["$ref"];
                assert_eq!(
                    schema, "#/components/schemas/Error",
                    "{method} {path} {code}"
                );
            }
        }
    }
}

#[test]
fn examples_validate_against_their_schemas() {
    let doc = doc();
    let mut checked = 0;
    for (method, path, op) in operations(&doc) {
        let place = format!("{method} {path}");
        let mut all = examples(&op["requestBody"]["content"], &format!("{place} request"));
        for (code, r) in op["responses"].as_object().unwrap() {
            all.extend(examples(&r["content"], &format!("{place} {code}")));
        }
        for (at, media, schema, example) in all {
            match media.as_str() {
                "application/json" => {
                    let v = validator(&doc, &schema);
                    let errors: Vec<String> =
                        v.iter_errors(&example).map(|e| e.to_string()).collect();
                    assert!(errors.is_empty(), "{at}: {errors:?}\n{example}");
                }
                "text/event-stream" => check_sse(&at, example.as_str().unwrap()),
                "application/x-ndjson" => {
                    for line in example.as_str().unwrap().lines() {
                        let m: Value = serde_json::from_str(line).unwrap();
                        agent_message(&at, &m);
                    }
                }
                "text/plain" => {
                    let text = example.as_str().unwrap();
                    let lines = text.lines().map(|l| Ok(l.to_owned()));
                    let scrape = prometheus_parse::Scrape::parse(lines).unwrap();
                    assert!(!scrape.samples.is_empty(), "{at}: no sample");
                }
                other => panic!("{at}: unexpected media type {other}"),
            }
            checked += 1;
        }
    }
    assert!(checked >= 20, "only {checked} examples");
}

#[test]
fn request_examples_are_protocol_requests() {
    let doc = doc();
    let op = &doc["paths"]["/v1/agents/{agent_id}/requests"]["post"];
    let content = &op["requestBody"]["content"];
    let list = examples(content, "request");
    assert!(list.len() >= 5);
    for (at, _, _, mut example) in list {
        // The gateway fills a missing id the same way before decoding.
        if example.get("id").is_none() {
            example["id"] = "generated".into();
        }
        match dtma_protocol::decode_backend(&example.to_string()) {
            Ok(dtma_protocol::BackendMessage::Request(_)) => {}
            other => panic!("{at}: {other:?}"),
        }
    }
}

/// An event as the agent sends it: decodes as the protocol's `AgentMessage`.
fn agent_message(at: &str, m: &Value) {
    serde_json::from_value::<dtma_protocol::AgentMessage>(m.clone())
        .unwrap_or_else(|e| panic!("{at}: not an agent message ({e}): {m}"));
}

fn check_sse(at: &str, text: &str) {
    let blocks: Vec<&str> = text.split("\n\n").filter(|b| !b.is_empty()).collect();
    assert!(!blocks.is_empty(), "{at}");
    for block in blocks {
        let field = |name: &str| {
            block
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{name}: ")))
                .unwrap_or_else(|| panic!("{at}: no {name} in {block}"))
        };
        let data: Value = serde_json::from_str(field("data")).unwrap();
        agent_message(at, &data);
        assert_eq!(field("id"), data["seq"].to_string(), "{at}: id is the seq");
        assert_eq!(field("event"), data["type"], "{at}: event is the type");
    }
}

/// The webhook bodies: one documented webhook per event type, each example valid against its
/// own schema and against `WebhookEvent` (what tests/webhooks.rs checks real bodies with), and
/// the README's examples valid too.
#[test]
fn webhook_examples_validate_and_the_readme_shows_each_type() {
    let doc = doc();
    let any = validator(
        &doc,
        &serde_json::json!({"$ref": "#/components/schemas/WebhookEvent"}),
    );
    let hooks = doc["webhooks"].as_object().unwrap();
    let names: BTreeSet<&str> = hooks.keys().map(String::as_str).collect();
    let types = BTreeSet::from([
        "agent.connected",
        "agent.disconnected",
        "agent.mcp_status_changed",
    ]);
    assert_eq!(names, types);
    for (name, hook) in hooks {
        let content = &hook["post"]["requestBody"]["content"];
        let list = examples(content, name);
        assert_eq!(list.len(), 1, "{name}: one example");
        for (at, _, schema, example) in list {
            assert_eq!(example["type"], name.as_str(), "{at}");
            for v in [
                validator(&doc, &schema),
                validator(&doc, &doc["components"]["schemas"]["WebhookEvent"]),
            ] {
                let errors: Vec<String> = v.iter_errors(&example).map(|e| e.to_string()).collect();
                assert!(errors.is_empty(), "{at}: {errors:?}");
            }
        }
    }
    // An event of one type is not valid as another (the `type` consts hold).
    let mut wrong = hooks["agent.connected"]["post"]["requestBody"]["content"]["application/json"]
        ["example"]
        .clone();
    wrong["type"] = "agent.disconnected".into();
    assert!(!any.is_valid(&wrong));

    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = readme
        .split("\n## Webhooks\n")
        .nth(1)
        .expect("a Webhooks section")
        .split("\n## ")
        .next()
        .unwrap();
    let mut shown = BTreeSet::new();
    for block in section.split("```json\n").skip(1) {
        let text = block.split("\n```").next().unwrap();
        let v: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("README: {e}\n{text}"));
        let errors: Vec<String> = any.iter_errors(&v).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "README example: {errors:?}\n{v}");
        shown.insert(v["type"].as_str().unwrap().to_owned());
    }
    assert_eq!(shown, types.iter().map(|t| t.to_string()).collect());
}
