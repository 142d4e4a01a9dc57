//! One worker thread's connections to its upstreams: HTTP/1.1 keep-alive connections, each
//! carrying one exchange at a time and kept for the next once its response has been read to
//! the end.
//!
//! This replaces hyper-util's pooled client on the proxies' hot path. That client is built for
//! any executor and any thread (a shared pool behind a mutex, checkout futures, keys made from
//! URIs, a background idle sweep); here each worker is a single-threaded runtime with its own
//! pool, so a checkout is a pop from a short list and a return is a push.
//!
//! A connection goes back to the pool only when its response body ended; one whose body was
//! dropped half-read, that was upgraded (101), or that the upstream closed is not reused.
//!
//! Two kinds of connection are kept: hyper's (for requests with a body, and upgrades) and plain
//! sockets for [`super::exchange`], which drives a bodiless exchange in the request's own task.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use foldhash::{HashMap, HashMapExt};
use hyper::{body::Incoming, client::conn::http1, Request, Response};
use hyper_util::rt::TokioIo;
use tokio::{net::TcpStream, time::Instant};

use super::body::Outbound;
use super::exchange::Conn;

type Sender = http1::SendRequest<Outbound>;

/// Why an exchange failed.
pub(crate) enum SendError {
    /// No connection could be made: the request never left, and is handed back.
    Connect(std::io::Error, Box<Request<Outbound>>),
    /// The exchange failed after the request was (or may have been) sent.
    Exchange(hyper::Error),
}

struct Idle {
    sender: Sender,
    since: Instant,
}

/// A plain connection waiting for its next exchange.
struct IdleConn {
    conn: Conn,
    since: Instant,
}

/// One thread's connections, by upstream.
pub(crate) struct Pool {
    idle: Mutex<HashMap<SocketAddr, Vec<Idle>>>,
    conns: Mutex<HashMap<SocketAddr, Vec<IdleConn>>>,
    /// When both lists were last swept of expired and closed connections (see [`Pool::sweep`]).
    swept: Mutex<Instant>,
    connect_timeout: Duration,
    idle_timeout: Duration,
    max_idle: usize,
}

/// A connection lent to one exchange; given back with [`Lent::give_back`] once the response
/// body has ended, dropped (and the connection with it) otherwise.
pub(crate) struct Lent {
    pool: Arc<Pool>,
    upstream: SocketAddr,
    sender: Sender,
}

impl Lent {
    /// The exchange is over and the connection can carry the next one.
    pub(crate) fn give_back(self) {
        let Lent {
            pool,
            upstream,
            sender,
        } = self;
        if sender.is_closed() {
            return;
        }
        // Not checked for readiness here: the connection's task may not have seen the end of
        // the exchange yet. The checkout takes only ready ones.
        let now = Instant::now();
        let mut idle = pool.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = idle.entry(upstream).or_default();
        if list.len() < pool.max_idle {
            list.push(Idle { sender, since: now });
        }
        drop(idle);
        pool.sweep_if_due(now);
    }
}

impl Pool {
    pub(crate) fn new(connect_timeout: Duration, idle_timeout: Duration, max_idle: usize) -> Self {
        Self {
            idle: Mutex::new(HashMap::new()),
            conns: Mutex::new(HashMap::new()),
            swept: Mutex::new(Instant::now()),
            connect_timeout,
            idle_timeout,
            max_idle,
        }
    }

    /// The most recently used connection to `upstream` that can take a request now. One given
    /// back a moment ago may not be ready yet (its task has not seen the end of the exchange):
    /// it stays for the next checkout. Closed ones and ones idle too long are dropped (the node
    /// proxy closes idle connections after 30 s: not worth the race).
    fn checkout(&self, upstream: SocketAddr) -> Option<Sender> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = idle.get_mut(&upstream)?;
        list.retain(|c| !c.sender.is_closed() && c.since.elapsed() < self.idle_timeout);
        let i = list.iter().rposition(|c| c.sender.is_ready())?;
        Some(list.remove(i).sender)
    }

    /// The most recently used plain connection to `upstream` that can take a request now; ones
    /// idle too long, closed, or with unasked bytes waiting are dropped on the way.
    pub(crate) fn checkout_conn(&self, upstream: SocketAddr) -> Option<Conn> {
        let mut conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        let list = conns.get_mut(&upstream)?;
        while let Some(idle) = list.pop() {
            if idle.since.elapsed() < self.idle_timeout && idle.conn.is_usable() {
                return Some(idle.conn);
            }
        }
        None
    }

    /// Keeps `conn`, whose last exchange ended cleanly, for the next one to `upstream`.
    pub(crate) fn give_back_conn(&self, upstream: SocketAddr, conn: Conn) {
        // One clock read serves both the entry and the sweep's check.
        let now = Instant::now();
        let mut conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        let list = conns.entry(upstream).or_default();
        if list.len() < self.max_idle {
            list.push(IdleConn { conn, since: now });
        }
        drop(conns);
        self.sweep_if_due(now);
    }

    /// [`Pool::sweep`], at most once per idle timeout; `now` is the time of the call.
    fn sweep_if_due(&self, now: Instant) {
        {
            let Ok(mut swept) = self.swept.try_lock() else {
                return;
            };
            if now.saturating_duration_since(*swept) < self.idle_timeout {
                return;
            }
            *swept = now;
        }
        self.sweep();
    }

    /// Drops every kept connection that expired or that its upstream closed, and the lists of
    /// upstreams left with none. Checkouts only look at one upstream's list; without this, the
    /// connections to an app that stopped (the node gives each run a new port) would stay
    /// open (in CLOSE_WAIT, holding a descriptor) for as long as the process lives.
    fn sweep(&self) {
        let fresh = |since: &Instant| since.elapsed() < self.idle_timeout;
        {
            let mut conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
            conns.retain(|_, list| {
                list.retain(|c| fresh(&c.since) && c.conn.is_usable());
                !list.is_empty()
            });
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.retain(|_, list| {
            list.retain(|c| fresh(&c.since) && !c.sender.is_closed());
            !list.is_empty()
        });
    }

    /// How many connections are kept, of both kinds, and for how many upstreams.
    #[cfg(test)]
    fn kept(&self) -> (usize, usize) {
        let conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let count = conns.values().map(Vec::len).sum::<usize>()
            + idle.values().map(Vec::len).sum::<usize>();
        (count, conns.len() + idle.len())
    }

    /// A new TCP connection to `upstream`, within the connect timeout, with Nagle off.
    pub(crate) async fn connect_tcp(&self, upstream: SocketAddr) -> std::io::Result<TcpStream> {
        let stream = tokio::time::timeout(self.connect_timeout, TcpStream::connect(upstream))
            .await
            .map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no connection within {:?}", self.connect_timeout),
                )
            })??;
        stream.set_nodelay(true)?;
        Ok(stream)
    }

    async fn connect(&self, upstream: SocketAddr) -> std::io::Result<Sender> {
        let stream = self.connect_tcp(upstream).await?;
        let (sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(std::io::Error::other)?;
        // On this worker's own runtime: the connection's task and its requests share a thread.
        tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
        });
        Ok(sender)
    }

    /// Sends `req` to `upstream` on a kept connection, or a new one. A kept connection found
    /// closed before the request left is replaced by a new one, as often as it takes.
    pub(crate) async fn send(
        self: &Arc<Self>,
        upstream: SocketAddr,
        mut req: Request<Outbound>,
    ) -> Result<(Response<Incoming>, Lent), SendError> {
        loop {
            let (mut sender, fresh) = match self.checkout(upstream) {
                Some(s) => (s, false),
                // Boxed: connecting is the rare path, and its future would otherwise make
                // every exchange's future (copied on each `.await` up the chain) larger.
                None => match Box::pin(self.connect(upstream)).await {
                    Ok(s) => (s, true),
                    Err(e) => return Err(SendError::Connect(e, Box::new(req))),
                },
            };
            if fresh && sender.ready().await.is_err() {
                return Err(SendError::Connect(
                    std::io::Error::other("the upstream closed the new connection"),
                    Box::new(req),
                ));
            }
            match sender.try_send_request(req).await {
                Ok(response) => {
                    let lent = Lent {
                        pool: self.clone(),
                        upstream,
                        sender,
                    };
                    return Ok((response, lent));
                }
                Err(mut e) => match e.take_message() {
                    // Never sent: a kept connection went away under us. Try another.
                    Some(unsent) if !fresh => req = unsent,
                    // Never sent on a new one: as good as a failed connect (safe to retry).
                    Some(unsent) => {
                        return Err(SendError::Connect(
                            std::io::Error::other(e.into_error()),
                            Box::new(unsent),
                        ))
                    }
                    None => return Err(SendError::Exchange(e.into_error())),
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two plain connections to a listener on 127.0.0.1, and the listener's address.
    async fn two_connections() -> (SocketAddr, Conn, Conn) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        let a = TcpStream::connect(addr).await.expect("connect");
        let b = TcpStream::connect(addr).await.expect("connect");
        // The accepted ends are dropped with the listener: both connections are closed by
        // their peer, as an app's are when its container stops.
        (addr, Conn::new(a), Conn::new(b))
    }

    #[tokio::test(start_paused = true)]
    async fn connections_to_an_upstream_that_went_away_are_swept() {
        let pool = Pool::new(Duration::from_secs(5), Duration::from_secs(20), 64);
        let (gone, a, b) = two_connections().await;
        pool.give_back_conn(gone, a);
        pool.give_back_conn(gone, b);
        assert_eq!(pool.kept(), (2, 1));

        // Traffic to another upstream only, past the idle timeout: the first one's list goes,
        // although nothing asked for it again.
        tokio::time::advance(Duration::from_secs(21)).await;
        let (other, c, _d) = two_connections().await;
        // Its peer closed it too; given back once the reactor has seen that.
        c.readable().await;
        pool.give_back_conn(other, c);
        assert_eq!(
            pool.kept(),
            (0, 0),
            "expired ones and the new closed one swept"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_sweep_runs_at_most_once_per_idle_timeout() {
        let pool = Pool::new(Duration::from_secs(5), Duration::from_secs(20), 64);
        let (up, a, b) = two_connections().await;
        pool.give_back_conn(up, a);
        tokio::time::advance(Duration::from_secs(10)).await;
        pool.give_back_conn(up, b);
        // Not due yet: both are kept, whatever their peer did.
        assert_eq!(pool.kept(), (2, 1));
    }
}
