//! The dashboard at `/ui`: apps (state, node, last request, cold starts, the last day's use),
//! one app (status, last error, recent events, live log tail, wake/sleep/restart), and nodes.
//!
//! Server-rendered HTML with one small script that refreshes the live part of a page and
//! follows the log. Signing in with the API token sets an HttpOnly, SameSite=Strict cookie
//! ([`session`]); every form carries a CSRF token tied to that cookie, and a POST from another
//! origin is refused. The pages load nothing from elsewhere, and their Content-Security-Policy
//! says so.

mod assets;
mod pages;
pub mod session;

use std::{collections::HashMap, sync::Arc};

use http::{header, HeaderValue, StatusCode};
use shadow_common::usage::UsageRow;
use warp::{filters::BoxedFilter, Filter, Reply};

use super::{control, AppState};
use session::{Sessions, COOKIE};

struct Ui {
    state: Arc<AppState>,
    sessions: Sessions,
}

/// What a request to the dashboard carries besides its path.
struct Visit {
    cookie: Option<String>,
    /// The script asks for the live part only.
    partial: bool,
}

fn now_s() -> u64 {
    shadow_common::status::now_ms() / 1000
}

const CSP: &str = "default-src 'none'; style-src 'self'; script-src 'self'; connect-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

fn secured(mut r: warp::reply::Response) -> warp::reply::Response {
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn html(status: StatusCode, body: String) -> warp::reply::Response {
    secured(warp::reply::with_status(warp::reply::html(body), status).into_response())
}

fn see_other(to: &str) -> warp::reply::Response {
    let mut r = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(to) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    secured(r)
}

fn refused(status: StatusCode, why: &str) -> warp::reply::Response {
    html(
        status,
        format!(
            "<!doctype html><meta charset=\"utf-8\"><title>Refused</title><p>{}</p><p><a href=\"/ui\">Back to the dashboard</a></p>",
            pages::esc(why)
        ),
    )
}

pub fn routes(state: Arc<AppState>) -> BoxedFilter<(warp::reply::Response,)> {
    let ui = Arc::new(Ui {
        sessions: Sessions::new(state.api_token.as_deref()),
        state,
    });
    let visit = warp::cookie::optional::<String>(COOKIE)
        .and(warp::header::optional::<String>("x-shadow-partial"))
        .map(|cookie, partial: Option<String>| Visit {
            cookie,
            partial: partial.is_some(),
        });
    let asset = |path: &'static str, body: &'static str, kind: &'static str| {
        warp::path("ui")
            .and(warp::path("assets"))
            .and(warp::path(path))
            .and(warp::path::end())
            .and(warp::get())
            .map(move || {
                secured(warp::reply::with_header(body, "content-type", kind).into_response())
            })
    };
    let style = asset("style.css", assets::STYLE, "text/css; charset=utf-8");
    let script = asset("app.js", assets::SCRIPT, "text/javascript; charset=utf-8");

    let u = ui.clone();
    let login_form = warp::path!("ui" / "login").and(warp::get()).map(move || {
        if u.sessions.required() {
            html(StatusCode::OK, pages::login(None))
        } else {
            see_other("/ui")
        }
    });
    let u = ui.clone();
    let login = warp::path!("ui" / "login")
        .and(warp::post())
        .and(warp::body::content_length_limit(4096))
        .and(warp::body::form::<HashMap<String, String>>())
        .and(warp::header::optional::<String>("x-forwarded-proto"))
        .map(
            move |form: HashMap<String, String>, proto: Option<String>| {
                sign_in(&u, form.get("token").map(String::as_str), proto.as_deref())
            },
        );
    let u = ui.clone();
    let logout = warp::path!("ui" / "logout")
        .and(warp::post())
        .and(warp::body::content_length_limit(4096))
        .and(warp::body::form::<HashMap<String, String>>())
        .and(visit)
        .map(move |form: HashMap<String, String>, v: Visit| {
            if !u
                .sessions
                .csrf_ok(v.cookie.as_deref(), form.get("csrf").map(String::as_str))
            {
                return refused(
                    StatusCode::FORBIDDEN,
                    "This form is stale; reload the page and try again.",
                );
            }
            let mut r = see_other("/ui/login");
            r.headers_mut().insert(
                header::SET_COOKIE,
                HeaderValue::from_static(
                    "shadow_session=; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=0",
                ),
            );
            r
        });

    let u = ui.clone();
    let apps = warp::path!("ui")
        .and(warp::get())
        .and(visit)
        .then(move |v: Visit| {
            let u = u.clone();
            async move { apps_page(&u, &v).await }
        });
    let u = ui.clone();
    let nodes = warp::path!("ui" / "nodes")
        .and(warp::get())
        .and(visit)
        .map(move |v: Visit| nodes_page(&u, &v));
    let u = ui.clone();
    let app = warp::path!("ui" / "apps" / String)
        .and(warp::get())
        .and(visit)
        .and(warp::query::<HashMap<String, String>>())
        .then(move |id: String, v: Visit, q: HashMap<String, String>| {
            let u = u.clone();
            async move {
                let notice = q.get("done").and_then(|d| done_words(d));
                app_page(&u, &id, &v, notice.map(str::to_owned), StatusCode::OK).await
            }
        });
    let u = ui.clone();
    let logs = warp::path!("ui" / "apps" / String / "logs")
        .and(warp::get())
        .and(visit)
        .and(warp::query::<HashMap<String, String>>())
        .then(move |id: String, v: Visit, q: HashMap<String, String>| {
            let u = u.clone();
            async move {
                if !u.sessions.valid(v.cookie.as_deref(), now_s()) {
                    return refused(StatusCode::UNAUTHORIZED, "Sign in first.");
                }
                super::logs::relay(&u.state, &id, &q).await
            }
        });
    let u = ui;
    let act = warp::path!("ui" / "apps" / String / String)
        .and(warp::post())
        .and(warp::body::content_length_limit(4096))
        .and(warp::body::form::<HashMap<String, String>>())
        .and(visit)
        .and(warp::header::optional::<String>("origin"))
        .and(warp::header::optional::<String>("host"))
        .then(
            move |id: String,
                  what: String,
                  form: HashMap<String, String>,
                  v: Visit,
                  origin: Option<String>,
                  host: Option<String>| {
                let u = u.clone();
                async move { act(&u, &id, &what, &form, &v, origin, host).await }
            },
        );
    style
        .or(script)
        .unify()
        .or(login_form)
        .unify()
        .or(login)
        .unify()
        .or(logout)
        .unify()
        .or(apps)
        .unify()
        .or(nodes)
        .unify()
        .or(logs)
        .unify()
        .or(app)
        .unify()
        .or(act)
        .unify()
        .boxed()
}

fn sign_in(u: &Ui, typed: Option<&str>, proto: Option<&str>) -> warp::reply::Response {
    if !u.sessions.required() {
        return see_other("/ui");
    }
    if !typed.is_some_and(|t| u.sessions.token_matches(t)) {
        return html(
            StatusCode::UNAUTHORIZED,
            pages::login(Some(
                "That is not the cluster's API token (SHADOW_API_TOKEN).",
            )),
        );
    }
    let secure = if proto == Some("https") {
        "; Secure"
    } else {
        ""
    };
    let cookie = format!(
        "{COOKIE}={}; Path=/ui; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
        u.sessions.issue(now_s()),
        session::SESSION_S
    );
    let mut r = see_other("/ui");
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

/// The answer when not signed in: a page load goes to the sign-in form; the script's refresh gets a 401 (and
/// leaves the page as it is).
fn signed_in(u: &Ui, v: &Visit) -> Option<warp::reply::Response> {
    if u.sessions.valid(v.cookie.as_deref(), now_s()) {
        return None;
    }
    Some(if v.partial {
        refused(StatusCode::UNAUTHORIZED, "Sign in again.")
    } else {
        see_other("/ui/login")
    })
}

fn page(u: &Ui, v: &Visit, title: &str, live: String, after: &str) -> warp::reply::Response {
    if v.partial {
        return html(StatusCode::OK, live);
    }
    let csrf = u.sessions.csrf(v.cookie.as_deref());
    html(
        StatusCode::OK,
        pages::layout(title, &csrf, u.sessions.required(), &live, after),
    )
}

/// The last day's usage rows, of one task or all (empty if the ledger cannot be read).
async fn last_day(u: &Ui, task: Option<String>) -> Vec<UsageRow> {
    let from = now_s().saturating_sub(86_400) / 3600 * 3600;
    let rows = u
        .state
        .usage
        .query(task, from, u64::MAX)
        .await
        .unwrap_or_default();
    rows.iter().map(|d| UsageRow::from_delta(d, None)).collect()
}

async fn apps_page(u: &Ui, v: &Visit) -> warp::reply::Response {
    if let Some(r) = signed_in(u, v) {
        return r;
    }
    let mut day: HashMap<String, UsageRow> = HashMap::new();
    for r in last_day(u, None).await {
        match day.get_mut(&r.task_id) {
            None => {
                day.insert(r.task_id.clone(), r);
            }
            Some(t) => t.add(&r),
        }
    }
    let mut lines: Vec<pages::AppLine> = u
        .state
        .registry
        .list_tasks()
        .into_iter()
        .filter_map(|t| {
            let status = u.state.registry.task_status(&t.id).ok()?;
            Some(pages::AppLine {
                day: day.remove(&t.id),
                task: t,
                status,
            })
        })
        .collect();
    lines.sort_by(|a, b| a.task.spec.name.cmp(&b.task.spec.name));
    page(u, v, "Apps", pages::apps(&lines), "")
}

fn nodes_page(u: &Ui, v: &Visit) -> warp::reply::Response {
    if let Some(r) = signed_in(u, v) {
        return r;
    }
    let names: HashMap<String, String> = u
        .state
        .registry
        .list_tasks()
        .into_iter()
        .map(|t| (t.id, t.spec.name))
        .collect();
    let name_of = |id: &str| names.get(id).cloned().unwrap_or_else(|| id.to_owned());
    let live = pages::nodes(&u.state.registry.list_nodes(), &name_of);
    page(u, v, "Nodes", live, "")
}

fn done_words(done: &str) -> Option<&'static str> {
    Some(match done {
        "wake" => "Waking the app: its state follows here.",
        "sleep" => "Putting the app to sleep: its data is saved as it stops.",
        "restart" => "Restarting: a running app stops and starts again with its next request.",
        _ => return None,
    })
}

async fn app_page(
    u: &Ui,
    id: &str,
    v: &Visit,
    notice: Option<String>,
    status: StatusCode,
) -> warp::reply::Response {
    if let Some(r) = signed_in(u, v) {
        return r;
    }
    let (task, task_status) = match (
        u.state.registry.get_task(id),
        u.state.registry.task_status(id),
    ) {
        (Ok(t), Ok(s)) => (t, s),
        _ => {
            return refused(
                StatusCode::NOT_FOUND,
                "No such app; it may have been deleted.",
            )
        }
    };
    let events = u.state.registry.task_events(id);
    let hours = last_day(u, Some(id.to_owned())).await;
    let csrf = u.sessions.csrf(v.cookie.as_deref());
    let live = pages::app(
        &task,
        &task_status,
        &events,
        &hours,
        &csrf,
        notice.as_deref(),
    );
    let mut r = page(u, v, &task.spec.name, live, &pages::log_tail(id));
    *r.status_mut() = status;
    r
}

/// A form's action on an app: signed in, its CSRF token, from this origin.
async fn act(
    u: &Ui,
    id: &str,
    what: &str,
    form: &HashMap<String, String>,
    v: &Visit,
    origin: Option<String>,
    host: Option<String>,
) -> warp::reply::Response {
    if !u.sessions.valid(v.cookie.as_deref(), now_s()) {
        return see_other("/ui/login");
    }
    // Browsers send Origin on every POST; another site's page cannot make it ours.
    let same_origin = match (origin.as_deref(), host.as_deref()) {
        (None, _) => true,
        (Some(o), Some(h)) => o.split_once("://").is_some_and(|(_, rest)| rest == h),
        (Some(_), None) => false,
    };
    if !same_origin
        || !u
            .sessions
            .csrf_ok(v.cookie.as_deref(), form.get("csrf").map(String::as_str))
    {
        return refused(
            StatusCode::FORBIDDEN,
            "This form did not come from this dashboard (or is stale); reload the page and try again.",
        );
    }
    let outcome = match what {
        "wake" => control::wake_app(&u.state, id).await.map(drop),
        "sleep" => control::sleep_app(&u.state, id).await.map(drop),
        "restart" => u
            .state
            .registry
            .restart_task(id)
            .await
            .map(drop)
            .map_err(|e| control::Refused {
                status: super::reply::registry_error_status(&e),
                message: e.to_string(),
            }),
        _ => {
            return refused(
                StatusCode::NOT_FOUND,
                "No such action; use wake, sleep or restart.",
            )
        }
    };
    match outcome {
        Ok(()) => see_other(&format!("/ui/apps/{id}?done={what}")),
        Err(e) => app_page(u, id, v, Some(e.message), e.status).await,
    }
}
