//! The proxy core over real sockets: a hyper backend, the proxy served with `serve`, and a real
//! client, all on 127.0.0.1. Nothing sleeps: each step awaits the event it depends on, and every
//! test is bounded by `within` so a buffering bug fails instead of hanging.

#[path = "proxy/harness.rs"]
mod harness;

/// The tests, in a module named `proxy` so `cargo test proxy` selects them.
mod proxy {
    use std::net::SocketAddr;
    use std::sync::{Arc, Mutex};

    use bytes::Bytes;
    use http::uri::Scheme;
    use http::{header, HeaderMap, Method, Request, Response, StatusCode};
    use http_body_util::{BodyExt, Full};
    use hyper_util::rt::TokioIo;
    use shadow_common::proxy::{
        error_response, full, serve, ForwardContext, Forwarder, ProxyBody, ProxyError,
    };
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::sync::{mpsc, oneshot};

    use super::harness::*;

    // ---- streaming -----------------------------------------------------------------------------

    #[tokio::test]
    async fn sse_streams_event_by_event_and_the_token_lives_until_the_end() {
        let (go_tx, go_rx) = oneshot::channel::<()>();
        let go_rx = Arc::new(Mutex::new(Some(go_rx)));
        let backend = start(move |_req, _peer| {
            let go = go_rx.lock().expect("lock").take();
            async move {
                let (tx, rx) = mpsc::channel(4);
                let _ = tx.send(Bytes::from("data: one\n\n")).await;
                tokio::spawn(async move {
                    // The second event only exists once the client has seen the first.
                    if let Some(go) = go {
                        let _ = go.await;
                    }
                    let _ = tx.send(Bytes::from("data: two\n\n")).await;
                });
                Response::builder()
                    .header(header::CONTENT_TYPE, "text/event-stream")
                    .body(ProxyBody::new(ChannelBody(rx).map_err(|n| match n {})))
                    .expect("response")
            }
        })
        .await;
        let (proxy, mut released) = start_proxy(backend).await;

        within("the SSE exchange", async {
            let response = send(proxy, get("/events").body(no_body()).expect("request")).await;
            assert_eq!(response.status(), StatusCode::OK);
            assert_eq!(
                response.headers()[header::CONTENT_TYPE],
                "text/event-stream"
            );
            let mut body = response.into_body();
            let first = body.frame().await.expect("a frame").expect("frame ok");
            assert_eq!(first.into_data().ok(), Some(Bytes::from("data: one\n\n")));
            assert!(
                released.try_recv().is_err(),
                "activity token released while the stream is open"
            );

            let _ = go_tx.send(());
            assert_eq!(text(body).await, "data: two\n\n");
            released.await.expect("token released after the body ended");
        })
        .await;
    }

    #[tokio::test]
    async fn request_body_streams_to_the_backend_before_it_is_complete() {
        let (first_tx, first_rx) = oneshot::channel::<Bytes>();
        let first_tx = Arc::new(Mutex::new(Some(first_tx)));
        let backend = start(move |req, _peer| {
            let first_tx = first_tx.lock().expect("lock").take();
            async move {
                let mut body = req.into_body();
                let first = body.frame().await.expect("frame").expect("frame ok");
                let first = first.into_data().unwrap_or_default();
                if let Some(tx) = first_tx {
                    let _ = tx.send(first.clone());
                }
                let rest = body.collect().await.expect("rest").to_bytes();
                Response::new(full([first, rest].concat()))
            }
        })
        .await;
        let (proxy, _released) = start_proxy(backend).await;

        within("the streamed upload", async {
            let (chunks, rx) = mpsc::channel(4);
            let request = Request::post("/upload")
                .header(header::HOST, "app.example")
                .body(ChannelBody(rx).boxed_unsync())
                .expect("request");
            let response = tokio::spawn(send(proxy, request));

            chunks
                .send(Bytes::from("first "))
                .await
                .expect("send first");
            // The backend holds the first chunk while the client has not sent the rest.
            assert_eq!(first_rx.await.expect("backend got a chunk"), "first ");
            chunks
                .send(Bytes::from("second"))
                .await
                .expect("send second");
            drop(chunks);

            let response = response.await.expect("client task");
            assert_eq!(text(response.into_body()).await, "first second");
        })
        .await;
    }

    #[tokio::test]
    async fn sixty_four_mib_up_and_down_pass_through_whole() {
        let backend = start(|req, _peer| async move {
            if req.method() == Method::POST {
                let received = count_pattern(req.into_body()).await;
                Response::new(full(received.to_string()))
            } else {
                let body = PatternBody::new(64 * MIB, true);
                Response::new(ProxyBody::new(body.map_err(|n| match n {})))
            }
        })
        .await;
        let (proxy, _released) = start_proxy(backend).await;

        within("64 MiB each way", async {
            let upload = Request::post("/upload")
                .header(header::HOST, "app.example")
                .body(PatternBody::new(64 * MIB, false).boxed_unsync())
                .expect("request");
            let response = send(proxy, upload).await;
            assert_eq!(response.status(), StatusCode::OK);
            assert_eq!(text(response.into_body()).await, (64 * MIB).to_string());

            let response = send(proxy, get("/download").body(no_body()).expect("request")).await;
            assert_eq!(
                response.headers()[header::CONTENT_LENGTH],
                (64 * MIB).to_string().as_str()
            );
            assert_eq!(count_pattern(response.into_body()).await, 64 * MIB);
        })
        .await;
    }

    // ---- upstream connections ------------------------------------------------------------------

    /// A backend that answers `/small` with the port of the connection the request came on
    /// (one per upstream connection the proxy made), `/big` with 64 MiB, and `/close` with
    /// `Connection: close`.
    async fn port_backend() -> SocketAddr {
        start(|req, peer| async move {
            match req.uri().path() {
                "/big" => Response::new(ProxyBody::new(
                    PatternBody::new(64 * MIB, true).map_err(|never| match never {}),
                )),
                "/close" => Response::builder()
                    .header(header::CONNECTION, "close")
                    .body(full(peer.port().to_string()))
                    .expect("response"),
                _ => Response::new(full(peer.port().to_string())),
            }
        })
        .await
    }

    #[tokio::test]
    async fn a_kept_connection_carries_the_next_exchange_unless_its_body_was_cut() {
        within("kept connections", async {
            let proxy = start_proxy(port_backend().await).await.0;
            let mut ports = vec![];
            for _ in 0..5 {
                let r = send(proxy, get("/small").body(no_body()).expect("req")).await;
                assert_eq!(r.status(), StatusCode::OK);
                ports.push(text(r.into_body()).await);
            }
            assert!(
                ports.iter().all(|p| *p == ports[0]),
                "one connection: {ports:?}"
            );
            // A response the client stops reading half-way: that connection is not reused (its
            // unread rest would be the next exchange's answer).
            let r = send(proxy, get("/big").body(no_body()).expect("req")).await;
            let mut body = r.into_body();
            let first = body.frame().await.expect("a frame").expect("data");
            assert!(first.data_ref().is_some_and(|d| !d.is_empty()));
            drop(body);
            let after = send(proxy, get("/small").body(no_body()).expect("req")).await;
            assert_eq!(after.status(), StatusCode::OK);
            let port = text(after.into_body()).await;
            assert_ne!(port, ports[0], "a new connection after the cut one");
        })
        .await;
    }

    #[tokio::test]
    async fn a_connection_the_upstream_closes_is_not_reused() {
        within("closed connections", async {
            let proxy = start_proxy(port_backend().await).await.0;
            let mut ports = vec![];
            for _ in 0..3 {
                let r = send(proxy, get("/close").body(no_body()).expect("req")).await;
                assert_eq!(r.status(), StatusCode::OK);
                ports.push(text(r.into_body()).await);
            }
            ports.dedup();
            assert_eq!(ports.len(), 3, "each on a new connection: {ports:?}");
        })
        .await;
    }

    /// What a scripted upstream does with the next request it reads.
    #[derive(Clone, Copy)]
    enum Act {
        /// Writes these bytes and keeps the connection.
        Answer(&'static str),
        /// Writes these bytes and closes the connection.
        AnswerAndClose(&'static str),
        /// Closes the connection without a word (a kept connection closed under the request).
        Close,
    }

    /// An upstream speaking raw HTTP/1.1 from `script`, one act per request read (heads only:
    /// these requests carry no body). Reports each request as (connection number, head).
    async fn scripted(script: &[Act]) -> (SocketAddr, mpsc::UnboundedReceiver<(usize, String)>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let script = Arc::new(Mutex::new(std::collections::VecDeque::from(
            script.to_vec(),
        )));
        let (seen_tx, seen) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            for number in 1.. {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                let (script, seen) = (script.clone(), seen_tx.clone());
                tokio::spawn(async move {
                    loop {
                        let mut head = Vec::new();
                        while !head.ends_with(b"\r\n\r\n") {
                            match stream.read_u8().await {
                                Ok(byte) => head.push(byte),
                                Err(_) => return,
                            }
                        }
                        let _ = seen.send((number, String::from_utf8_lossy(&head).into_owned()));
                        let act = script.lock().expect("script").pop_front();
                        match act {
                            Some(Act::Answer(bytes)) => {
                                stream.write_all(bytes.as_bytes()).await.expect("answer");
                            }
                            Some(Act::AnswerAndClose(bytes)) => {
                                stream.write_all(bytes.as_bytes()).await.expect("answer");
                                return;
                            }
                            Some(Act::Close) | None => return,
                        }
                    }
                });
            }
        });
        (addr, seen)
    }

    /// Sends `method path` through `proxy` on a new client connection: the status and the body
    /// (or the body's error), or the error that came instead of an answer.
    async fn try_exchange(
        proxy: SocketAddr,
        method: Method,
        path: &str,
    ) -> Result<(StatusCode, Result<String, String>), String> {
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, "app.example")
            .header(header::TE, "trailers")
            .body(no_body())
            .expect("request");
        let stream = TcpStream::connect(proxy).await.expect("connect");
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        tokio::spawn(connection);
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map(|c| String::from_utf8_lossy(&c.to_bytes()).into_owned())
            .map_err(|e| e.to_string());
        Ok((status, body))
    }

    async fn exchange(
        proxy: SocketAddr,
        method: Method,
        path: &str,
    ) -> (StatusCode, Result<String, String>) {
        try_exchange(proxy, method, path).await.expect("an answer")
    }

    #[tokio::test]
    async fn bodiless_requests_get_answers_framed_every_way_whole() {
        let (upstream, mut seen) = scripted(&[
            Act::Answer("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirst"),
            Act::Answer(
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: x-sum\r\n\r\n\
                 5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-sum: 11\r\n\r\n",
            ),
            Act::Answer(
                "HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n\
                 HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nhinted",
            ),
            Act::Answer("HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n"),
            Act::Answer("HTTP/1.1 204 No Content\r\n\r\n"),
            Act::AnswerAndClose("HTTP/1.1 200 OK\r\n\r\nuntil the end"),
            Act::Answer("HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nnext"),
        ])
        .await;
        let (proxy, _) = start_proxy(upstream).await;
        within("the exchanges", async {
            let (status, body) = exchange(proxy, Method::GET, "/a?b=c").await;
            assert_eq!(
                (status, body.expect("body").as_str()),
                (StatusCode::OK, "first")
            );
            let (_, body) = exchange(proxy, Method::GET, "/chunked").await;
            // The trailer section is read to its end (the connection is reused below); the
            // `Trailer` header is dropped as hop-by-hop, so the client gets no trailers.
            assert_eq!(body.expect("chunked body"), "hello world");
            let (status, body) = exchange(proxy, Method::GET, "/hints").await;
            assert_eq!(
                (status, body.expect("body").as_str()),
                (StatusCode::OK, "hinted")
            );
            let (status, body) = exchange(proxy, Method::HEAD, "/head").await;
            assert_eq!(
                (status, body.expect("no body").as_str()),
                (StatusCode::OK, "")
            );
            let (status, _) = exchange(proxy, Method::DELETE, "/gone").await;
            assert_eq!(status, StatusCode::NO_CONTENT);
            let (_, body) = exchange(proxy, Method::GET, "/close").await;
            assert_eq!(body.expect("body"), "until the end");
            let (_, body) = exchange(proxy, Method::GET, "/after").await;
            assert_eq!(body.expect("body"), "next");

            let mut heads = vec![];
            while let Ok(one) = seen.try_recv() {
                heads.push(one);
            }
            let connections: Vec<usize> = heads.iter().map(|(n, _)| *n).collect();
            // One kept connection until the close-delimited answer, then a new one.
            assert_eq!(connections, [1, 1, 1, 1, 1, 1, 2], "{heads:?}");
            assert!(
                heads[0].1.starts_with("GET /a?b=c HTTP/1.1\r\n"),
                "{}",
                heads[0].1
            );
            assert!(heads[3].1.starts_with("HEAD /head HTTP/1.1\r\n"));
            assert!(heads[0].1.contains("\r\nx-forwarded-for: 127.0.0.1\r\n"));
            assert!(
                !heads[1].1.to_ascii_lowercase().contains("\r\nte:"),
                "hop-by-hop TE went up"
            );
        })
        .await;
    }

    #[tokio::test]
    async fn a_kept_connection_closed_under_a_get_is_retried_but_a_post_is_not() {
        let (upstream, mut seen) = scripted(&[
            Act::Answer("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\none"),
            Act::Close,
            Act::Answer("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\ntwo"),
            Act::Close,
            Act::Answer("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nthree"),
            // An interim answer says the request was read: a close after it is not retried.
            Act::AnswerAndClose("HTTP/1.1 100 Continue\r\n\r\n"),
        ])
        .await;
        let (proxy, _) = start_proxy(upstream).await;
        within("the exchanges", async {
            assert_eq!(
                exchange(proxy, Method::GET, "/").await.1.expect("body"),
                "one"
            );
            // The kept connection closes as the GET arrives: sent again on a new one.
            assert_eq!(
                exchange(proxy, Method::GET, "/").await.1.expect("body"),
                "two"
            );
            // A POST may have been acted on: not repeated.
            let (status, _) = exchange(proxy, Method::POST, "/count").await;
            assert_eq!(status, StatusCode::BAD_GATEWAY);
            assert_eq!(
                exchange(proxy, Method::GET, "/").await.1.expect("body"),
                "three"
            );
            let (status, _) = exchange(proxy, Method::GET, "/").await;
            assert_eq!(status, StatusCode::BAD_GATEWAY);
            let mut heads = vec![];
            while let Ok((n, head)) = seen.try_recv() {
                heads.push((n, head.lines().next().unwrap_or_default().to_owned()));
            }
            assert_eq!(
                heads,
                [
                    (1, "GET / HTTP/1.1".to_owned()),
                    (1, "GET / HTTP/1.1".to_owned()),
                    (2, "GET / HTTP/1.1".to_owned()),
                    (2, "POST /count HTTP/1.1".to_owned()),
                    (3, "GET / HTTP/1.1".to_owned()),
                    (3, "GET / HTTP/1.1".to_owned()),
                ]
            );
        })
        .await;
    }

    #[tokio::test]
    async fn smuggling_shaped_and_broken_answers_never_reach_the_next_exchange() {
        let huge_head: &'static str = Box::leak(
            format!(
                "HTTP/1.1 200 OK\r\nx-big: {}\r\nContent-Length: 2\r\n\r\nok",
                "v".repeat(70 * 1024)
            )
            .into_boxed_str(),
        );
        let (upstream, mut seen) = scripted(&[
            // Both framings: the coding wins, and the connection is not trusted again.
            Act::Answer(
                "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n\
                 3\r\nabc\r\n0\r\n\r\n",
            ),
            Act::Answer("HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab"),
            Act::AnswerAndClose("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort"),
            Act::Answer("NOT HTTP AT ALL\r\n\r\n"),
            // A head that never ends within the limit (64 KiB): refused, not buffered on.
            Act::Answer(huge_head),
            Act::Answer("HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n"),
            Act::Answer("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"),
        ])
        .await;
        let (proxy, _) = start_proxy(upstream).await;
        within("the exchanges", async {
            let (status, body) = exchange(proxy, Method::GET, "/both").await;
            assert_eq!(
                (status, body.expect("body").as_str()),
                (StatusCode::OK, "abc")
            );
            let (status, _) = exchange(proxy, Method::GET, "/two-lengths").await;
            assert_eq!(status, StatusCode::BAD_GATEWAY);
            // Cut short: the client's answer fails (in its body, or whole when the proxy had
            // not sent its head yet) rather than ending as if whole.
            let outcome = try_exchange(proxy, Method::GET, "/short").await;
            assert!(
                !matches!(outcome, Ok((_, Ok(_)))),
                "a truncated body passed as whole: {outcome:?}"
            );
            let (status, _) = exchange(proxy, Method::GET, "/garbage").await;
            assert_eq!(status, StatusCode::BAD_GATEWAY);
            let (status, _) = exchange(proxy, Method::GET, "/huge-head").await;
            assert_eq!(status, StatusCode::BAD_GATEWAY);
            let (status, _) = exchange(proxy, Method::GET, "/switch").await;
            assert_eq!(status, StatusCode::BAD_GATEWAY);
            let (status, body) = exchange(proxy, Method::GET, "/fine").await;
            assert_eq!(
                (status, body.expect("body").as_str()),
                (StatusCode::OK, "ok")
            );
            let mut connections = vec![];
            while let Ok((n, _)) = seen.try_recv() {
                connections.push(n);
            }
            // Every answer after the first came on a connection of its own.
            assert_eq!(connections, [1, 2, 3, 4, 5, 6, 7], "{connections:?}");
        })
        .await;
    }

    // ---- headers -------------------------------------------------------------------------------

    /// A backend that reports each request's headers and answers with `response_headers`.
    async fn header_backend(
        response_headers: &'static [(&'static str, &'static str)],
    ) -> (SocketAddr, mpsc::UnboundedReceiver<HeaderMap>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let addr = start(move |req, _peer| {
            let _ = tx.send(req.headers().clone());
            async move {
                let mut response = Response::new(full("ok"));
                for (name, value) in response_headers {
                    response.headers_mut().append(
                        header::HeaderName::from_static(name),
                        header::HeaderValue::from_static(value),
                    );
                }
                response
            }
        })
        .await;
        (addr, rx)
    }

    #[tokio::test]
    async fn three_set_cookie_headers_all_survive() {
        let (backend, _seen) = header_backend(&[
            ("set-cookie", "a=1; Path=/"),
            ("set-cookie", "b=2; HttpOnly"),
            ("set-cookie", "c=3; Secure"),
        ])
        .await;
        let (proxy, _released) = start_proxy(backend).await;

        let response = within(
            "the response",
            send(proxy, get("/").body(no_body()).expect("request")),
        )
        .await;
        let cookies: Vec<_> = response
            .headers()
            .get_all(header::SET_COOKIE)
            .iter()
            .collect();
        assert_eq!(cookies, ["a=1; Path=/", "b=2; HttpOnly", "c=3; Secure"]);
    }

    #[tokio::test]
    async fn hop_by_hop_headers_are_dropped_both_ways() {
        let (backend, mut seen) = header_backend(&[
            ("connection", "x-internal"),
            ("x-internal", "backend secret"),
            ("keep-alive", "timeout=5"),
            ("proxy-authenticate", "Basic realm=x"),
            ("trailer", "x-checksum"),
            ("x-end-to-end", "kept"),
        ])
        .await;
        let (proxy, _released) = start_proxy(backend).await;

        let request = get("/")
            .header(header::CONNECTION, "keep-alive, X-Secret")
            .header("x-secret", "client secret")
            .header("keep-alive", "timeout=5")
            .header(header::TE, "trailers")
            .header(header::PROXY_AUTHORIZATION, "Basic Zm9vOmJhcg==")
            .header("proxy-connection", "keep-alive")
            .header("x-end-to-end", "kept")
            .body(no_body())
            .expect("request");
        let response = within("the response", send(proxy, request)).await;

        let upstream = within("the backend's request", seen.recv())
            .await
            .expect("headers");
        for name in [
            "connection",
            "x-secret",
            "keep-alive",
            "te",
            "proxy-authorization",
            "proxy-connection",
        ] {
            assert!(!upstream.contains_key(name), "{name} reached the backend");
        }
        assert_eq!(upstream["x-end-to-end"], "kept");
        assert_eq!(upstream[header::HOST], "app.example");

        let downstream = response.headers();
        for name in [
            "connection",
            "x-internal",
            "keep-alive",
            "proxy-authenticate",
            "trailer",
        ] {
            assert!(!downstream.contains_key(name), "{name} reached the client");
        }
        assert_eq!(downstream["x-end-to-end"], "kept");
    }

    #[tokio::test]
    async fn forwarding_headers_from_an_untrusted_client_are_replaced() {
        let (backend, mut seen) = header_backend(&[]).await;
        let (proxy, _released) = start_proxy(backend).await;

        let request = get("/")
            .header("x-forwarded-for", "203.0.113.7")
            .body(no_body())
            .expect("request");
        within("the response", send(proxy, request)).await;
        let upstream = within("the backend's request", seen.recv())
            .await
            .expect("headers");
        assert_eq!(upstream["x-forwarded-for"], "127.0.0.1");
        assert_eq!(
            upstream["forwarded"],
            "for=127.0.0.1;proto=https;host=\"app.example\""
        );
        assert_eq!(upstream["x-forwarded-proto"], "https");
        assert_eq!(upstream["x-forwarded-host"], "app.example");
        assert_eq!(upstream["x-request-id"], "req-42");
        assert_eq!(upstream[header::HOST], "app.example");

        // The id the proxy logs under replaces the client's (the caller keeps a client's usable
        // id by passing it in the context: `proxy::request_id`).
        let request = get("/")
            .header("x-request-id", "from client")
            .body(no_body())
            .expect("request");
        within("the response", send(proxy, request)).await;
        let upstream = within("the backend's request", seen.recv())
            .await
            .expect("headers");
        assert_eq!(upstream["x-request-id"], "req-42");
        assert_eq!(upstream["x-forwarded-for"], "127.0.0.1");
    }

    // ---- upgrades ------------------------------------------------------------------------------

    /// A backend that switches to a raw echo protocol when asked `Upgrade: echo`.
    async fn echo_backend() -> SocketAddr {
        start(|mut req, _peer| async move {
            let asked = req.headers().get(header::UPGRADE).map(|v| v.as_bytes());
            let connection_upgrade = req
                .headers()
                .get(header::CONNECTION)
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"upgrade"));
            if asked != Some(b"echo".as_slice()) || !connection_upgrade {
                return error_response(StatusCode::BAD_REQUEST, "ask for Upgrade: echo");
            }
            let on_upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                let Ok(upgraded) = on_upgrade.await else {
                    return;
                };
                let (mut reader, mut writer) = tokio::io::split(TokioIo::new(upgraded));
                let _ = tokio::io::copy(&mut reader, &mut writer).await;
                let _ = writer.shutdown().await;
            });
            Response::builder()
                .status(StatusCode::SWITCHING_PROTOCOLS)
                .header(header::UPGRADE, "echo")
                .header(header::CONNECTION, "upgrade")
                .body(full(""))
                .expect("response")
        })
        .await
    }

    /// Reads an HTTP response head byte by byte (nothing follows it until the client writes).
    async fn read_head(stream: &mut TcpStream) -> String {
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let byte = stream.read_u8().await.expect("response head");
            head.push(byte);
        }
        String::from_utf8(head).expect("utf-8 head")
    }

    #[tokio::test]
    async fn a_plain_answer_reaches_the_client_with_its_fields_as_the_app_wrote_them() {
        // Names in their case, in their order, repeats apart, odd spacing: passed unparsed
        // by the lean loop. The same answer over HTTP/1.0 (hyper's server, the header map)
        // carries the same fields.
        const FIELDS: &str = "Content-Type: text/plain\r\nSet-Cookie: a=1\r\n\
                              X-Custom:  two  spaces \r\nset-cookie: b=2\r\n\
                              Content-Length: 5\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\n";
        const ANSWER: &str = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nSet-Cookie: a=1\r\n\
                              X-Custom:  two  spaces \r\nset-cookie: b=2\r\n\
                              Content-Length: 5\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\n\r\nhello";
        let (upstream, _seen) = scripted(&[
            Act::Answer(ANSWER),
            Act::Answer(ANSWER),
            Act::Answer(ANSWER),
        ])
        .await;
        let (proxy, _released) = start_proxy(upstream).await;

        within("the answers", async {
            let mut stream = TcpStream::connect(proxy).await.expect("connect");
            for _ in 0..2 {
                stream
                    .write_all(b"GET /x HTTP/1.1\r\nHost: app.example\r\n\r\n")
                    .await
                    .expect("write request");
                let head = read_head(&mut stream).await;
                assert_eq!(head, format!("HTTP/1.1 200 OK\r\n{FIELDS}\r\n"));
                let mut body = [0; 5];
                stream.read_exact(&mut body).await.expect("body");
                assert_eq!(&body, b"hello");
            }

            let mut stream = TcpStream::connect(proxy).await.expect("connect");
            stream
                .write_all(b"GET /x HTTP/1.0\r\nHost: app.example\r\n\r\n")
                .await
                .expect("write request");
            let mut all = Vec::new();
            stream.read_to_end(&mut all).await.expect("answer");
            let all = String::from_utf8(all).expect("utf-8");
            let (head, body) = all.split_once("\r\n\r\n").expect("a head");
            let mut lines: Vec<String> =
                head.lines().skip(1).map(str::to_ascii_lowercase).collect();
            lines.sort();
            let mut expected: Vec<String> = FIELDS
                .lines()
                .map(|l| {
                    l.to_ascii_lowercase()
                        .replace(":  two  spaces ", ": two  spaces")
                })
                .collect();
            expected.sort();
            assert_eq!(lines, expected, "{all}");
            assert_eq!(body, "hello");
        })
        .await;
    }

    #[tokio::test]
    async fn an_upgrade_tunnels_bytes_both_ways_and_the_token_drops_when_it_closes() {
        let backend = echo_backend().await;
        let (proxy, mut released) = start_proxy(backend).await;

        within("the tunnel", async {
            let mut stream = TcpStream::connect(proxy).await.expect("connect");
            stream
                .write_all(
                    b"GET /tunnel HTTP/1.1\r\nHost: app.example\r\n\
                  Connection: Upgrade\r\nUpgrade: echo\r\n\r\n",
                )
                .await
                .expect("write request");
            let head = read_head(&mut stream).await.to_ascii_lowercase();
            assert!(head.starts_with("http/1.1 101"), "{head}");
            assert!(head.contains("\r\nupgrade: echo\r\n"), "{head}");
            assert!(head.contains("\r\nconnection: upgrade\r\n"), "{head}");

            for message in [b"ping".as_slice(), b"a longer second message"] {
                stream.write_all(message).await.expect("write");
                let mut echoed = vec![0; message.len()];
                stream.read_exact(&mut echoed).await.expect("echo");
                assert_eq!(echoed, message);
            }
            assert!(
                released.try_recv().is_err(),
                "activity token released while the tunnel is open"
            );

            stream.shutdown().await.expect("half-close");
            let mut rest = Vec::new();
            stream.read_to_end(&mut rest).await.expect("read to close");
            assert!(rest.is_empty());
            released
                .await
                .expect("token released when the tunnel closed");
        })
        .await;
    }

    // ---- errors --------------------------------------------------------------------------------

    /// An address nothing listens on.
    async fn dead_address() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        listener.local_addr().expect("local addr")
    }

    #[tokio::test]
    async fn connect_refused_is_retryable_and_hands_the_request_back() {
        let live = start(|req, _peer| async move {
            let body = req.into_body().collect().await.expect("body").to_bytes();
            Response::new(full(body))
        })
        .await;
        let dead = dead_address().await;
        let (errors_tx, mut errors) = mpsc::unbounded_channel::<ProxyError>();
        let forwarder = Forwarder::default();
        let proxy = start(move |req, peer| {
            let forwarder = forwarder.clone();
            let errors = errors_tx.clone();
            async move {
                let retry = req.uri().path() == "/retry";
                let ctx = ForwardContext::new(peer, Scheme::HTTP, "req-7");
                let failure = match forwarder.try_forward(req, dead, ctx).await {
                    Ok(_) => return error_response(StatusCode::IM_A_TEAPOT, "dead answered"),
                    Err(failure) => failure,
                };
                let response = match (retry, failure.unsent) {
                    (true, Some(unsent)) => forwarder
                        .forward(unsent.request, live, unsent.ctx)
                        .await
                        .unwrap_or_else(|error| error.to_response()),
                    _ => failure.error.to_response(),
                };
                let _ = errors.send(failure.error);
                response
            }
        })
        .await;

        within("both requests", async {
            let response = send(proxy, get("/").body(no_body()).expect("request")).await;
            assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
            let body = text(response.into_body()).await;
            assert!(
                !body.contains("127.0.0.1"),
                "internal detail leaked: {body}"
            );
            let error = errors.recv().await.expect("error");
            assert!(
                matches!(error, ProxyError::Connect { upstream, .. } if upstream == dead),
                "{error:?}"
            );
            assert!(error.is_retryable());
            assert!(error.to_string().contains("refused"), "{error}");

            let request = Request::post("/retry")
                .header(header::HOST, "app.example")
                .body(Full::new(Bytes::from("sent twice, delivered once")).boxed_unsync())
                .expect("request");
            let response = send(proxy, request).await;
            assert_eq!(response.status(), StatusCode::OK);
            assert_eq!(
                text(response.into_body()).await,
                "sent twice, delivered once"
            );
        })
        .await;
    }

    // ---- serve ---------------------------------------------------------------------------------

    #[tokio::test]
    async fn serve_stops_accepting_and_closes_idle_connections_on_shutdown() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(serve(
            listener,
            |_req, peer: SocketAddr| async move { Response::new(full(peer.ip().to_string())) },
            async {
                let _ = stopped.await;
            },
        ));

        within("shutdown", async {
            let stream = TcpStream::connect(addr).await.expect("connect");
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake::<_, ClientBody>(TokioIo::new(stream))
                    .await
                    .expect("handshake");
            let connection = tokio::spawn(connection);
            let response = sender
                .send_request(get("/").body(no_body()).expect("request"))
                .await
                .expect("response");
            assert_eq!(text(response.into_body()).await, "127.0.0.1");

            let _ = stop.send(());
            server.await.expect("serve returned");
            // The idle keep-alive connection was closed, and nobody accepts any more.
            connection
                .await
                .expect("client connection")
                .expect("clean close");
            assert!(TcpStream::connect(addr).await.is_err());
        })
        .await;
    }
}
