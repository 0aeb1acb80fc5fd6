//! The API test suite replayed against `docs/openapi.json`. Every answer the test client
//! ([`crate::api::Api`]) gets is checked as it comes, in the test that asked for it:
//!
//! - its method and path are an operation of the document (a path template's `{param}`
//!   takes one segment);
//! - the operation lists its status;
//! - its content type is the one listed for that status;
//! - its body validates against the listed schema, with `$ref`s resolved in the document's
//!   components, and an object taking no property its schema does not name.
//!
//! A request for a route the document does not have must be the router's own problem: 404
//! for an unknown path, 405 for a method the path does not take.
//!
//! Schemas are OpenAPI 3.1's dialect, JSON Schema 2020-12 with annotations of its own
//! (`discriminator`, `example`), which validate nothing; `format` is an annotation too.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use serde_json::Value;

use crate::support::repo_root;

/// The document, and a validator for each schema it lists, compiled once per process.
struct Document {
    doc: Value,
    validators: Mutex<HashMap<String, Arc<jsonschema::Validator>>>,
}

fn document() -> &'static Document {
    static DOC: OnceLock<Document> = OnceLock::new();
    DOC.get_or_init(|| {
        let path = repo_root().join("docs/openapi.json");
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        Document {
            doc: serde_json::from_str(&text).expect("docs/openapi.json is JSON"),
            validators: Mutex::default(),
        }
    })
}

/// A JSON pointer's escaping of one token.
fn escape(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

/// Objects take no property their schema does not name, unless it says otherwise: a field
/// the document does not describe is a mismatch too.
fn closed(schema: &mut Value) {
    match schema {
        Value::Object(map) => {
            if map.contains_key("properties") && !map.contains_key("additionalProperties") {
                map.insert("additionalProperties".into(), Value::Bool(false));
            }
            map.values_mut().for_each(closed);
        }
        Value::Array(items) => items.iter_mut().for_each(closed),
        _ => {}
    }
}

impl Document {
    /// The validator of the schema at `pointer`, whose `$ref`s point into the document.
    fn validator(&self, pointer: &str) -> Arc<jsonschema::Validator> {
        let mut cache = self.validators.lock().unwrap();
        if let Some(v) = cache.get(pointer) {
            return v.clone();
        }
        let mut schema = self
            .doc
            .pointer(pointer)
            .unwrap_or_else(|| panic!("docs/openapi.json has no {pointer}"))
            .clone();
        // The components travel with the schema, so that `#/components/...` resolves.
        if let Value::Object(map) = &mut schema {
            map.insert("components".into(), self.doc["components"].clone());
        } else {
            panic!("docs/openapi.json: {pointer} is not a schema object");
        }
        closed(&mut schema);
        let validator = jsonschema::draft202012::options()
            .build(&schema)
            .unwrap_or_else(|e| panic!("docs/openapi.json: the schema at {pointer}: {e}"));
        let validator = Arc::new(validator);
        cache.insert(pointer.to_string(), validator.clone());
        validator
    }

    /// The path template of the document that `path` (without its query) falls under.
    fn template(&self, path: &str) -> Option<&str> {
        let segments: Vec<&str> = path.split('/').collect();
        let matches = |template: &str| {
            let t: Vec<&str> = template.split('/').collect();
            t.len() == segments.len()
                && t.iter().zip(&segments).all(|(t, s)| {
                    (t.starts_with('{') && t.ends_with('}') && !s.is_empty()) || t == s
                })
        };
        // A literal segment wins over a parameter: the fewest parameters first.
        self.doc["paths"]
            .as_object()?
            .keys()
            .filter(|t| matches(t))
            .min_by_key(|t| t.matches('{').count())
            .map(String::as_str)
    }
}

/// The media type of a content type, without its parameters.
fn essence(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

fn is_json(media_type: &str) -> bool {
    media_type == "application/json" || media_type.ends_with("+json")
}

/// Checks one answer of `method path` against the document; panics with what differs.
/// `body` is the body as received, or `None` for a stream (see [`check_event`]).
#[track_caller]
pub fn check(
    method: &str,
    path_and_query: &str,
    status: u16,
    content_type: &str,
    body: Option<&str>,
) {
    let text = body.unwrap_or("");
    let doc = document();
    let path = path_and_query.split('?').next().unwrap_or("");
    let exchange = format!("{method} {path_and_query} answered {status} ({content_type})");
    let operation = doc.template(path).and_then(|template| {
        let op = method.to_ascii_lowercase();
        doc.doc["paths"][template]
            .get(&op)
            .map(|_| format!("/paths/{}/{op}/responses/{status}", escape(template)))
    });
    let response = match operation {
        Some(pointer) => {
            let Some(_) = doc.doc.pointer(&pointer) else {
                panic!(
                    "{exchange}: docs/openapi.json does not list {status} for {method} {path}\n{text}"
                );
            };
            pointer
        }
        // The router's own answers to a route the document does not have.
        None => {
            let expected = if doc.template(path).is_some() {
                405
            } else {
                404
            };
            assert_eq!(
                status, expected,
                "{exchange}: no such operation in docs/openapi.json, so the router should have \
                 answered {expected}\n{text}"
            );
            assert_eq!(
                essence(content_type),
                "application/problem+json",
                "{exchange}"
            );
            validate(doc, "/components/schemas/Problem", &exchange, text, true);
            return;
        }
    };
    let media = essence(content_type);
    let listed = doc.doc.pointer(&format!("{response}/content"));
    let Some(listed) = listed.and_then(Value::as_object) else {
        assert!(
            text.is_empty(),
            "{exchange}: docs/openapi.json lists no body for it, and it has one:\n{text}"
        );
        return;
    };
    let Some(key) = listed.keys().find(|k| essence(k) == media) else {
        panic!(
            "{exchange}: docs/openapi.json lists {:?} for it, not {media}\n{text}",
            listed.keys().collect::<Vec<_>>()
        );
    };
    let schema = format!("{response}/content/{}/schema", escape(key));
    if body.is_some() && doc.doc.pointer(&schema).is_some() {
        validate(doc, &schema, &exchange, text, is_json(&media));
    }
}

/// Checks one event of a server-sent stream of `GET path`: its data, as JSON, against the
/// schema listed for the stream.
#[track_caller]
pub fn check_event(path_and_query: &str, data: &Value) {
    let doc = document();
    let path = path_and_query.split('?').next().unwrap_or("");
    let exchange = format!("an event of GET {path_and_query}");
    let template = doc
        .template(path)
        .unwrap_or_else(|| panic!("{exchange}: docs/openapi.json has no such path"));
    let schema = format!(
        "/paths/{}/get/responses/200/content/text~1event-stream/schema",
        escape(template)
    );
    assert!(
        doc.doc.pointer(&schema).is_some(),
        "{exchange}: docs/openapi.json lists no event stream for it"
    );
    validate(doc, &schema, &exchange, &data.to_string(), true);
}

#[track_caller]
fn validate(doc: &Document, schema: &str, exchange: &str, text: &str, json: bool) {
    let body = if json {
        serde_json::from_str(text)
            .unwrap_or_else(|e| panic!("{exchange}: the body is not JSON ({e}):\n{text}"))
    } else {
        Value::String(text.to_string())
    };
    let validator = doc.validator(schema);
    if validator.is_valid(&body) {
        return;
    }
    let errors: Vec<String> = validator
        .iter_errors(&body)
        .map(|e| format!("  {}: {e}", e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "{exchange}: the body does not match docs/openapi.json's #{schema}:\n{}\n{text}",
        errors.join("\n")
    );
}

/// The replay refuses what the document does not say: each of these answers differs from
/// `docs/openapi.json` in one way.
#[test]
fn the_replay_refuses_what_the_document_does_not_say() {
    let problem = r#"{"type":"urn:lanes:problem:not-found","title":"Not found","status":404,"detail":"no execution 1"}"#;
    let checks = |method: &str, path: &str, status: u16, content_type: &str, body: &str| {
        let (method, path, content_type, body) = (
            method.to_string(),
            path.to_string(),
            content_type.to_string(),
            body.to_string(),
        );
        std::panic::catch_unwind(move || {
            check(&method, &path, status, &content_type, Some(&body));
        })
        .is_ok()
    };
    assert!(checks(
        "GET",
        "/v1/executions/1",
        404,
        "application/problem+json",
        problem
    ));
    let refused = [
        // A problem served as plain JSON.
        (
            "GET",
            "/v1/executions/1",
            404,
            "application/json",
            problem.to_string(),
        ),
        // A status the operation does not list.
        (
            "GET",
            "/v1/plugins",
            404,
            "application/problem+json",
            problem.to_string(),
        ),
        // A body of the wrong shape: a field missing, one of the wrong type, one unnamed.
        ("GET", "/healthz", 200, "application/json", "{}".to_string()),
        (
            "GET",
            "/healthz",
            200,
            "application/json",
            r#"{"status":1}"#.to_string(),
        ),
        (
            "GET",
            "/healthz",
            200,
            "application/json",
            r#"{"status":"ok","up":true}"#.to_string(),
        ),
        ("GET", "/healthz", 200, "application/json", "ok".to_string()),
        // A route the document does not have, answered as if it did.
        (
            "GET",
            "/v1/nothing",
            200,
            "application/json",
            "{}".to_string(),
        ),
        (
            "DELETE",
            "/v1/executions",
            404,
            "application/problem+json",
            problem.to_string(),
        ),
    ];
    let passed: Vec<_> = refused
        .iter()
        .filter(|(m, p, s, c, b)| checks(m, p, *s, c, b))
        .collect();
    assert!(
        passed.is_empty(),
        "the replay let these through: {passed:?}"
    );
}
