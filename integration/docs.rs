//! Runs every `example` block of docs/api.md, in order, against a fresh
//! orchestrator: the documented status must match and the documented JSON must
//! be contained in the real answer.

use serde_json::Value;

use crate::common::{Options, Orchestrator};

struct Example {
    method: String,
    path: String,
    body: String,
    status: u16,
    expected: Value,
}

fn examples(doc: &str) -> Vec<Example> {
    let mut out = Vec::new();
    let mut rest = doc;
    while let Some(start) = rest.find("```example\n") {
        let block = &rest[start + "```example\n".len()..];
        let end = block.find("```").expect("closed example block");
        let (request, response) = block[..end]
            .split_once("\n\n")
            .expect("request, blank line, response");
        let (line, body) = request.split_once('\n').unwrap_or((request, ""));
        let (method, path) = line.split_once(' ').expect("METHOD /path");
        let (status, expected) = response.split_once('\n').expect("status then JSON");
        out.push(Example {
            method: method.to_string(),
            path: path.to_string(),
            body: body.trim().to_string(),
            status: status.trim().parse().expect("status"),
            expected: serde_json::from_str(expected.trim()).expect("documented JSON"),
        });
        rest = &block[end + 3..];
    }
    out
}

/// `actual` has every field of `expected`, with equal values (recursively for
/// objects; arrays must match element by element).
fn contains(actual: &Value, expected: &Value) -> bool {
    match (actual, expected) {
        (Value::Object(a), Value::Object(e)) => e
            .iter()
            .all(|(k, v)| a.get(k).is_some_and(|x| contains(x, v))),
        (Value::Array(a), Value::Array(e)) => {
            a.len() == e.len() && a.iter().zip(e).all(|(x, y)| contains(x, y))
        }
        (a, e) => a == e,
    }
}

#[tokio::test]
async fn every_api_doc_example_is_what_the_server_answers() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/api.md"))
        .expect("docs/api.md");
    let examples = examples(&doc);
    assert!(examples.len() >= 10, "found {} examples", examples.len());
    let o = Orchestrator::start("docs", Options::default()).await;
    for ex in examples {
        let req = match ex.method.as_str() {
            "POST" => o.http.post(o.url(&ex.path)),
            "GET" => o.http.get(o.url(&ex.path)),
            m => panic!("unsupported method {m}"),
        };
        let resp = req
            .header("content-type", "application/json")
            .body(ex.body.clone())
            .send()
            .await
            .expect("request");
        let status = resp.status().as_u16();
        let actual: Value = resp.json().await.unwrap_or(Value::Null);
        assert_eq!(
            status, ex.status,
            "{} {} {}: {actual}",
            ex.method, ex.path, ex.body
        );
        assert!(
            contains(&actual, &ex.expected),
            "{} {}\nexpected ⊆ {}\nactual    {}",
            ex.method,
            ex.path,
            ex.expected,
            actual
        );
    }
}

#[test]
fn containment_is_strict_about_values() {
    let a: Value = serde_json::json!({"rows": [{"n": 1, "x": 2}], "seq": 3});
    assert!(contains(&a, &serde_json::json!({"rows": [{"n": 1}]})));
    assert!(!contains(&a, &serde_json::json!({"rows": [{"n": 2}]})));
    assert!(!contains(&a, &serde_json::json!({"rows": []})));
    assert!(!contains(&a, &serde_json::json!({"missing": 1})));
}
