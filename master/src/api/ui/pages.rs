//! The dashboard's HTML, rendered on the master: the apps, one app, the nodes, signing in.
//! Every value from the outside goes through [`esc`].

use std::fmt::Write;

use shadow_common::{
    node::NodeStatus,
    status::{now_ms, AppState, AppStatus, TaskStatus},
    task::Task,
    usage::{bytes_text, UsageRow},
};

use crate::registry::status::AppEvent;

/// HTML-escapes text for element content and quoted attributes.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn word<T: serde::Serialize>(v: T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn badge(state: AppState) -> String {
    let w = word(state);
    format!("<span class=\"state {w}\" data-state=\"{w}\">{w}</span>")
}

/// "12 s ago", "3 min ago"… from unix milliseconds.
pub fn ago(ms: Option<u64>) -> String {
    let Some(ms) = ms else {
        return "never".into();
    };
    let s = now_ms().saturating_sub(ms) / 1000;
    match s {
        0..=59 => format!("{s} s ago"),
        60..=3599 => format!("{} min ago", s / 60),
        3600..=86_399 => format!("{} h ago", s / 3600),
        _ => format!("{} d ago", s / 86_400),
    }
}

fn duration(s: f64) -> String {
    if s < 120.0 {
        format!("{s:.0} s")
    } else if s < 7200.0 {
        format!("{:.0} min", s / 60.0)
    } else {
        format!("{:.1} h", s / 3600.0)
    }
}

/// The page around `live` (the part the script refreshes) and `after` (left alone).
pub fn layout(title: &str, csrf: &str, signed_in: bool, live: &str, after: &str) -> String {
    let logout = if signed_in {
        format!(
            "<form method=\"post\" action=\"/ui/logout\"><input type=\"hidden\" name=\"csrf\" value=\"{}\"><button>Sign out</button></form>",
            esc(csrf)
        )
    } else {
        String::new()
    };
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<title>{} · Shadow</title><link rel=\"stylesheet\" href=\"/ui/assets/style.css\"></head><body>\
<header><a class=\"brand\" href=\"/ui\">Shadow</a><a href=\"/ui\">Apps</a><a href=\"/ui/nodes\">Nodes</a>{logout}</header>\
<main id=\"live\">{live}</main>{after}<script src=\"/ui/assets/app.js\"></script></body></html>\n",
        esc(title)
    )
}

/// One app's line on the apps page.
pub struct AppLine {
    pub task: Task,
    pub status: TaskStatus,
    /// Its use over the last day, when it has any.
    pub day: Option<UsageRow>,
}

pub fn apps(lines: &[AppLine]) -> String {
    let mut h = String::from("<h1>Apps</h1>");
    if lines.is_empty() {
        h.push_str("<p class=\"muted\">No apps yet: create one with <code>shadow apps create -f app.toml</code>.</p>");
        return h;
    }
    h.push_str("<div class=\"scroll\"><table><thead><tr><th>App</th><th>State</th><th>Node</th><th>Last request</th><th>Cold starts</th><th>Running (24 h)</th><th>Requests (24 h)</th><th>CPU (24 h)</th><th>Domains</th></tr></thead><tbody>");
    for l in lines {
        let on: Vec<&AppStatus> = l
            .status
            .nodes
            .iter()
            .filter(|s| {
                matches!(
                    s.state,
                    AppState::Running | AppState::Starting | AppState::Frozen | AppState::Stopping
                )
            })
            .collect();
        let node = on.first().map_or_else(|| "—".to_owned(), |s| esc(&s.node));
        let last = l
            .status
            .nodes
            .iter()
            .filter_map(|s| s.last_request_ms)
            .max();
        let cold: u64 = l.status.nodes.iter().map(|s| s.cold_starts).sum();
        let (running, requests, cpu) =
            l.day
                .as_ref()
                .map_or(("—".to_owned(), "0".to_owned(), "—".to_owned()), |d| {
                    (
                        duration(d.running_s),
                        d.requests.to_string(),
                        format!("{:.1} s", d.cpu_s),
                    )
                });
        let _ = write!(
            h,
            "<tr data-app=\"{name}\"><td><a href=\"/ui/apps/{id}\">{name}</a></td><td>{state}</td><td>{node}</td><td>{last}</td><td>{cold}</td><td>{running}</td><td>{requests}</td><td>{cpu}</td><td>{domains}</td></tr>",
            name = esc(&l.task.spec.name),
            id = esc(&l.task.id),
            state = badge(l.status.state),
            last = ago(last),
            domains = esc(&l.task.spec.domains.join(", ")),
        );
    }
    h.push_str("</tbody></table></div>");
    h
}

fn action(id: &str, what: &str, label: &str, csrf: &str, primary: bool) -> String {
    format!(
        "<form method=\"post\" action=\"/ui/apps/{}/{what}\"><input type=\"hidden\" name=\"csrf\" value=\"{}\"><button{} data-action=\"{what}\">{label}</button></form>",
        esc(id),
        esc(csrf),
        if primary { " class=\"primary\"" } else { "" }
    )
}

/// The live part of an app's page.
pub fn app(
    task: &Task,
    status: &TaskStatus,
    events: &[AppEvent],
    hours: &[UsageRow],
    csrf: &str,
    notice: Option<&str>,
) -> String {
    let id = &task.id;
    let mut h = format!("<h1>{} {}</h1>", esc(&task.spec.name), badge(status.state));
    if let Some(n) = notice {
        let _ = write!(h, "<p class=\"notice\">{}</p>", esc(n));
    }
    let _ = write!(
        h,
        "<div class=\"actions\">{}{}{}</div>",
        action(id, "wake", "Wake", csrf, true),
        action(id, "sleep", "Sleep", csrf, false),
        action(id, "restart", "Restart", csrf, false)
    );
    let _ = write!(
        h,
        "<h2>Spec</h2><dl><dt>Id</dt><dd>{}</dd><dt>Image</dt><dd>{}</dd><dt>Domains</dt><dd>{}</dd><dt>Volume</dt><dd>{}</dd><dt>Idle timeout</dt><dd>{} s</dd></dl>",
        esc(id),
        esc(&task.spec.image),
        esc(&task.spec.domains.join(", ")),
        esc(&word(task.spec.volume.kind)),
        task.spec.idle_timeout_s
    );
    h.push_str("<h2>On the nodes</h2>");
    if status.nodes.is_empty() {
        h.push_str(
            "<p class=\"muted\">No node has run it yet; its first request (or Wake) starts it.</p>",
        );
    } else {
        h.push_str("<div class=\"scroll\"><table><thead><tr><th>Node</th><th>State</th><th>Since</th><th>Last request</th><th>Cold starts</th><th>Limits</th><th>Image id</th></tr></thead><tbody>");
        for s in &status.nodes {
            let state = match (s.state, s.phase) {
                (AppState::Starting, Some(p)) => format!(
                    "{} <span class=\"muted\">{}</span>",
                    badge(s.state),
                    p.words()
                ),
                _ => badge(s.state),
            };
            let limits = s.limits.as_ref().map_or_else(String::new, |l| {
                format!("{} MiB, {} CPU, {} pids", l.memory_mb, l.cpus, l.pids)
            });
            let digest = s.image_digest.as_deref().unwrap_or("");
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{state}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&s.node),
                ago(Some(s.since_ms)),
                ago(s.last_request_ms),
                s.cold_starts,
                esc(&limits),
                esc(digest.get(..19).unwrap_or(digest)),
            );
        }
        h.push_str("</tbody></table></div>");
    }
    if let Some(e) = status
        .nodes
        .iter()
        .filter_map(|s| s.last_error.as_ref())
        .max_by_key(|e| e.at_ms)
    {
        let _ = write!(
            h,
            "<h2>Last error</h2><div class=\"error\"><p>{} <span class=\"muted\">({})</span></p>",
            esc(&e.message),
            ago(Some(e.at_ms))
        );
        if !e.logs.is_empty() {
            let _ = write!(h, "<pre>{}</pre>", esc(&e.logs.join("\n")));
        }
        h.push_str("</div>");
    }
    h.push_str("<h2>Recent events</h2>");
    if events.is_empty() {
        h.push_str("<p class=\"muted\">None since the master started.</p>");
    } else {
        h.push_str("<div class=\"scroll\"><table><thead><tr><th>When</th><th>Node</th><th>State</th><th>Error</th></tr></thead><tbody>");
        for e in events {
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                ago(Some(e.at_ms)),
                esc(&e.node),
                badge(e.state),
                esc(e.error.as_deref().unwrap_or(""))
            );
        }
        h.push_str("</tbody></table></div>");
    }
    h.push_str("<h2>Usage, last 24 h</h2>");
    if hours.is_empty() {
        h.push_str("<p class=\"muted\">Nothing counted yet.</p>");
    } else {
        h.push_str("<div class=\"scroll\"><table><thead><tr><th>Hour (UTC)</th><th>Running</th><th>Cold starts</th><th>Requests</th><th>In</th><th>Out</th><th>CPU</th><th>Peak memory</th></tr></thead><tbody>");
        for r in hours {
            let _ = write!(
                h,
                "<tr><td>{:02}:00</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.1} s</td><td>{}</td></tr>",
                r.hour % 86_400 / 3600,
                duration(r.running_s),
                r.cold_starts,
                r.requests,
                bytes_text(r.bytes_in),
                bytes_text(r.bytes_out),
                r.cpu_s,
                bytes_text(r.peak_memory_bytes)
            );
        }
        h.push_str("</tbody></table></div>");
    }
    h
}

/// The log tail under an app's page (not refreshed: it streams).
pub fn log_tail(id: &str) -> String {
    format!(
        "<section><h2>Log</h2><pre id=\"log-tail\" data-src=\"/ui/apps/{}/logs?follow=true&amp;tail=50\">loading…</pre></section>",
        esc(id)
    )
}

pub fn nodes(nodes: &[NodeStatus], name_of: &dyn Fn(&str) -> String) -> String {
    let mut h = String::from("<h1>Nodes</h1>");
    if nodes.is_empty() {
        h.push_str("<p class=\"muted\">No node has registered.</p>");
        return h;
    }
    h.push_str("<div class=\"scroll\"><table><thead><tr><th>Node</th><th>Health</th><th>Apps</th><th>Load</th><th>Capacity</th><th>Last heartbeat</th><th>Address</th></tr></thead><tbody>");
    for n in nodes {
        let health = if n.healthy { "healthy" } else { "unhealthy" };
        let apps: Vec<String> = n.running.iter().map(|t| esc(&name_of(t))).collect();
        let _ = write!(
            h,
            "<tr data-node=\"{id}\"><td>{id}</td><td><span class=\"state {health}\">{health}</span></td><td>{}</td><td>{:.2}</td><td>{}/{}</td><td>{}</td><td>{}</td></tr>",
            if apps.is_empty() { "—".to_owned() } else { apps.join(", ") },
            n.load,
            n.running.len(),
            n.capacity,
            ago(n.last_heartbeat_ms),
            esc(&n.address),
            id = esc(&n.id),
        );
    }
    h.push_str("</tbody></table></div>");
    h
}

pub fn login(error: Option<&str>) -> String {
    let error = error.map_or_else(String::new, |e| {
        format!("<p class=\"error\">{}</p>", esc(e))
    });
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<title>Sign in · Shadow</title><link rel=\"stylesheet\" href=\"/ui/assets/style.css\"></head><body>\
<form class=\"login\" method=\"post\" action=\"/ui/login\"><h1>Shadow</h1>{error}\
<label for=\"token\">API token</label><input id=\"token\" name=\"token\" type=\"password\" autocomplete=\"current-password\" required autofocus>\
<button class=\"primary\" type=\"submit\">Sign in</button>\
<p class=\"muted\">The cluster's <code>SHADOW_API_TOKEN</code>.</p></form></body></html>\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_from_outside_is_escaped() {
        assert_eq!(
            esc("<script>alert('x')</script> & \"q\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot;"
        );
    }
}
