//! Readiness: a started container is ready when it answered an HTTP request, not when its port
//! accepts connections (Docker's port proxy accepts before the app listens).

use std::{net::SocketAddr, time::Duration};

use http_body_util::Empty;
use hyper::{body::Bytes, Request};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// One probe: `GET path` (or `/`), ready if any HTTP response comes back — a 2xx/3xx when the
/// task names a health path.
pub async fn probe(addr: SocketAddr, path: Option<&str>, timeout: Duration) -> bool {
    tokio::time::timeout(timeout, probe_once(addr, path))
        .await
        .unwrap_or(false)
}

async fn probe_once(addr: SocketAddr, path: Option<&str>) -> bool {
    let Ok(stream) = TcpStream::connect(addr).await else {
        return false;
    };
    let Ok((mut sender, conn)) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
    else {
        return false;
    };
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let Ok(req) = Request::get(path.unwrap_or("/"))
        .header("host", "localhost")
        .header("user-agent", "shadow-nodeproxy-readiness")
        .body(Empty::<Bytes>::new())
    else {
        return false;
    };
    match sender.send_request(req).await {
        Ok(resp) if path.is_some() => resp.status().is_success() || resp.status().is_redirection(),
        Ok(_) => true,
        Err(_) => false,
    }
}

/// How often a start that is not ready yet asks Docker whether the container still runs.
pub const INSPECT_EVERY: Duration = Duration::from_millis(100);

/// The TCP ports the process `pid`'s network namespace listens on, from `/proc/<pid>/net/tcp`
/// and `tcp6`; `None` when they cannot be read (the node may not see the app's processes).
pub fn listening_ports(pid: u32) -> Option<std::collections::BTreeSet<u16>> {
    let mut ports = std::collections::BTreeSet::new();
    let mut read_any = false;
    for file in ["tcp", "tcp6"] {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/{file}")) else {
            continue;
        };
        read_any = true;
        ports.extend(parse_listening(&text));
    }
    read_any.then_some(ports)
}

/// Ports in LISTEN state (`0A`) in a `/proc/net/tcp`-style table.
fn parse_listening(table: &str) -> impl Iterator<Item = u16> + '_ {
    table.lines().skip(1).filter_map(|line| {
        let mut cols = line.split_whitespace();
        let local = cols.nth(1)?;
        let state = cols.nth(1)?;
        if state != "0A" {
            return None;
        }
        u16::from_str_radix(local.rsplit(':').next()?, 16).ok()
    })
}

#[cfg(test)]
mod tests {
    use shadow_common::backoff::Backoff;

    use super::*;

    #[test]
    fn probes_start_at_a_millisecond_and_back_off_to_the_interval() {
        // The waits wait_ready uses: within 20 ms of the start an app is probed six times.
        let mut b = Backoff::new(Duration::from_millis(1), Duration::from_millis(50));
        let mut at = 0;
        let mut probes = vec![0];
        while at < 20 {
            at += b.next_delay().as_millis() as u64;
            probes.push(at);
        }
        assert_eq!(probes, [0, 1, 3, 7, 15, 31]);
    }

    #[test]
    fn listening_ports_come_from_the_listen_rows() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:1F91 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0
   1: 0100007F:1F90 0100007F:A2C4 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0 20 4 30 10 -1";
        assert_eq!(parse_listening(table).collect::<Vec<_>>(), vec![8081]);
    }
}
