//! `counter`: the app Shadow's tests run in a container.
//!
//! A small hyper 1 server that exercises what the proxies and the node must get right: state in
//! `/data` that survives a stop, streamed bodies both ways, WebSocket and SSE, several `Set-Cookie`
//! headers, and starts that are slow or fail. Built as a fully static binary so the image can be
//! `FROM scratch` (see `Dockerfile` beside `Cargo.toml`).
//!
//! Environment:
//! - `PORT` (default 8000): listens on `0.0.0.0:$PORT`.
//! - `DATA_DIR` (default `/data`): where the count is kept, in the file `count`.
//! - `START_DELAY_MS` (default 0): sleep this long before binding, a slow start.
//! - `FAIL_START=1`: print an error line to stderr and exit with status 1 at once, a failing start.
//! - `HEALTHZ_FAIL=1`: `/healthz` answers 503.
//!
//! Routes are listed in [`routes`]. On SIGTERM (or SIGINT) it waits for a count write in flight,
//! then exits with status 0.
//!
//! Modules: [`counter`] (the persisted count), [`routes`] (the HTTP handlers).

mod counter;
mod routes;

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};

use crate::counter::Counter;
use crate::routes::State;

/// The app's settings, read once from the environment.
struct Config {
    port: u16,
    data_dir: PathBuf,
    start_delay: Duration,
    fail_start: bool,
    healthz_fail: bool,
}

impl Config {
    fn from_env() -> Result<Self, String> {
        let port = match std::env::var("PORT") {
            Ok(v) => v
                .parse()
                .map_err(|e| format!("PORT={v:?} is not a port: {e}"))?,
            Err(_) => 8000,
        };
        let start_delay_ms: u64 = match std::env::var("START_DELAY_MS") {
            Ok(v) => v.parse().map_err(|e| {
                format!("START_DELAY_MS={v:?} is not a number of milliseconds: {e}")
            })?,
            Err(_) => 0,
        };
        Ok(Self {
            port,
            data_dir: std::env::var_os("DATA_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("/data")),
            start_delay: Duration::from_millis(start_delay_ms),
            fail_start: flag("FAIL_START"),
            healthz_fail: flag("HEALTHZ_FAIL"),
        })
    }
}

fn flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
}

/// Prints a line to stdout. Unlike `println!` it does not panic when stdout is gone (a closed
/// pipe): losing a log line must not change how the app behaves.
pub fn log(line: std::fmt::Arguments) {
    let _ = writeln!(std::io::stdout(), "{line}");
}

/// Prints a line to stderr, ignoring a closed stderr like [`log`].
pub fn log_err(line: std::fmt::Arguments) {
    let _ = writeln!(std::io::stderr(), "counter: {line}");
}

fn fail(message: &str) -> ! {
    log_err(format_args!("error: {message}"));
    std::process::exit(1)
}

#[tokio::main]
async fn main() {
    let config = Config::from_env().unwrap_or_else(|e| fail(&e));
    if config.fail_start {
        fail("FAIL_START=1 is set, so this start fails on purpose");
    }
    if !config.start_delay.is_zero() {
        tokio::time::sleep(config.start_delay).await;
    }
    let counter = Counter::load(config.data_dir.clone()).unwrap_or_else(|e| fail(&e));
    let addr = SocketAddr::from(([0, 0, 0, 0], config.port));
    let listener = TcpListener::bind(addr)
        .await
        .unwrap_or_else(|e| fail(&format!("cannot listen on {addr}: {e}")));
    // The bound address, not the asked one: with PORT=0 this line tells tests the port.
    let bound = listener.local_addr().unwrap_or(addr);
    log(format_args!(
        "counter listening on {bound} (data in {}, count {})",
        config.data_dir.display(),
        counter.get().await
    ));
    let state = Arc::new(State {
        counter,
        healthz_fail: config.healthz_fail,
    });
    serve(listener, state).await;
}

/// Accepts connections until SIGTERM or SIGINT, then exits once no count write is in flight.
async fn serve(listener: TcpListener, state: Arc<State>) {
    let (mut term, mut int) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(term), Ok(int)) => (term, int),
        (Err(e), _) | (_, Err(e)) => fail(&format!("cannot install signal handlers: {e}")),
    };
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    // Out of file descriptors and the like: keep serving the connections we have.
                    Err(e) => {
                        log_err(format_args!("accept failed: {e}"));
                        continue;
                    }
                };
                let state = state.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| routes::handle(req, state.clone()));
                    // A client that goes away mid-request is normal here; nothing to report.
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .with_upgrades()
                        .await;
                });
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    // Open streams (SSE forever, WebSocket) would hold a graceful drain open indefinitely, and the
    // count is fsynced on every write, so exiting once no write is in flight loses nothing.
    let count = state.counter.quiesce().await;
    log(format_args!("counter stopping (count {count})"));
    std::process::exit(0);
}
