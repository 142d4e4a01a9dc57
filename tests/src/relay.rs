//! A TCP relay on loopback between a program and the master, which a fault test switches
//! between passing traffic, refusing it and blackholing it, and whose target can move (a master
//! restarted on another port). It reports every HTTP request line it passes on, so a test can
//! place a cut at a chosen point of a node's renewal period.

use std::{net::SocketAddr, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{tcp::OwnedReadHalf, tcp::OwnedWriteHalf, TcpListener, TcpStream},
    sync::{broadcast, watch},
    task::JoinHandle,
    time::Instant,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Bytes flow both ways.
    Pass,
    /// New connections are reset at once and open ones are reset: fast failures.
    Refuse,
    /// Connections are accepted and open ones kept, but nothing flows either way: calls hang
    /// until their own timeout. Healing closes the connections that were held.
    Blackhole,
}

pub struct Relay {
    pub addr: SocketAddr,
    mode: watch::Sender<Mode>,
    target: watch::Sender<SocketAddr>,
    requests: broadcast::Sender<(Instant, String)>,
    accept: JoinHandle<()>,
}

impl Relay {
    /// A relay on a free loopback port, passing traffic to `target`.
    pub async fn start(target: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind relay");
        let addr = listener.local_addr().expect("relay addr");
        let (mode, _) = watch::channel(Mode::Pass);
        let (target, _) = watch::channel(target);
        let (requests, _) = broadcast::channel(1024);
        let accept = tokio::spawn(accept_loop(
            listener,
            mode.subscribe(),
            target.subscribe(),
            requests.clone(),
        ));
        Relay {
            addr,
            mode,
            target,
            requests,
            accept,
        }
    }

    /// `http://<relay address>`, for a program's master URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }

    /// Sends new connections to `target` from now on.
    pub fn retarget(&self, target: SocketAddr) {
        self.target.send_replace(target);
    }

    /// Request lines (`POST /nodes/x/renew HTTP/1.1`) as they pass, with when.
    pub fn requests(&self) -> broadcast::Receiver<(Instant, String)> {
        self.requests.subscribe()
    }

    /// Waits (at most `limit`) for the next request whose line contains `needle` and returns
    /// when it passed.
    pub async fn next_request(&self, needle: &str, limit: Duration) -> Instant {
        let mut rx = self.requests();
        tokio::time::timeout(limit, async {
            loop {
                match rx.recv().await {
                    Ok((at, line)) if line.contains(needle) => return at,
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => panic!("relay stopped"),
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no request with {needle:?} passed within {limit:?}"))
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.accept.abort();
        // Open connections end when their pumps see the mode channel close.
    }
}

async fn accept_loop(
    listener: TcpListener,
    mode: watch::Receiver<Mode>,
    target: watch::Receiver<SocketAddr>,
    requests: broadcast::Sender<(Instant, String)>,
) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        let _ = client.set_nodelay(true);
        match *mode.borrow() {
            Mode::Refuse => {
                reset(client);
                continue;
            }
            Mode::Blackhole | Mode::Pass => {}
        }
        let mode = mode.clone();
        let to = *target.borrow();
        let requests = requests.clone();
        tokio::spawn(async move {
            let mut m = mode.clone();
            if *m.borrow() == Mode::Blackhole {
                // Accepted, never answered; closed when the cut heals.
                let _ = m.wait_for(|x| *x != Mode::Blackhole).await;
                return;
            }
            let Ok(upstream) = TcpStream::connect(to).await else {
                reset(client);
                return;
            };
            let _ = upstream.set_nodelay(true);
            relay(client, upstream, mode, requests).await;
        });
    }
}

/// Closes with a reset (SO_LINGER 0), as a refused link does.
fn reset(s: TcpStream) {
    let _ = s.set_zero_linger();
    drop(s);
}

async fn relay(
    client: TcpStream,
    upstream: TcpStream,
    mode: watch::Receiver<Mode>,
    requests: broadcast::Sender<(Instant, String)>,
) {
    let (cr, cw) = client.into_split();
    let (ur, uw) = upstream.into_split();
    tokio::select! {
        () = pump(cr, uw, mode.clone(), Some(requests)) => {}
        () = pump(ur, cw, mode, None) => {}
    }
}

/// Copies one direction while the mode is `Pass`; on `Refuse` returns (the connection is reset),
/// on `Blackhole` stops copying and holds on until the cut heals.
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    mut mode: watch::Receiver<Mode>,
    requests: Option<broadcast::Sender<(Instant, String)>>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = tokio::select! {
            r = from.read(&mut buf) => match r {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            _ = mode.wait_for(|m| *m != Mode::Pass) => 0,
        };
        let now = *mode.borrow();
        if now != Mode::Pass {
            if now == Mode::Blackhole {
                let _ = mode.wait_for(|m| *m != Mode::Blackhole).await;
            }
            // Both sides see a reset, as on a refused or long-dead link.
            let _ = AsRef::<TcpStream>::as_ref(&from).set_zero_linger();
            let _ = AsRef::<TcpStream>::as_ref(&to).set_zero_linger();
            return;
        }
        if let Some(tx) = &requests {
            if let Some(line) = request_line(&buf[..n]) {
                let _ = tx.send((Instant::now(), line));
            }
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// The first line of a chunk that starts an HTTP request, if it does.
fn request_line(chunk: &[u8]) -> Option<String> {
    let end = chunk.iter().position(|b| *b == b'\r')?;
    let line = std::str::from_utf8(&chunk[..end]).ok()?;
    let method = line.split(' ').next()?;
    ["GET", "POST", "PUT", "DELETE", "PATCH"]
        .contains(&method)
        .then(|| line.to_string())
}
