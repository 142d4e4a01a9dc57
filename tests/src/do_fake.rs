//! A fake of DigitalOcean's volume API on `127.0.0.1`, speaking its JSON, for the `do` backend.
//!
//! It checks what a client sends (bearer token, JSON bodies, valid names, regions, droplets,
//! attaching a volume only where it is free) and answers as DigitalOcean does: actions start
//! `in-progress` and complete on the next poll (or a later one, [`DoFake::slow_actions`]), which is when the volume's `droplet_ids` change
//! and its disk (a [`LoopDisk`]) is linked into (or out of) the droplet's device dir as
//! `scsi-0DO_Volume_<name>`. Requests that break a rule are answered with DigitalOcean's error
//! shape and recorded in [`DoFake::problems`].

use std::{
    collections::{BTreeMap, HashMap},
    convert::Infallible,
    path::PathBuf,
    sync::{Arc, Mutex},
};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tempfile::TempDir;

use crate::block::LoopDisk;

struct Volume {
    id: String,
    name: String,
    region: String,
    size: u64,
    droplet_ids: Vec<u64>,
    disk: LoopDisk,
}

struct Action {
    id: u64,
    volume: String,
    kind: String,
    droplet: u64,
    region: String,
    status: &'static str,
    /// Polls left before it completes.
    polls_left: u32,
}

#[derive(Default)]
struct State {
    token: String,
    volumes: BTreeMap<String, Volume>,
    actions: HashMap<u64, Action>,
    /// Droplet id → (region, device dir).
    droplets: HashMap<u64, (String, PathBuf)>,
    next: u64,
    fail_detaches: u32,
    /// Polls an action takes to complete (at least one).
    action_polls: u32,
    requests: Vec<String>,
    problems: Vec<String>,
}

/// The fake API; `url` is the base to give a node as `SHADOW_DO_API`.
pub struct DoFake {
    pub url: String,
    pub token: String,
    state: Arc<Mutex<State>>,
    server: tokio::task::JoinHandle<()>,
    files: TempDir,
}

impl DoFake {
    pub async fn start() -> DoFake {
        let token = format!("dop_v1_{}", uuid::Uuid::new_v4().simple());
        let state = Arc::new(Mutex::new(State {
            token: token.clone(),
            next: 1000,
            ..State::default()
        }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let st = state.clone();
        let server = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let st = st.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let st = st.clone();
                        async move { Ok::<_, Infallible>(handle(&st, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        DoFake {
            url,
            token,
            state,
            server,
            files: tempfile::tempdir().expect("temp dir"),
        }
    }

    /// A droplet in `region`; returns the device dir its node must be configured with.
    pub fn add_droplet(&self, id: u64, region: &str) -> PathBuf {
        let dir = self.files.path().join(format!("dev-{id}"));
        std::fs::create_dir_all(&dir).expect("device dir");
        self.lock()
            .droplets
            .insert(id, (region.into(), dir.clone()));
        dir
    }

    /// A volume that exists before any node asks, its disk prepared by `prepare`.
    pub fn add_volume(&self, name: &str, region: &str, prepare: impl FnOnce(&LoopDisk)) {
        let mut s = self.lock();
        let id = new_volume_id(&mut s);
        let disk = LoopDisk::blank(self.files.path().join(format!("{id}.img")));
        prepare(&disk);
        s.volumes.insert(
            id.clone(),
            Volume {
                id,
                name: name.into(),
                region: region.into(),
                size: 1,
                droplet_ids: vec![],
                disk,
            },
        );
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The next `n` detach requests fail with a 500, as DigitalOcean's API sometimes does.
    pub fn fail_detaches(&self, n: u32) {
        self.lock().fail_detaches = n;
    }

    /// Actions complete only on their `polls`-th poll, as a slow cloud's do.
    pub fn slow_actions(&self, polls: u32) {
        self.lock().action_polls = polls;
    }

    /// Every request so far, as `METHOD path [action type]`.
    pub fn requests(&self) -> Vec<String> {
        self.lock().requests.clone()
    }

    /// Requests that broke a rule of the real API.
    pub fn problems(&self) -> Vec<String> {
        self.lock().problems.clone()
    }

    /// The droplets a volume is attached to, by name.
    pub fn droplets_of(&self, name: &str) -> Vec<u64> {
        let s = self.lock();
        s.volumes
            .values()
            .find(|v| v.name == name)
            .map(|v| v.droplet_ids.clone())
            .unwrap_or_default()
    }

    /// The (filesystem type, filesystem UUID) on a volume's disk, by name.
    pub fn fs_of(&self, name: &str) -> (Option<String>, Option<String>) {
        let s = self.lock();
        s.volumes
            .values()
            .find(|v| v.name == name)
            .map(|v| (v.disk.fs_type(), v.disk.fs_uuid()))
            .unwrap_or_default()
    }
}

impl Drop for DoFake {
    fn drop(&mut self) {
        self.server.abort();
        let vols: Vec<Volume> = std::mem::take(&mut self.lock().volumes)
            .into_values()
            .collect();
        drop(vols);
    }
}

fn new_volume_id(s: &mut State) -> String {
    s.next += 1;
    format!("506f78a4-e098-11e5-ad9f-{:012x}", s.next)
}

fn volume_json(v: &Volume) -> Value {
    json!({
        "id": v.id,
        "region": {"name": v.region, "slug": v.region, "sizes": [], "features": [], "available": true},
        "droplet_ids": v.droplet_ids,
        "name": v.name,
        "description": "",
        "size_gigabytes": v.size,
        "created_at": "2026-01-01T00:00:00Z",
        "filesystem_type": "",
        "filesystem_label": "",
        "tags": ["shadow"],
    })
}

fn action_json(a: &Action) -> Value {
    json!({
        "id": a.id,
        "status": a.status,
        "type": format!("{}_volume", a.kind),
        "started_at": "2026-01-01T00:00:00Z",
        "completed_at": if a.status == "completed" { json!("2026-01-01T00:00:01Z") } else { Value::Null },
        "resource_id": Value::Null,
        "resource_type": "volume",
        "region": {"slug": a.region},
        "region_slug": a.region,
    })
}

fn answer(status: StatusCode, body: Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json; charset=utf-8")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("response")
}

/// DigitalOcean's error shape, recorded as a problem when the client broke a rule.
fn refuse(s: &mut State, status: StatusCode, id: &str, message: String) -> Response<Full<Bytes>> {
    if status.is_client_error() {
        s.problems.push(format!("{status}: {message}"));
    }
    answer(status, json!({"id": id, "message": message}))
}

fn query(uri: &http::Uri, key: &str) -> Option<String> {
    uri.query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| v.to_string())
    })
}

fn valid_name(n: &str) -> bool {
    n.len() <= 64
        && n.starts_with(|c: char| c.is_ascii_lowercase())
        && n.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

async fn handle(st: &Mutex<State>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let mut s = st.lock().unwrap_or_else(|e| e.into_inner());
    let s = &mut *s;
    let path = parts.uri.path().to_string();
    let auth = parts
        .headers
        .get("authorization")
        .and_then(|v| v.to_str().ok());
    if auth != Some(&format!("Bearer {}", s.token)) {
        return refuse(
            s,
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "Unable to authenticate you".into(),
        );
    }
    let json: Value = if parts.method == Method::POST {
        let ct = parts
            .headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !ct.starts_with("application/json") {
            return refuse(
                s,
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "bad_request",
                format!("content-type {ct:?} is not application/json"),
            );
        }
        match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(e) => {
                return refuse(
                    s,
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    format!("invalid JSON: {e}"),
                )
            }
        }
    } else {
        Value::Null
    };
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    s.requests.push(
        format!(
            "{} {} {}",
            parts.method,
            path,
            json["type"].as_str().unwrap_or("")
        )
        .trim()
        .to_string(),
    );
    match (&parts.method, segs.as_slice()) {
        (&Method::GET, ["v2", "volumes"]) => {
            let name = query(&parts.uri, "name");
            let region = query(&parts.uri, "region");
            let vols: Vec<Value> = s
                .volumes
                .values()
                .filter(|v| name.as_ref().is_none_or(|n| *n == v.name))
                .filter(|v| region.as_ref().is_none_or(|r| *r == v.region))
                .map(volume_json)
                .collect();
            let total = vols.len();
            answer(
                StatusCode::OK,
                json!({"volumes": vols, "links": {}, "meta": {"total": total}}),
            )
        }
        (&Method::POST, ["v2", "volumes"]) => {
            let (Some(size), Some(name), Some(region)) = (
                json["size_gigabytes"].as_u64(),
                json["name"].as_str(),
                json["region"].as_str(),
            ) else {
                return refuse(
                    s,
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "unprocessable_entity",
                    format!("size_gigabytes, name and region are required: {json}"),
                );
            };
            if size == 0 || !valid_name(name) {
                return refuse(
                    s,
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "unprocessable_entity",
                    format!("invalid size {size} or name {name:?}"),
                );
            }
            if !s.droplets.values().any(|(r, _)| r == region) {
                return refuse(
                    s,
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "unprocessable_entity",
                    format!("region {region:?} has no droplets here"),
                );
            }
            if s.volumes
                .values()
                .any(|v| v.name == name && v.region == region)
            {
                return refuse(
                    s,
                    StatusCode::CONFLICT,
                    "conflict",
                    format!("a volume named {name} already exists in {region}"),
                );
            }
            let id = new_volume_id(s);
            // The fake's files live beside the device dirs.
            let dir = s
                .droplets
                .values()
                .next()
                .map(|(_, d)| d.parent().expect("parent").to_path_buf())
                .expect("a droplet");
            let v = Volume {
                id: id.clone(),
                name: name.into(),
                region: region.into(),
                size,
                droplet_ids: vec![],
                disk: LoopDisk::blank(dir.join(format!("{id}.img"))),
            };
            let body = json!({"volume": volume_json(&v)});
            s.volumes.insert(id, v);
            answer(StatusCode::CREATED, body)
        }
        (&Method::GET, ["v2", "volumes", id]) => match s.volumes.get(*id) {
            Some(v) => answer(StatusCode::OK, json!({"volume": volume_json(v)})),
            None => refuse(
                s,
                StatusCode::NOT_FOUND,
                "not_found",
                "The resource you were accessing could not be found.".into(),
            ),
        },
        (&Method::POST, ["v2", "volumes", id, "actions"]) => {
            let id = id.to_string();
            let (Some(kind), Some(droplet), Some(region)) = (
                json["type"].as_str(),
                json["droplet_id"].as_u64(),
                json["region"].as_str(),
            ) else {
                return refuse(
                    s,
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "unprocessable_entity",
                    format!("type, droplet_id and region are required: {json}"),
                );
            };
            let Some(v) = s.volumes.get(&id) else {
                return refuse(
                    s,
                    StatusCode::NOT_FOUND,
                    "not_found",
                    "The resource you were accessing could not be found.".into(),
                );
            };
            if v.region != region {
                return refuse(
                    s,
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "unprocessable_entity",
                    format!("volume is in {}, not {region}", v.region),
                );
            }
            match kind {
                "attach" => {
                    match s.droplets.get(&droplet) {
                        Some((r, _)) if r == region => {}
                        _ => {
                            return refuse(
                                s,
                                StatusCode::UNPROCESSABLE_ENTITY,
                                "unprocessable_entity",
                                format!("droplet {droplet} is not in {region}"),
                            )
                        }
                    }
                    if let Some(other) = v.droplet_ids.first() {
                        return refuse(
                            s,
                            StatusCode::UNPROCESSABLE_ENTITY,
                            "unprocessable_entity",
                            format!("volume is already attached to droplet {other}"),
                        );
                    }
                }
                "detach" => {
                    if s.fail_detaches > 0 {
                        s.fail_detaches -= 1;
                        return answer(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            json!({"id": "server_error", "message": "Server was unable to give you a response."}),
                        );
                    }
                    if !v.droplet_ids.contains(&droplet) {
                        return refuse(
                            s,
                            StatusCode::UNPROCESSABLE_ENTITY,
                            "unprocessable_entity",
                            format!("volume is not attached to droplet {droplet}"),
                        );
                    }
                }
                other => {
                    return refuse(
                        s,
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "unprocessable_entity",
                        format!("unknown action type {other:?}"),
                    )
                }
            }
            s.next += 1;
            let a = Action {
                id: s.next,
                volume: id,
                kind: kind.into(),
                droplet,
                region: region.into(),
                status: "in-progress",
                polls_left: s.action_polls.max(1),
            };
            let body = json!({"action": action_json(&a)});
            s.actions.insert(a.id, a);
            answer(StatusCode::ACCEPTED, body)
        }
        (&Method::GET, ["v2", "volumes", id, "actions", aid]) => {
            let Some(a) = aid
                .parse::<u64>()
                .ok()
                .and_then(|aid| s.actions.get(&aid))
                .filter(|a| a.volume == *id)
            else {
                return refuse(
                    s,
                    StatusCode::NOT_FOUND,
                    "not_found",
                    "The resource you were accessing could not be found.".into(),
                );
            };
            let (aid, kind, droplet, vol) = (a.id, a.kind.clone(), a.droplet, a.volume.clone());
            let a = s.actions.get_mut(&aid).expect("the action");
            if a.status != "completed" {
                a.polls_left = a.polls_left.saturating_sub(1);
                if a.polls_left == 0 {
                    a.status = "completed";
                    complete(s, &vol, &kind, droplet);
                }
            }
            answer(
                StatusCode::OK,
                json!({"action": action_json(&s.actions[&aid])}),
            )
        }
        _ => refuse(
            s,
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no route {} {path}", parts.method),
        ),
    }
}

/// An action's effect: the volume's droplets and the device link.
fn complete(s: &mut State, volume: &str, kind: &str, droplet: u64) {
    let Some(v) = s.volumes.get_mut(volume) else {
        return;
    };
    let Some((_, dir)) = s.droplets.get(&droplet) else {
        return;
    };
    let link = dir.join(format!("scsi-0DO_Volume_{}", v.name));
    if kind == "attach" {
        v.droplet_ids = vec![droplet];
        v.disk.link(&link);
    } else {
        v.droplet_ids.retain(|d| *d != droplet);
        let _ = std::fs::remove_file(&link);
    }
}
