//! The dashboard in a real browser (headless Chromium over DevTools): sign in, an app's row and
//! its state change after a request, the live log, sleeping it from its page, the nodes; and
//! raw requests a hostile page could make (no CSRF token, another origin, no session).
//!
//! With `SHADOW_UI_SCREENSHOTS=<dir>` it saves the screenshots `docs/` shows.

use std::path::PathBuf;

use serde_json::json;
use shadow_common::status::AppState;
use shadow_tests::{
    browser::Browser,
    fixtures::{counter_task, domain, status_until},
    http::Client,
    image::counter_image,
    master::{self, MasterOptions, TOKEN},
    node,
};

async fn shot(b: &mut Browser, name: &str) {
    if let Some(dir) = std::env::var_os("SHADOW_UI_SCREENSHOTS") {
        let path = PathBuf::from(dir).join(name);
        std::fs::write(&path, b.screenshot().await).expect("write screenshot");
    }
}

/// Signs in through the form, as a person would: once the form is there to fill in. (Typed
/// into a page still loading, the token was lost and the test waited for an answer that never
/// came.)
async fn sign_in(b: &mut Browser, token: &str) {
    b.wait_for(
        "document.readyState == 'complete' && document.querySelector('form input[name=token]')",
        "the sign-in form, loaded",
    )
    .await;
    let submitted = b
        .eval(&format!(
            "document.querySelector('input[name=token]').value = {}; document.querySelector('form').submit(); true",
            json!(token)
        ))
        .await;
    assert_eq!(
        submitted,
        json!(true),
        "the sign-in form was filled in and sent"
    );
}

#[tokio::test]
async fn sign_in_watch_an_app_start_and_put_it_to_sleep_from_the_page() {
    counter_image().await.expect("image");
    let m = master::spawn(MasterOptions::default()).await;
    let n = node::spawn(&m, |c| c.usage_report_s = 1).await;
    let host = domain("dash");
    let task = counter_task(&m, &host, "none", |s| {
        s["name"] = "dash".into();
        s["idle_timeout_s"] = 600.into();
    })
    .await;
    let mut b = Browser::start().await;

    b.navigate(&format!("{}/ui", m.url)).await;
    b.wait_for("location.pathname == '/ui/login'", "the sign-in form")
        .await;
    sign_in(&mut b, "not-the-token").await;
    b.wait_for(
        "document.querySelector('.error') && document.querySelector('.error').innerText.includes('SHADOW_API_TOKEN')",
        "a wrong token refused with a reason",
    )
    .await;
    sign_in(&mut b, TOKEN).await;
    let row = "document.querySelector('tr[data-app=dash] [data-state]')";
    b.wait_for(
        &format!("{row} && {row}.dataset.state == 'idle'"),
        "the app's row, idle",
    )
    .await;

    // The session cookie: HttpOnly (no script reads it), SameSite=Strict.
    let cookies = b
        .call(
            "Network.getCookies",
            json!({ "urls": [format!("{}/ui", m.url)] }),
        )
        .await;
    let session = cookies["cookies"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == "shadow_session"))
        .cloned()
        .expect("a session cookie");
    assert_eq!(session["httpOnly"], true, "{session}");
    assert_eq!(session["sameSite"], "Strict", "{session}");
    assert_eq!(b.eval("document.cookie").await, json!(""));

    // A request starts the app; the page shows it without a reload.
    let reply = Client::new(n.addr).get(&host, "/").await.expect("answer");
    assert_eq!(reply.status, 200);
    b.wait_for(
        &format!("{row}.dataset.state == 'running'"),
        "the row turned running",
    )
    .await;
    shot(&mut b, "dashboard-apps.png").await;

    b.navigate(&format!("{}/ui/apps/{}", m.url, task.id)).await;
    b.wait_for(
        "document.getElementById('log-tail').textContent.includes('counter listening')",
        "the app's log on its page",
    )
    .await;
    shot(&mut b, "dashboard-app.png").await;
    b.eval("document.querySelector('button[data-action=sleep]').click(); true")
        .await;
    b.wait_for("location.search == '?done=sleep'", "the sleep taken")
        .await;
    b.wait_for(
        "document.querySelector('h1 [data-state]').dataset.state == 'idle'",
        "the app asleep on its page",
    )
    .await;
    status_until(&m, &task.id, "the app stopped", |s| {
        s.state == AppState::Idle
    })
    .await;
    assert!(n.containers().await.is_empty(), "the container is gone");
    assert!(
        b.eval("document.body.innerText")
            .await
            .as_str()
            .unwrap_or("")
            .contains("stopping"),
        "the recent events list the stop"
    );

    b.navigate(&format!("{}/ui/nodes", m.url)).await;
    b.wait_for(
        &format!(
            "document.querySelector('tr[data-node=\"{}\"] .state.healthy')",
            n.id
        ),
        "the node, healthy",
    )
    .await;
    b.phone().await;
    b.navigate(&format!("{}/ui", m.url)).await;
    b.wait_for(row, "the apps on a phone").await;
    let overflow = b
        .eval("document.documentElement.scrollWidth <= window.innerWidth")
        .await;
    assert_eq!(overflow, json!(true), "the page fits a phone's width");
    shot(&mut b, "dashboard-phone.png").await;
}

#[tokio::test]
async fn forms_need_the_session_its_csrf_token_and_this_origin() {
    let m = master::spawn(MasterOptions::default()).await;
    let task = counter_task(&m, &domain("dash-csrf"), "none", |s| {
        s["name"] = "guarded".into()
    })
    .await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");

    // No session: pages go to the sign-in form, the log answers 401, actions do nothing.
    let page = http
        .get(format!("{}/ui", m.url))
        .send()
        .await
        .expect("page");
    assert_eq!(page.status(), 303);
    assert_eq!(page.headers()["location"], "/ui/login");
    let logs = http
        .get(format!("{}/ui/apps/{}/logs", m.url, task.id))
        .send()
        .await
        .expect("logs");
    assert_eq!(logs.status(), 401);

    let login = http
        .post(format!("{}/ui/login", m.url))
        .form(&[("token", TOKEN)])
        .send()
        .await
        .expect("login");
    assert_eq!(login.status(), 303);
    let set = login.headers()["set-cookie"]
        .to_str()
        .expect("cookie")
        .to_owned();
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict"),
        "{set}"
    );
    let cookie = set.split(';').next().expect("pair").to_owned();

    let page = http
        .get(format!("{}/ui/apps/{}", m.url, task.id))
        .header("cookie", &cookie)
        .send()
        .await
        .expect("page");
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .expect("csp")
        .to_owned();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    let html = page.text().await.expect("html");
    assert!(!html.contains("src=\"http"), "no external resources");
    let csrf = html
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .expect("a CSRF token in the forms")
        .to_owned();

    let restart = |form: Vec<(&'static str, String)>, origin: Option<&'static str>| {
        let mut req = http
            .post(format!("{}/ui/apps/{}/restart", m.url, task.id))
            .header("cookie", &cookie)
            .form(&form);
        if let Some(o) = origin {
            req = req.header("origin", o);
        }
        req.send()
    };
    let restarts = || async {
        m.client
            .get_task(&task.id)
            .await
            .expect("task")
            .spec
            .restarts
    };
    assert_eq!(
        restart(vec![("action", "restart".into())], None)
            .await
            .expect("post")
            .status(),
        403,
        "no token"
    );
    let other = "0".repeat(64);
    assert_eq!(
        restart(vec![("csrf", other)], None)
            .await
            .expect("post")
            .status(),
        403,
        "a wrong token"
    );
    let evil = restart(vec![("csrf", csrf.clone())], Some("http://evil.example"))
        .await
        .expect("post");
    assert_eq!(evil.status(), 403, "another origin");
    assert_eq!(restarts().await, 0, "nothing was done");
    let own = m.url.clone();
    let ok = http
        .post(format!("{}/ui/apps/{}/restart", m.url, task.id))
        .header("cookie", &cookie)
        .header("origin", own)
        .form(&[("csrf", csrf)])
        .send()
        .await
        .expect("post");
    assert_eq!(ok.status(), 303);
    assert_eq!(restarts().await, 1, "the dashboard's own form works");
}
