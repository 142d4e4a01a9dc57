//! Runs the `counter` binary and talks to it over real sockets: the routes whose behaviour is
//! easy to get subtly wrong (WebSocket upgrade, streaming, signals).

use std::process::Stdio;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::Message;

/// Starts the app on an ephemeral port and returns it with its address, read from its log line.
async fn start(data_dir: &std::path::Path) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_counter"))
        .env("PORT", "0")
        .env("DATA_DIR", data_dir)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = lines.next_line().await.unwrap().unwrap();
    let addr = line
        .strip_prefix("counter listening on 0.0.0.0:")
        .and_then(|rest| rest.split(' ').next())
        .map(|port| format!("127.0.0.1:{port}"))
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
    (child, addr)
}

async fn get(addr: &str, path: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response
}

#[tokio::test]
async fn websocket_echo_count_and_sigterm() {
    let dir = std::env::temp_dir().join(format!("counter-app-test-{}", std::process::id()));
    let (mut child, addr) = start(&dir).await;

    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
        .await
        .unwrap();
    ws.send(Message::text("hello")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("hello"));
    ws.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::binary(vec![1u8, 2, 3])
    );
    ws.close(None).await.unwrap();

    assert!(get(&addr, "/count?inc").await.ends_with("\r\n\r\n1\n"));
    let sse = get(&addr, "/sse?n=2").await;
    assert!(sse.contains("text/event-stream"), "{sse}");
    assert!(
        sse.contains("data: 0\n\n") && sse.contains("data: 1\n\n"),
        "{sse}"
    );

    // An open forever-SSE stream must not hold the exit up.
    let mut forever = TcpStream::connect(&addr).await.unwrap();
    forever
        .write_all(b"GET /sse HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut first = [0u8; 64];
    let _ = forever.read(&mut first).await.unwrap();

    let pid = child.id().unwrap().to_string();
    let killed = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap();
    assert!(killed.success());
    let status = tokio::time::timeout(Duration::from_secs(5), child.wait())
        .await
        .expect("the app did not exit within 5 s of SIGTERM")
        .unwrap();
    assert!(status.success(), "{status}");
    assert_eq!(std::fs::read_to_string(dir.join("count")).unwrap(), "1\n");
    std::fs::remove_dir_all(&dir).unwrap();
}
