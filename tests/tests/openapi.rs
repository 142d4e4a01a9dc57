//! `docs/openapi.json` against a real master: the document and the API must not drift apart.
//!
//! - Every documented operation is served (not 404 "no such route", not 405), answers only
//!   documented statuses with bodies that match the documented schemas, and needs the bearer
//!   token exactly where the document says so.
//! - Every route the master serves (the list below) is documented.
//! - The examples in the document are accepted; `required`, defaults, bounds and enums of the
//!   request schemas are what the API enforces; the watch events match `WatchEvent`.
//!
//! The schema check is a small JSON Schema subset (type, const, enum, bounds, lengths, items,
//! properties, required, additionalProperties, oneOf, $ref); `pattern` and `format` are not
//! checked. Objects in answers are checked closed: a property the document does not list fails.

use std::{
    collections::BTreeSet,
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

use serde_json::{json, Value};
use shadow_tests::master::{spawn, MasterOptions, RawClient};

/// Every route the master serves (`master/src/api.rs` and `master/src/api/*.rs`), as written in
/// the document. A new route must be added here and documented.
const SERVED: &[(&str, &str)] = &[
    ("GET", "/healthz"),
    ("GET", "/metrics"),
    ("GET", "/tasks/"),
    ("POST", "/tasks/"),
    ("GET", "/tasks/by-domain/{domain}"),
    ("GET", "/tasks/{id}"),
    ("PUT", "/tasks/{id}"),
    ("DELETE", "/tasks/{id}"),
    ("POST", "/tasks/{id}/migrated"),
    ("GET", "/tasks/{id}/status"),
    ("GET", "/tasks/{id}/logs"),
    ("PATCH", "/tasks/{id}"),
    ("POST", "/tasks/{id}/restart"),
    ("POST", "/tasks/{id}/wake"),
    ("POST", "/tasks/{id}/sleep"),
    ("GET", "/usage"),
    ("POST", "/usage"),
    ("PUT", "/nodes/{id}/apps/{task_id}"),
    ("GET", "/nodes/"),
    ("POST", "/nodes/"),
    ("PUT", "/nodes/{id}/heartbeat"),
    ("POST", "/nodes/{id}/renew"),
    ("DELETE", "/nodes/{id}"),
    ("GET", "/leases/"),
    ("GET", "/leases/{task_id}"),
    ("POST", "/leases/{task_id}"),
    ("PUT", "/leases/{task_id}"),
    ("DELETE", "/leases/{task_id}"),
    ("GET", "/watch"),
    ("GET", "/certificates"),
    ("GET", "/acme/account"),
    ("PUT", "/acme/account"),
    ("GET", "/acme/{kind}/{name}"),
    ("PUT", "/acme/{kind}/{name}"),
    ("DELETE", "/acme/{kind}/{name}"),
];

const METHODS: &[&str] = &[
    "get", "put", "post", "delete", "patch", "head", "options", "trace",
];

/// The schema names the Rust wire types are documented under.
const SCHEMAS: &[&str] = &[
    "TaskSpec",
    "Task",
    "VolumeSpec",
    "HealthSpec",
    "Resources",
    "NodeRegistration",
    "Heartbeat",
    "NodeStatus",
    "LeaseRequest",
    "LeaseRenewal",
    "LeaseGrant",
    "Lease",
    "WatchEvent",
    "WatchResponse",
    "AcmeRecord",
    "CertStatus",
    "AppStatus",
    "TaskStatus",
    "TaskListItem",
    "LogLine",
    "UsageReport",
    "UsageDelta",
    "UsageRow",
    "WakeAnswer",
    "SleepAnswer",
    "ErrorBody",
];

/// Whether an answer shows the route exists: 404 for an unknown task is fine, "no such route" not.
fn served(status: u16, body: &Value) -> bool {
    let no_route = status == 404
        && body["error"]
            .as_str()
            .is_some_and(|e| e.contains("no such route"));
    status != 405 && !no_route
}

/// A fresh hostname per call, so no two POSTs collide on a domain (409).
fn fresh_domain() -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!("t{}.openapi.test", N.fetch_add(1, Ordering::Relaxed))
}

struct Op {
    method: String,
    template: String,
    op: Value,
    params: Vec<Value>,
}

struct Doc(Value);

impl Doc {
    fn load() -> Doc {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/openapi.json");
        let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {path}: {e}"));
        let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("parse {path}: {e}"));
        assert!(
            v["openapi"].as_str().is_some_and(|s| s.starts_with("3.1.")),
            "an OpenAPI 3.1 document"
        );
        Doc(v)
    }

    /// Follows `$ref`s (local ones only) to the value they name.
    fn resolve<'a>(&'a self, mut v: &'a Value) -> &'a Value {
        while let Some(r) = v.get("$ref").and_then(Value::as_str) {
            let pointer = r
                .strip_prefix('#')
                .unwrap_or_else(|| panic!("only local $refs: {r}"));
            v = self
                .0
                .pointer(pointer)
                .unwrap_or_else(|| panic!("dangling $ref {r}"));
        }
        v
    }

    fn schema(&self, name: &str) -> &Value {
        let s = &self.0["components"]["schemas"][name];
        assert!(s.is_object(), "components.schemas.{name} is documented");
        s
    }

    fn example(&self, name: &str) -> Value {
        let e = &self.0["components"]["examples"][name]["value"];
        assert!(!e.is_null(), "components.examples.{name} is documented");
        e.clone()
    }

    fn operations(&self) -> Vec<Op> {
        let paths = self.0["paths"].as_object().expect("paths");
        let mut ops = vec![];
        for (template, item) in paths {
            let item = self.resolve(item);
            let shared: Vec<Value> = item["parameters"]
                .as_array()
                .map(|ps| ps.iter().map(|p| self.resolve(p).clone()).collect())
                .unwrap_or_default();
            for m in METHODS {
                let Some(op) = item.get(*m) else { continue };
                let mut params = shared.clone();
                if let Some(ps) = op["parameters"].as_array() {
                    params.extend(ps.iter().map(|p| self.resolve(p).clone()));
                }
                ops.push(Op {
                    method: m.to_uppercase(),
                    template: template.clone(),
                    op: op.clone(),
                    params,
                });
            }
        }
        ops
    }

    fn op(&self, method: &str, template: &str) -> Op {
        self.operations()
            .into_iter()
            .find(|o| o.method == method && o.template == template)
            .unwrap_or_else(|| panic!("{method} {template} is documented"))
    }

    fn needs_token(&self, op: &Op) -> bool {
        let sec = op.op.get("security").unwrap_or(&self.0["security"]);
        sec.as_array().is_some_and(|a| !a.is_empty())
    }

    /// The operation's request body schema, if it takes one.
    fn request_schema<'a>(&'a self, op: &'a Op) -> Option<&'a Value> {
        let body = op.op.get("requestBody")?;
        Some(self.resolve(&self.resolve(body)["content"]["application/json"]["schema"]))
    }

    /// The request body examples of the operation, resolved.
    fn request_examples(&self, op: &Op) -> Vec<Value> {
        let Some(body) = op.op.get("requestBody") else {
            return vec![];
        };
        let media = &self.resolve(body)["content"]["application/json"];
        let mut out = vec![];
        if let Some(exs) = media["examples"].as_object() {
            out.extend(exs.values().map(|e| self.resolve(e)["value"].clone()));
        }
        if let Some(e) = media.get("example") {
            out.push(e.clone());
        }
        out
    }

    /// A concrete URL: path parameters from `subst` or their examples, required query parameters
    /// from their examples.
    fn url(&self, op: &Op, subst: &[(&str, &str)]) -> String {
        let mut path = op.template.clone();
        let mut query = vec![];
        for p in &op.params {
            let name = p["name"].as_str().expect("parameter name");
            let value = subst
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.to_string())
                .unwrap_or_else(|| match &p["example"] {
                    Value::String(s) => s.clone(),
                    Value::Null => panic!(
                        "{} {}: parameter {name} needs an example",
                        op.method, op.template
                    ),
                    other => other.to_string(),
                });
            match p["in"].as_str() {
                Some("path") => path = path.replace(&format!("{{{name}}}"), &value),
                Some("query") if p["required"] == json!(true) => {
                    query.push(format!("{name}={value}"))
                }
                _ => {}
            }
        }
        assert!(
            !path.contains('{'),
            "{}: every path parameter is declared",
            op.template
        );
        if query.is_empty() {
            path
        } else {
            format!("{path}?{}", query.join("&"))
        }
    }

    /// The answer must be documented for the operation and match the documented body.
    fn check_response(&self, op: &Op, status: u16, body: &Value) -> Result<(), String> {
        let resp = &op.op["responses"][status.to_string()];
        if resp.is_null() {
            return Err(format!("status {status} is not documented"));
        }
        let content = &self.resolve(resp)["content"];
        if let Some(media) = content.get("application/json") {
            let mut errs = vec![];
            self.validate(&media["schema"], body, "$", &mut errs);
            if !errs.is_empty() {
                return Err(format!("{status} body does not match the schema: {errs:?}"));
            }
        } else if content.get("text/plain").is_some() {
            if !body.is_string() {
                return Err(format!("{status}: a text/plain body was documented"));
            }
        } else if body != &json!("") {
            return Err(format!("{status}: no body was documented"));
        }
        Ok(())
    }

    /// A JSON Schema subset; objects with `properties` and no `additionalProperties` are closed.
    fn validate(&self, schema: &Value, v: &Value, at: &str, errs: &mut Vec<String>) {
        let s = self.resolve(schema);
        if let Some(t) = s.get("type") {
            let types: Vec<&str> = match t {
                Value::String(t) => vec![t.as_str()],
                Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
                _ => panic!("bad type {t}"),
            };
            let ok = types.iter().any(|t| match *t {
                "object" => v.is_object(),
                "array" => v.is_array(),
                "string" => v.is_string(),
                "boolean" => v.is_boolean(),
                "null" => v.is_null(),
                "number" => v.is_number(),
                "integer" => v.is_i64() || v.is_u64(),
                other => panic!("unknown type {other}"),
            });
            if !ok {
                errs.push(format!("{at}: {v} is not of type {t}"));
                return;
            }
        }
        if let Some(c) = s.get("const") {
            if c != v {
                errs.push(format!("{at}: {v} is not {c}"));
            }
        }
        if let Some(e) = s.get("enum").and_then(Value::as_array) {
            if !e.contains(v) {
                errs.push(format!("{at}: {v} is not one of {e:?}"));
            }
        }
        if let Some(n) = v.as_f64() {
            let bound = |k: &str| s.get(k).and_then(Value::as_f64);
            if bound("minimum").is_some_and(|m| n < m)
                || bound("maximum").is_some_and(|m| n > m)
                || bound("exclusiveMinimum").is_some_and(|m| n <= m)
                || bound("exclusiveMaximum").is_some_and(|m| n >= m)
            {
                errs.push(format!("{at}: {v} is out of bounds"));
            }
        }
        if let Some(text) = v.as_str() {
            let len = text.chars().count() as u64;
            if s.get("minLength")
                .and_then(Value::as_u64)
                .is_some_and(|m| len < m)
                || s.get("maxLength")
                    .and_then(Value::as_u64)
                    .is_some_and(|m| len > m)
            {
                errs.push(format!("{at}: length {len} is out of bounds"));
            }
        }
        if let Some(items) = v.as_array() {
            let len = items.len() as u64;
            if s.get("minItems")
                .and_then(Value::as_u64)
                .is_some_and(|m| len < m)
                || s.get("maxItems")
                    .and_then(Value::as_u64)
                    .is_some_and(|m| len > m)
            {
                errs.push(format!("{at}: {len} items is out of bounds"));
            }
            if let Some(item) = s.get("items") {
                for (i, x) in items.iter().enumerate() {
                    self.validate(item, x, &format!("{at}[{i}]"), errs);
                }
            }
        }
        if let Some(obj) = v.as_object() {
            for r in s
                .get("required")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let r = r.as_str().expect("required names");
                if !obj.contains_key(r) {
                    errs.push(format!("{at}: required {r} is missing"));
                }
            }
            let props = s.get("properties").and_then(Value::as_object);
            for (k, x) in obj {
                match (props.and_then(|p| p.get(k)), s.get("additionalProperties")) {
                    (Some(p), _) => self.validate(p, x, &format!("{at}.{k}"), errs),
                    (None, Some(Value::Bool(true))) => {}
                    (None, Some(extra)) if extra.is_object() => {
                        self.validate(extra, x, &format!("{at}.{k}"), errs)
                    }
                    (None, _) if props.is_some() || s.get("additionalProperties").is_some() => {
                        errs.push(format!("{at}: property {k} is not documented"))
                    }
                    (None, _) => {}
                }
            }
        }
        if let Some(alts) = s.get("oneOf").and_then(Value::as_array) {
            let mut why = vec![];
            let matching = alts
                .iter()
                .filter(|a| {
                    let mut e = vec![];
                    self.validate(a, v, at, &mut e);
                    why.extend(e.iter().cloned());
                    e.is_empty()
                })
                .count();
            if matching != 1 {
                errs.push(format!("{at}: matches {matching} of oneOf, not 1: {why:?}"));
            }
        }
    }
}

/// Calls operations by their documented template and checks every answer against the document.
struct Api {
    doc: Doc,
    raw: RawClient,
}

impl Api {
    async fn call(
        &self,
        method: &str,
        template: &str,
        subst: &[(&str, &str)],
        query: &str,
        body: Option<&Value>,
    ) -> (u16, Value) {
        let op = self.doc.op(method, template);
        let mut url = self.doc.url(&op, subst);
        if !query.is_empty() {
            url.push(if url.contains('?') { '&' } else { '?' });
            url.push_str(query);
        }
        let text = body.map(Value::to_string);
        let (st, v) = self.raw.send(method, &url, text.as_deref()).await;
        if let Err(e) = self.doc.check_response(&op, st, &v) {
            panic!("{method} {url}: {e}; answer {v}");
        }
        (st, v)
    }

    async fn create(&self, spec: &Value) -> (u16, Value) {
        self.call("POST", "/tasks/", &[], "", Some(spec)).await
    }
}

fn with_fresh_domains(spec: &Value) -> Value {
    let mut s = spec.clone();
    let n = s["domains"].as_array().map_or(1, Vec::len);
    let d = fresh_domain();
    s["domains"] = (0..n)
        .map(|i| {
            if i == 0 {
                d.clone()
            } else {
                format!("w{i}.{d}")
            }
        })
        .collect();
    s
}

fn set_at(v: &mut Value, path: &[&str], x: Value) {
    let mut cur = v;
    for k in &path[..path.len() - 1] {
        if !cur[*k].is_object() {
            cur[*k] = json!({});
        }
        cur = &mut cur[*k];
    }
    cur[path[path.len() - 1]] = x;
}

/// Leaf properties of an object schema, one level into referenced objects: (path, schema).
fn leaves<'a>(doc: &'a Doc, schema: &'a Value) -> Vec<(Vec<String>, &'a Value)> {
    let mut out = vec![];
    for (k, p) in doc.resolve(schema)["properties"]
        .as_object()
        .expect("properties")
    {
        let r = doc.resolve(p);
        match r["properties"].as_object() {
            Some(inner) => {
                for (k2, p2) in inner {
                    out.push((vec![k.clone(), k2.clone()], doc.resolve(p2)));
                }
            }
            None => out.push((vec![k.clone()], r)),
        }
    }
    out
}

#[tokio::test]
async fn every_documented_operation_is_served_as_documented() {
    let m = spawn(MasterOptions::default()).await;
    let doc = Doc::load();
    for name in SCHEMAS {
        doc.schema(name);
    }
    let ops = doc.operations();
    assert!(!ops.is_empty());
    // The probe tells a missing route from a missing resource.
    for (method, path) in [
        ("GET", "/no/such/route"),
        ("PATCH", "/tasks/"),
        ("POST", "/watch"),
    ] {
        let (st, body) = m.raw().send(method, path, Some("{}")).await;
        assert!(
            !served(st, &body),
            "{method} {path} is no route: {st} {body}"
        );
    }
    for op in &ops {
        let url = doc.url(op, &[]);
        let body = doc.request_examples(op).into_iter().next();
        assert_eq!(
            body.is_some(),
            op.op.get("requestBody").is_some(),
            "{} {}: a request body has an example",
            op.method,
            op.template
        );
        let text = body.as_ref().map(Value::to_string);
        let (st, v) = m.raw().send(&op.method, &url, text.as_deref()).await;
        assert!(
            served(st, &v),
            "{} {url} is documented but not served: {st} {v}",
            op.method
        );
        if let Err(e) = doc.check_response(op, st, &v) {
            panic!("{} {url}: {e}; answer {v}", op.method);
        }
        for anon in [m.raw().without_token(), m.raw().with_token("wrong-token")] {
            let (st, v) = anon.send(&op.method, &url, text.as_deref()).await;
            if doc.needs_token(op) {
                assert_eq!(st, 401, "{} {url} needs the token: {v}", op.method);
                if let Err(e) = doc.check_response(op, st, &v) {
                    panic!("{} {url} without the token: {e}; answer {v}", op.method);
                }
            } else {
                assert_eq!(st, 200, "{} {url} needs no token: {v}", op.method);
            }
        }
    }
}

#[tokio::test]
async fn every_served_route_is_documented() {
    let m = spawn(MasterOptions::default()).await;
    let doc = Doc::load();
    let documented: BTreeSet<(String, String)> = doc
        .operations()
        .into_iter()
        .map(|o| (o.method, o.template))
        .collect();
    for (method, template) in SERVED {
        assert!(
            documented.contains(&(method.to_string(), template.to_string())),
            "{method} {template} is served but not in docs/openapi.json"
        );
        // And the list itself is true: the master serves it.
        let op = doc.op(method, template);
        let body = doc
            .request_examples(&op)
            .into_iter()
            .next()
            .map(|b| b.to_string());
        let (st, v) = m
            .raw()
            .send(method, &doc.url(&op, &[]), body.as_deref())
            .await;
        assert!(served(st, &v), "{method} {template}: {st} {v}");
    }
}

#[tokio::test]
async fn the_examples_are_accepted_and_required_fields_are_what_the_api_requires() {
    let m = spawn(MasterOptions::default()).await;
    let api = Api {
        doc: Doc::load(),
        raw: m.raw(),
    };
    let doc = &api.doc;
    let spec_schema = doc.schema("TaskSpec");
    // Fields the master sets (readOnly) are not in a request's example.
    let props: BTreeSet<String> = spec_schema["properties"]
        .as_object()
        .expect("TaskSpec properties")
        .iter()
        .filter(|(_, p)| p.get("readOnly") != Some(&json!(true)))
        .map(|(k, _)| k.clone())
        .collect();

    // The full example is stored as sent, plus the id: no field is dropped or renamed.
    let full = doc.example("TaskSpec");
    let got: BTreeSet<String> = full.as_object().expect("object").keys().cloned().collect();
    assert_eq!(got, props, "the TaskSpec example shows every field");
    let (st, task) = api.create(&full).await;
    assert_eq!(st, 201, "{task}");
    let mut stored = task.clone();
    stored.as_object_mut().expect("task").remove("id");
    // Secret values are write-only: answered as null.
    let mut shown = full.clone();
    for v in shown["secret_env"]
        .as_object_mut()
        .into_iter()
        .flat_map(|m| m.values_mut())
    {
        *v = serde_json::Value::Null;
    }
    assert_eq!(
        stored, shown,
        "the task is the example plus its id, secrets redacted"
    );
    for ex in doc.schema("TaskSpec")["examples"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let (st, v) = api.create(&with_fresh_domains(ex)).await;
        assert_eq!(st, 201, "schema example {ex}: {v}");
    }
    let (st, v) = api.create(&doc.example("TaskSpecMinimal")).await;
    assert_eq!(st, 201, "{v}");

    // Task is TaskSpec plus id.
    let task_props: BTreeSet<String> = doc.schema("Task")["properties"]
        .as_object()
        .expect("Task properties")
        .keys()
        .cloned()
        .collect();
    let mut want: BTreeSet<String> = spec_schema["properties"]
        .as_object()
        .expect("TaskSpec properties")
        .keys()
        .cloned()
        .collect();
    want.insert("id".into());
    assert_eq!(task_props, want, "Task documents TaskSpec's fields and id");

    // `required` is exactly what the API requires.
    let required: BTreeSet<String> = spec_schema["required"]
        .as_array()
        .expect("TaskSpec.required")
        .iter()
        .map(|r| r.as_str().expect("name").to_string())
        .collect();
    for f in &props {
        let mut s = with_fresh_domains(&full);
        s.as_object_mut().expect("spec").remove(f);
        let (st, v) = api.create(&s).await;
        if required.contains(f) {
            assert_eq!(
                (st, v["field"].as_str()),
                (400, Some(f.as_str())),
                "without {f}: {v}"
            );
        } else {
            assert_eq!(st, 201, "{f} is not required, yet: {v}");
        }
    }

    // Every request body: its examples validate, its required fields are required, unknown
    // fields are rejected where the document says so. Parsing comes before any lookup, so
    // example path parameters are enough.
    for op in doc.operations() {
        let Some(schema) = doc.request_schema(&op) else {
            continue;
        };
        let examples = doc.request_examples(&op);
        for ex in &examples {
            let mut errs = vec![];
            doc.validate(schema, ex, "$", &mut errs);
            assert!(
                errs.is_empty(),
                "{} {} example {ex}: {errs:?}",
                op.method,
                op.template
            );
        }
        let base = examples.first().cloned().unwrap_or_else(|| json!({}));
        let url = doc.url(&op, &[]);
        for r in schema["required"].as_array().into_iter().flatten() {
            let r = r.as_str().expect("name");
            let mut b = base.clone();
            b.as_object_mut().expect("object body").remove(r);
            let (st, v) = api.raw.send(&op.method, &url, Some(&b.to_string())).await;
            assert_eq!(
                (st, v["field"].as_str()),
                (400, Some(r)),
                "{} {url} without {r}: {v}",
                op.method
            );
        }
        if schema["additionalProperties"] == json!(false) {
            let mut b = base.clone();
            b["no_such_field"] = json!(1);
            let (st, v) = api.raw.send(&op.method, &url, Some(&b.to_string())).await;
            assert_eq!(
                (st, v["field"].as_str()),
                (400, Some("no_such_field")),
                "{} {url}: {v}",
                op.method
            );
            if let Err(e) = doc.check_response(&op, st, &v) {
                panic!("{} {url}: {e}", op.method);
            }
        }
    }
}

#[tokio::test]
async fn defaults_bounds_and_enums_are_what_the_api_enforces() {
    let m = spawn(MasterOptions::default()).await;
    let api = Api {
        doc: Doc::load(),
        raw: m.raw(),
    };
    let doc = &api.doc;
    let spec_schema = doc.schema("TaskSpec");

    // Defaults: a minimal spec comes back with every documented default, and with no value for
    // an optional field that has none.
    let (st, task) = api
        .create(&with_fresh_domains(&doc.example("TaskSpecMinimal")))
        .await;
    assert_eq!(st, 201, "{task}");
    for (k, p) in spec_schema["properties"].as_object().expect("properties") {
        if let Some(d) = p.get("default") {
            assert_eq!(&task[k], d, "default of {k}");
        }
        let r = doc.resolve(p);
        if let Some(inner) = r["properties"].as_object() {
            for (k2, p2) in inner {
                match doc.resolve(p2).get("default").or_else(|| p2.get("default")) {
                    Some(d) => assert_eq!(&task[k][k2], d, "default of {k}.{k2}"),
                    None => assert!(task[k].get(k2).is_none(), "{k}.{k2} has no default: {task}"),
                }
            }
        } else if p.get("default").is_none()
            && spec_schema["required"]
                .as_array()
                .is_some_and(|r| !r.contains(&json!(k)))
        {
            assert!(task.get(k).is_none(), "{k} has no default: {task}");
        }
    }

    // Bounds and enums, against the full example with fresh domains.
    let full = doc.example("TaskSpec");
    let mut checked = 0;
    for (path, s) in leaves(doc, spec_schema) {
        let keys: Vec<&str> = path.iter().map(String::as_str).collect();
        let field = keys.join(".");
        if s.get("readOnly") == Some(&json!(true)) {
            // Set by the master only: any value in a request is a 400 naming it.
            let mut spec = with_fresh_domains(&full);
            set_at(&mut spec, &keys, json!("local"));
            let (st, v) = api.create(&spec).await;
            assert_eq!(
                (st, v["field"].as_str()),
                (400, Some(field.as_str())),
                "{v}"
            );
            continue;
        }
        let is_int = s["type"] == json!("integer");
        let mut cases: Vec<(Value, bool)> = vec![];
        if let Some(min) = s.get("minimum") {
            let below = if is_int {
                json!(min.as_i64().expect("int") - 1)
            } else {
                json!(min.as_f64().expect("num") - 0.5)
            };
            cases.extend([(min.clone(), true), (below, false)]);
        }
        if let Some(min) = s.get("exclusiveMinimum") {
            cases.push((min.clone(), false));
        }
        if let Some(max) = s.get("maximum") {
            let above = if is_int {
                json!(max.as_i64().expect("int") + 1)
            } else {
                json!(max.as_f64().expect("num") + 0.5)
            };
            cases.extend([(max.clone(), true), (above, false)]);
        }
        let string_of = |n: u64| Value::String("a".repeat(n as usize));
        if let Some(n) = s.get("minLength").and_then(Value::as_u64) {
            cases.push((string_of(n.max(1)), true));
            if n > 0 {
                cases.push((string_of(n - 1), false));
            }
        }
        if let Some(n) = s.get("maxLength").and_then(Value::as_u64) {
            cases.extend([(string_of(n), true), (string_of(n + 1), false)]);
        }
        let array_of = |n: u64| -> Value {
            let d = fresh_domain();
            (0..n)
                .map(|i| {
                    if field == "domains" {
                        format!("h{i}.{d}")
                    } else {
                        format!("arg{i}")
                    }
                })
                .collect()
        };
        if let Some(n) = s.get("minItems").and_then(Value::as_u64) {
            cases.push((array_of(n.max(1)), true));
            if n > 0 {
                cases.push((array_of(n - 1), false));
            }
        }
        if let Some(n) = s.get("maxItems").and_then(Value::as_u64) {
            cases.extend([(array_of(n), true), (array_of(n + 1), false)]);
        }
        if let Some(values) = s.get("enum").and_then(Value::as_array) {
            cases.extend(values.iter().map(|v| (v.clone(), true)));
            cases.push((json!("no-such-value"), false));
        }
        for (value, ok) in cases {
            let mut spec = with_fresh_domains(&full);
            set_at(&mut spec, &keys, value.clone());
            let (st, v) = api.create(&spec).await;
            if ok {
                assert_eq!(
                    st, 201,
                    "{field} = {value} is within the documented bounds: {v}"
                );
            } else {
                assert_eq!(
                    (st, v["field"].as_str()),
                    (400, Some(field.as_str())),
                    "{field} = {value}: {v}"
                );
            }
            checked += 1;
        }
    }
    assert!(
        checked > 30,
        "only {checked} bound checks: the document lost its bounds?"
    );
}

#[tokio::test]
async fn a_walk_through_the_api_answers_as_documented() {
    // Slow heartbeats: no node goes unhealthy (an event) while the watch is checked.
    let m = spawn(MasterOptions {
        heartbeat_interval: Duration::from_secs(60),
        ..MasterOptions::default()
    })
    .await;
    let api = Api {
        doc: Doc::load(),
        raw: m.raw(),
    };
    let doc = &api.doc;
    let (_, first) = api.call("GET", "/watch", &[], "", None).await;
    assert_eq!(
        (
            first["reset"].as_bool(),
            first["events"].as_array().map(Vec::len)
        ),
        (Some(true), Some(0))
    );
    let epoch = first["epoch"].as_str().expect("epoch").to_string();

    // Tasks.
    let (st, task) = api.create(&doc.example("TaskSpec")).await;
    assert_eq!(st, 201);
    let id = task["id"].as_str().expect("id").to_string();
    let (st, conflict) = api.create(&doc.example("TaskSpec")).await;
    assert_eq!(
        (st, conflict["field"].as_str()),
        (409, Some("domains[0]")),
        "{conflict}"
    );
    let ids = [("id", id.as_str())];
    assert_eq!(
        api.call("GET", "/tasks/{id}", &ids, "", None).await,
        (200, task.clone())
    );
    let (st, list) = api.call("GET", "/tasks/", &[], "", None).await;
    let mut listed = task.clone();
    listed["state"] = json!("idle");
    assert_eq!((st, list), (200, json!([listed])));
    let domain = doc.example("TaskSpec")["domains"][0]
        .as_str()
        .expect("domain")
        .to_uppercase();
    let (st, by) = api
        .call(
            "GET",
            "/tasks/by-domain/{domain}",
            &[("domain", &domain)],
            "",
            None,
        )
        .await;
    assert_eq!((st, by["id"].as_str()), (200, Some(id.as_str())));
    let (st, _) = api
        .call(
            "PUT",
            "/tasks/{id}",
            &ids,
            "",
            Some(&doc.example("TaskSpec")),
        )
        .await;
    assert_eq!(st, 200);
    let (st, nf) = api
        .call("GET", "/tasks/{id}", &[("id", "no-such-task")], "", None)
        .await;
    assert_eq!(st, 404, "{nf}");

    // Nodes: the examples fit together (the lease example names the registered node).
    let (st, node) = api
        .call(
            "POST",
            "/nodes/",
            &[],
            "",
            Some(&doc.example("NodeRegistration")),
        )
        .await;
    assert_eq!((st, node["healthy"].as_bool()), (200, Some(true)), "{node}");
    let node_id = node["id"].as_str().expect("id").to_string();
    let hb = doc.example("Heartbeat");
    let (st, _) = api
        .call(
            "PUT",
            "/nodes/{id}/heartbeat",
            &[("id", &node_id)],
            "",
            Some(&hb),
        )
        .await;
    assert_eq!(st, 200);
    let (st, _) = api
        .call(
            "PUT",
            "/nodes/{id}/heartbeat",
            &[("id", "no-such-node")],
            "",
            Some(&hb),
        )
        .await;
    assert_eq!(st, 404);
    let (st, _) = api.call("GET", "/nodes/", &[], "", None).await;
    assert_eq!(st, 200);
    let (st, c) = api
        .call("DELETE", "/nodes/{id}", &[("id", &node_id)], "", None)
        .await;
    assert_eq!(st, 409, "a healthy node is not deleted: {c}");
    let (st, c) = api
        .call("DELETE", "/nodes/{id}", &[("id", "no-such-node")], "", None)
        .await;
    assert_eq!(st, 404, "{c}");

    // Leases: on a fresh master the first grant is token 1, which the renewal example renews.
    let t = [("task_id", id.as_str())];
    let acquire = doc.example("LeaseRequest");
    assert_eq!(
        acquire["node"].as_str(),
        Some(node_id.as_str()),
        "the lease example names the node example"
    );
    let (st, grant) = api
        .call("POST", "/leases/{task_id}", &t, "", Some(&acquire))
        .await;
    assert_eq!(st, 200, "{grant}");
    let renewal = doc.example("LeaseRenewal");
    assert_eq!(
        renewal["token"], grant["token"],
        "the renewal example renews the first grant"
    );
    let (st, renewed) = api
        .call("PUT", "/leases/{task_id}", &t, "", Some(&renewal))
        .await;
    assert_eq!((st, &renewed["token"]), (200, &grant["token"]));
    let (st, lease) = api.call("GET", "/leases/{task_id}", &t, "", None).await;
    assert_eq!((st, lease["node"].as_str()), (200, Some(node_id.as_str())));
    let (st, _) = api.call("GET", "/leases/", &[], "", None).await;
    assert_eq!(st, 200);
    let other = json!({"id": "node-other", "address": "10.0.0.6:7071"});
    api.call("POST", "/nodes/", &[], "", Some(&other)).await;
    let (st, c) = api
        .call(
            "POST",
            "/leases/{task_id}",
            &t,
            "",
            Some(&json!({"node": "node-other", "ttl_ms": 1000})),
        )
        .await;
    assert_eq!(
        (st, c["holder"].as_str()),
        (409, Some(node_id.as_str())),
        "{c}"
    );
    let token = grant["token"].to_string();
    let wrong = (grant["token"].as_u64().expect("token") + 100).to_string();
    let (st, c) = api
        .call(
            "DELETE",
            "/leases/{task_id}",
            &[t[0], ("token", &wrong)],
            "",
            None,
        )
        .await;
    assert_eq!(
        (st, c["holder"].as_str()),
        (409, Some(node_id.as_str())),
        "{c}"
    );
    let (st, _) = api
        .call(
            "DELETE",
            "/leases/{task_id}",
            &[t[0], ("token", &token)],
            "",
            None,
        )
        .await;
    assert_eq!(st, 204);
    let (st, _) = api.call("GET", "/leases/{task_id}", &t, "", None).await;
    assert_eq!(st, 404);
    let (st, c) = api
        .call("PUT", "/leases/{task_id}", &t, "", Some(&renewal))
        .await;
    assert_eq!(st, 409, "{c}");
    let (st, _) = api.call("DELETE", "/tasks/{id}", &ids, "", None).await;
    assert_eq!(st, 204);

    // The watch replays every kind of event, each matching its documented schema.
    let (_, all) = api
        .call(
            "GET",
            "/watch",
            &[],
            &format!("epoch={epoch}&since=0&timeout_ms=0"),
            None,
        )
        .await;
    assert_eq!(all["reset"], json!(false), "{all}");
    let seen: BTreeSet<&str> = all["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["type"].as_str())
        .collect();
    // `node_deleted` needs a node that went unhealthy, which the slow heartbeats here rule
    // out; `only_a_dead_node_can_be_deleted_and_it_stays_deleted` (master_api.rs) sees it. The
    // `acme_*` events come from an edge ordering certificates: tests/tests/acme.rs.
    let documented: BTreeSet<&str> = doc.schema("WatchEvent")["discriminator"]["mapping"]
        .as_object()
        .expect("discriminator mapping")
        .keys()
        .map(String::as_str)
        .filter(|t| *t != "node_deleted")
        .filter(|t| !t.starts_with("acme_"))
        .collect();
    assert_eq!(
        seen, documented,
        "every event type is documented, and was seen"
    );
    let rev = all["revision"].as_u64().expect("revision");

    // Watch protocol: no news and timeout_ms=0 answers at once; another epoch, or a revision in
    // the future, is a reset; a waiting watch wakes on a change.
    let (_, none) = api
        .call(
            "GET",
            "/watch",
            &[],
            &format!("epoch={epoch}&since={rev}&timeout_ms=0"),
            None,
        )
        .await;
    assert_eq!(
        (
            none["reset"].as_bool(),
            none["events"].as_array().map(Vec::len)
        ),
        (Some(false), Some(0))
    );
    for q in [
        format!("epoch=other&since={rev}"),
        format!("epoch={epoch}&since={}", rev + 5),
    ] {
        let (_, r) = api.call("GET", "/watch", &[], &q, None).await;
        assert_eq!(r["reset"], json!(true), "{q}: {r}");
    }
    let (st, _) = api.call("GET", "/watch", &[], "since=abc", None).await;
    assert_eq!(st, 400);
    // A missing or malformed release token is a 400 naming the field.
    for q in ["", "?token=abc", "?token=-1"] {
        let (st, v) = api
            .raw
            .send("DELETE", &format!("/leases/{id}{q}"), None)
            .await;
        assert_eq!(st, 400, "DELETE /leases/{{task_id}}{q}: {v}");
        assert_eq!(v["field"], "token", "{v}");
        if let Err(e) = doc.check_response(&doc.op("DELETE", "/leases/{task_id}"), st, &v) {
            panic!("DELETE /leases/{{task_id}}{q}: {e}");
        }
    }
    let waiter = {
        let raw = m.raw();
        let q = format!("/watch?epoch={epoch}&since={rev}&timeout_ms=20000");
        tokio::spawn(async move { raw.send("GET", &q, None).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (st, _) = api
        .create(&with_fresh_domains(&doc.example("TaskSpecMinimal")))
        .await;
    assert_eq!(st, 201);
    let (st, woke) = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("the watch wakes on a change")
        .expect("watch task");
    assert_eq!(st, 200);
    let woke_types: Vec<&str> = woke["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["type"].as_str())
        .collect();
    assert!(woke_types.contains(&"task_put"), "{woke}");
    if let Err(e) = doc.check_response(&doc.op("GET", "/watch"), st, &woke) {
        panic!("woken watch: {e}");
    }
}
