//! The dashboard's stylesheet and script: served from the master itself (no external
//! resources, and a Content-Security-Policy that allows no inline code).

pub const STYLE: &str = r#"
:root { --fg: #1d232a; --muted: #5b6570; --line: #dde2e7; --bg: #f7f8fa; --ok: #1f7a3d;
  --warn: #a15c00; --bad: #b3261e; --idle: #5b6570; font-family: system-ui, -apple-system,
  "Segoe UI", Roboto, sans-serif; color: var(--fg); background: var(--bg); }
body { margin: 0; }
header { display: flex; gap: 1rem; align-items: center; flex-wrap: wrap; padding: .75rem 1rem;
  background: #fff; border-bottom: 1px solid var(--line); }
header .brand { font-weight: 700; margin-right: auto; }
header a { color: var(--fg); text-decoration: none; }
header form { margin: 0; }
main, section { padding: 1rem; max-width: 72rem; margin: 0 auto; }
h1 { font-size: 1.3rem; margin: 0 0 .75rem; display: flex; gap: .5rem; align-items: center; flex-wrap: wrap; }
h2 { font-size: 1rem; margin: 1.25rem 0 .5rem; }
.scroll { overflow-x: auto; background: #fff; border: 1px solid var(--line); border-radius: 6px; }
table { border-collapse: collapse; width: 100%; font-size: .9rem; }
th, td { text-align: left; padding: .45rem .6rem; border-bottom: 1px solid var(--line); white-space: nowrap; }
th { color: var(--muted); font-weight: 600; }
tr:last-child td { border-bottom: 0; }
a { color: #0b57d0; }
.state { display: inline-block; padding: .1rem .5rem; border-radius: 999px; font-size: .8rem;
  font-weight: 600; color: #fff; background: var(--idle); }
.state.running { background: var(--ok); }
.state.starting, .state.stopping { background: var(--warn); }
.state.failed, .state.backoff, .state.unhealthy { background: var(--bad); }
.state.healthy { background: var(--ok); }
.muted { color: var(--muted); }
.actions { display: flex; gap: .5rem; flex-wrap: wrap; }
.actions form { margin: 0; }
button { font: inherit; padding: .35rem .9rem; border-radius: 6px; border: 1px solid var(--line);
  background: #fff; cursor: pointer; }
button.primary { background: #0b57d0; color: #fff; border-color: #0b57d0; }
.error { background: #fdecea; border: 1px solid #f4c7c3; border-radius: 6px; padding: .75rem; }
.notice { background: #e8f0fe; border: 1px solid #c6dafc; border-radius: 6px; padding: .5rem .75rem; }
pre { background: #111820; color: #e6edf3; padding: .75rem; border-radius: 6px; overflow: auto;
  max-height: 24rem; font-size: .8rem; margin: 0; white-space: pre-wrap; word-break: break-all; }
dl { display: grid; grid-template-columns: max-content 1fr; gap: .25rem 1rem; margin: 0; }
dt { color: var(--muted); }
dd { margin: 0; overflow-wrap: anywhere; }
.login { max-width: 22rem; margin: 4rem auto; background: #fff; padding: 1.5rem;
  border: 1px solid var(--line); border-radius: 8px; }
.login input { width: 100%; box-sizing: border-box; font: inherit; padding: .5rem; margin: .5rem 0 1rem; }
"#;

/// Keeps the live part of a page current (it is fetched again every 2 s and swapped in) and
/// follows the app's log on its page.
pub const SCRIPT: &str = r#"
(function () {
  var live = document.getElementById('live');
  if (live) {
    setInterval(function () {
      fetch(location.href, { headers: { 'x-shadow-partial': '1' }, credentials: 'same-origin' })
        .then(function (r) { return r.ok ? r.text() : null; })
        .then(function (html) { if (html !== null) { live.innerHTML = html; } })
        .catch(function () {});
    }, 2000);
  }
  var logs = document.getElementById('log-tail');
  if (logs && logs.dataset.src) {
    var follow = function () {
      fetch(logs.dataset.src, { credentials: 'same-origin' }).then(function (r) {
        if (!r.ok || !r.body) { logs.textContent = 'no output yet'; return; }
        var reader = r.body.getReader(), decoder = new TextDecoder(), rest = '';
        logs.textContent = '';
        var pump = function () {
          return reader.read().then(function (chunk) {
            if (chunk.done) { return; }
            rest += decoder.decode(chunk.value, { stream: true });
            var lines = rest.split('\n');
            rest = lines.pop();
            lines.forEach(function (l) {
              try { var o = JSON.parse(l); logs.textContent += o.ts + '  ' + o.line + '\n'; }
              catch (e) {}
            });
            logs.scrollTop = logs.scrollHeight;
            return pump();
          });
        };
        return pump();
      }).catch(function () {});
    };
    follow();
  }
})();
"#;
