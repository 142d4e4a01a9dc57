//! The `digitalocean` node provider against a small fake of the DigitalOcean API v2 that speaks
//! its JSON shapes and records every request: the exact create body, the lookup, the delete.

use std::{
    convert::Infallible,
    sync::{Arc, Mutex},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{body::Incoming, server::conn::http1, service::service_fn, Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use shadow_common::node::NodeStatus;
use shadow_edgeproxy::provider::{
    digitalocean::DigitalOceanProvider, DigitalOceanConfig, NodeProvider, ProviderError,
};

const TOKEN: &str = "dop_v1_test_token";

/// One request as the fake saw it.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    /// Path and query.
    uri: String,
    authorization: Option<String>,
    content_type: Option<String>,
    body: Value,
}

#[derive(Default)]
struct State {
    droplets: Vec<Value>,
    next_id: u64,
    seen: Vec<Seen>,
    /// Answer every create with this status and body.
    fail_create: Option<(u16, Value)>,
}

#[derive(Clone)]
struct FakeDo {
    url: String,
    state: Arc<Mutex<State>>,
}

fn droplet(id: u64, name: &str, public: &str, private: &str, tags: &[&str]) -> Value {
    let mut v4 = vec![];
    if !public.is_empty() {
        v4.push(json!({"ip_address": public, "netmask": "255.255.240.0", "gateway": "203.0.113.1", "type": "public"}));
    }
    if !private.is_empty() {
        v4.push(json!({"ip_address": private, "netmask": "255.255.0.0", "gateway": "", "type": "private"}));
    }
    json!({
        "id": id,
        "name": name,
        "memory": 2048,
        "vcpus": 1,
        "disk": 50,
        "locked": false,
        "status": "active",
        "created_at": "2024-01-01T00:00:00Z",
        "networks": {"v4": v4, "v6": []},
        "region": {"slug": "fra1", "name": "Frankfurt 1"},
        "size_slug": "s-1vcpu-2gb",
        "tags": tags,
        "volume_ids": [],
        "vpc_uuid": "5a4981aa-9653-4bd1-bef5-d6bff52042e4"
    })
}

impl FakeDo {
    async fn start(droplets: Vec<Value>) -> FakeDo {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let state = Arc::new(Mutex::new(State {
            droplets,
            next_id: 900,
            ..State::default()
        }));
        let s = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let s = s.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| handle(s.clone(), req));
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        FakeDo { url, state }
    }

    fn seen(&self) -> Vec<Seen> {
        self.state.lock().expect("state").seen.clone()
    }

    fn ids(&self) -> Vec<u64> {
        let st = self.state.lock().expect("state");
        st.droplets
            .iter()
            .map(|d| d["id"].as_u64().expect("id"))
            .collect()
    }
}

fn reply(status: u16, body: Option<Value>) -> Response<Full<Bytes>> {
    let mut b = Response::builder().status(status);
    let bytes = match body {
        Some(v) => {
            b = b.header("content-type", "application/json");
            Bytes::from(v.to_string())
        }
        None => Bytes::new(),
    };
    b.body(Full::new(bytes)).expect("response")
}

async fn handle(
    state: Arc<Mutex<State>>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let method = req.method().to_string();
    let uri = req.uri().to_string();
    let header = |n: &str| {
        req.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let (authorization, content_type) = (header("authorization"), header("content-type"));
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or_default().to_string();
    let bytes = req.into_body().collect().await.expect("body").to_bytes();
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let mut st = state.lock().expect("state");
    st.seen.push(Seen {
        method: method.clone(),
        uri,
        authorization: authorization.clone(),
        content_type,
        body: body.clone(),
    });
    if authorization.as_deref() != Some(&format!("Bearer {TOKEN}")) {
        return Ok(reply(
            401,
            Some(json!({"id": "Unauthorized", "message": "Unable to authenticate you"})),
        ));
    }
    let resp = match (method.as_str(), path.as_str()) {
        ("POST", "/v2/droplets") => {
            if let Some((status, err)) = st.fail_create.clone() {
                return Ok(reply(status, Some(err)));
            }
            st.next_id += 1;
            let tags: Vec<&str> = body["tags"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let mut d = droplet(
                st.next_id,
                body["name"].as_str().unwrap_or(""),
                "",
                "",
                &tags,
            );
            d["status"] = json!("new");
            st.droplets.push(d.clone());
            reply(
                202,
                Some(
                    json!({"droplet": d, "links": {"actions": [{"id": 7, "rel": "create", "href": "https://api.digitalocean.com/v2/actions/7"}]}}),
                ),
            )
        }
        ("GET", "/v2/droplets") => {
            let tag = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("tag_name="))
                .unwrap_or_default()
                .to_string();
            let droplets: Vec<Value> = st
                .droplets
                .iter()
                .filter(|d| {
                    d["tags"]
                        .as_array()
                        .is_some_and(|t| t.iter().any(|x| x == tag.as_str()))
                })
                .cloned()
                .collect();
            let total = droplets.len();
            reply(
                200,
                Some(json!({"droplets": droplets, "links": {}, "meta": {"total": total}})),
            )
        }
        ("DELETE", p) if p.starts_with("/v2/droplets/") => {
            let id: u64 = p["/v2/droplets/".len()..].parse().unwrap_or(0);
            let before = st.droplets.len();
            st.droplets.retain(|d| d["id"] != id);
            if st.droplets.len() < before {
                reply(204, None)
            } else {
                reply(
                    404,
                    Some(
                        json!({"id": "not_found", "message": "The resource you requested could not be found."}),
                    ),
                )
            }
        }
        _ => reply(
            404,
            Some(json!({"id": "not_found", "message": "no such route in the fake"})),
        ),
    };
    Ok(resp)
}

fn config(api: &FakeDo) -> DigitalOceanConfig {
    DigitalOceanConfig {
        token: TOKEN.into(),
        api_base: format!("{}/", api.url),
        region: "fra1".into(),
        size: "s-1vcpu-2gb".into(),
        image: "ubuntu-24-04-x64".into(),
        user_data: Some("#cloud-config\nruncmd:\n  - shadow-nodeproxy\n".into()),
        tag: "shadow-node".into(),
    }
}

fn node(id: &str, address: &str) -> NodeStatus {
    NodeStatus {
        id: id.into(),
        address: address.into(),
        capacity: 10,
        running: vec![],
        load: 0.0,
        last_heartbeat_ms: Some(1),
        healthy: false,
        volume_kinds: None,
    }
}

/// The fake's droplets: 101 is the dead node (by name), 102 a live node, 103 untagged with the
/// dead node's name (not ours), 104 tagged with the dead node's private IP only.
fn fleet() -> Vec<Value> {
    vec![
        droplet(
            101,
            "node-a",
            "203.0.113.10",
            "10.114.0.2",
            &["shadow-node"],
        ),
        droplet(
            102,
            "node-b",
            "203.0.113.11",
            "10.114.0.3",
            &["shadow-node"],
        ),
        droplet(103, "node-a", "203.0.113.12", "10.114.0.4", &["web"]),
        droplet(104, "pet", "203.0.113.13", "10.114.0.5", &["shadow-node"]),
    ]
}

#[tokio::test]
async fn creates_a_droplet_then_deletes_the_dead_nodes_droplet_found_by_name() {
    let api = FakeDo::start(fleet()).await;
    let provider = DigitalOceanProvider::new(config(&api)).expect("provider");
    assert_eq!(provider.name(), "digitalocean");

    let r = provider
        .replace(&node("node-a", "198.51.100.1:7071"))
        .await
        .expect("replace");
    assert_eq!(r.new_instance.as_deref(), Some("901"));
    assert_eq!(r.removed.as_deref(), Some("101"));

    let seen = api.seen();
    let calls: Vec<(&str, &str)> = seen
        .iter()
        .map(|s| (s.method.as_str(), s.uri.as_str()))
        .collect();
    assert_eq!(
        calls,
        [
            ("POST", "/v2/droplets"),
            (
                "GET",
                "/v2/droplets?tag_name=shadow-node&per_page=200&page=1"
            ),
            ("DELETE", "/v2/droplets/101"),
        ]
    );
    for s in &seen {
        assert_eq!(
            s.authorization.as_deref(),
            Some("Bearer dop_v1_test_token"),
            "{s:?}"
        );
    }
    let create = &seen[0];
    assert_eq!(create.content_type.as_deref(), Some("application/json"));
    let name = create.body["name"].as_str().expect("a name").to_string();
    assert!(
        name.starts_with("shadow-node-") && name.len() == 20,
        "{name}"
    );
    assert_eq!(
        create.body,
        json!({
            "name": name,
            "region": "fra1",
            "size": "s-1vcpu-2gb",
            "image": "ubuntu-24-04-x64",
            "user_data": "#cloud-config\nruncmd:\n  - shadow-nodeproxy\n",
            "tags": ["shadow-node"],
        })
    );
    assert_eq!(seen[2].body, Value::Null, "DELETE has no body");
    assert_eq!(
        api.ids(),
        [102, 103, 104, 901],
        "only 101 deleted, 901 created"
    );
}

#[tokio::test]
async fn finds_the_dead_droplet_by_ip_and_sends_a_numeric_image_id_as_a_number() {
    let api = FakeDo::start(fleet()).await;
    let mut cfg = config(&api);
    cfg.image = "148123456".into();
    cfg.user_data = None;
    let provider = DigitalOceanProvider::new(cfg).expect("provider");

    let r = provider
        .replace(&node("some-other-id", "10.114.0.5:7071"))
        .await
        .expect("replace");
    assert_eq!(r.removed.as_deref(), Some("104"));
    let seen = api.seen();
    assert_eq!(seen[0].body["image"], json!(148123456));
    assert!(
        seen[0].body.get("user_data").is_none(),
        "no user_data when unset: {}",
        seen[0].body
    );
    assert_eq!(api.ids(), [101, 102, 103, 901]);

    // A node no droplet matches: created, nothing deleted, no error.
    let r = provider
        .replace(&node("gone", "10.114.9.9:7071"))
        .await
        .expect("replace");
    assert_eq!(r.removed, None);
    assert!(api
        .seen()
        .iter()
        .all(|s| s.method != "DELETE" || s.uri == "/v2/droplets/104"));
}

#[tokio::test]
async fn an_api_error_surfaces_with_status_and_message_and_deletes_nothing() {
    let api = FakeDo::start(fleet()).await;
    api.state.lock().expect("state").fail_create = Some((
        422,
        json!({"id": "unprocessable_entity", "message": "You specified an invalid size for Droplet creation.", "request_id": "4d9d8375-3c56-4925-a3e7-eb137fed17e9"}),
    ));
    let provider = DigitalOceanProvider::new(config(&api)).expect("provider");
    let err = provider
        .replace(&node("node-a", "10.114.0.2:7071"))
        .await
        .expect_err("422");
    assert!(
        matches!(
            err,
            ProviderError::Api {
                status: Some(422),
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "digitalocean: create droplet failed (HTTP 422): unprocessable_entity: You specified an invalid size for Droplet creation."
    );
    assert_eq!(api.seen().len(), 1, "stopped after the failed create");
    assert_eq!(api.ids(), [101, 102, 103, 104]);

    // A wrong token: 401 with the API's message.
    let mut cfg = config(&api);
    cfg.token = "wrong".into();
    let err = DigitalOceanProvider::new(cfg)
        .expect("provider")
        .replace(&node("node-a", "10.114.0.2:7071"))
        .await
        .expect_err("401");
    assert!(
        err.to_string()
            .contains("(HTTP 401): Unauthorized: Unable to authenticate you"),
        "{err}"
    );
}

#[tokio::test]
async fn two_droplets_matching_the_dead_node_delete_neither() {
    let mut droplets = fleet();
    droplets.push(droplet(
        105,
        "node-x",
        "203.0.113.20",
        "10.114.0.9",
        &["shadow-node"],
    ));
    droplets.push(droplet(
        106,
        "node-x",
        "203.0.113.21",
        "10.114.0.10",
        &["shadow-node"],
    ));
    let api = FakeDo::start(droplets).await;
    let provider = DigitalOceanProvider::new(config(&api)).expect("provider");
    let err = provider
        .replace(&node("node-x", "10.114.0.9:7071"))
        .await
        .expect_err("ambiguous");
    assert!(matches!(err, ProviderError::Partial { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("started droplet 901")
            && msg.contains("2 machines match dead node node-x (105, 106)"),
        "{msg}"
    );
    assert!(api.seen().iter().all(|s| s.method != "DELETE"));
}

#[tokio::test]
async fn empty_required_settings_are_refused_naming_the_variable() {
    let api = FakeDo::start(vec![]).await;
    let mut cfg = config(&api);
    cfg.region = String::new();
    let err = DigitalOceanProvider::new(cfg).expect_err("no region");
    assert!(err.to_string().contains("SHADOW_DO_REGION"), "{err}");
}
