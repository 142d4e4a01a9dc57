//! [`DockerRuntime`] against the real Docker daemon, with the test app's image.
//!
//! Every container a test makes has a unique name and is registered with a [`Cleanup`] guard
//! first, which removes it even when the test fails, so the tests can run in parallel and leave
//! nothing behind.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use bollard::models::ContainerCreateBody;
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, InspectContainerOptions, KillContainerOptionsBuilder,
};
use bollard::Docker;
use shadow_nodeproxy::runtime::{ContainerRuntime, ContainerSpec, DockerRuntime, RuntimeError};
use shadow_tests::image::counter_image;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// How long a container may take to answer its first request.
const READY_DEADLINE: Duration = Duration::from_secs(20);

/// Removes the named containers when dropped, even during a panic. Synchronous on purpose:
/// a `Drop` cannot await, and the docker CLI needs no runtime.
#[derive(Default)]
struct Cleanup(Vec<String>);

impl Cleanup {
    /// Registers a name before the container exists, so a half-made one is removed too.
    fn name(&mut self, prefix: &str) -> String {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let name = format!("shadow-test-{prefix}-{}", &id[..12]);
        self.0.push(name.clone());
        name
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for name in &self.0 {
            let _ = std::process::Command::new("docker")
                .args(["rm", "--force", name])
                .output();
        }
    }
}

async fn runtime() -> DockerRuntime {
    DockerRuntime::connect(None)
        .await
        .expect("Docker is reachable")
}

async fn bollard() -> Docker {
    Docker::connect_with_local_defaults()
        .unwrap()
        .negotiate_version()
        .await
        .unwrap()
}

/// One HTTP/1.1 request over a fresh connection: the status and body, or `None` when nothing
/// answered (connection refused, or closed without a response, which is what Docker's port
/// proxy does while the app is not listening yet).
async fn http(addr: SocketAddr, method: &str, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(addr).await.ok()?;
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    let status = response.split(' ').nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n")?.1.to_owned();
    Some((status, body))
}

/// Polls `GET path` until it answers 200, and returns how long that took.
async fn wait_until_ok(addr: SocketAddr, path: &str) -> Duration {
    let start = Instant::now();
    loop {
        if let Some((200, _)) = http(addr, "GET", path).await {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < READY_DEADLINE,
            "{addr}{path} did not answer 200 within {READY_DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn a_started_container_answers_is_labelled_limited_and_goes_away() {
    let image = counter_image().await.unwrap();
    let rt = runtime().await;
    let docker = bollard().await;
    let mut cleanup = Cleanup::default();
    let name = cleanup.name("runtime");
    let foreign = cleanup.name("foreign");
    let unlabelled = cleanup.name("unlabelled");
    let node = format!("node-{name}");

    // A locally built image needs no pull (there is no registry here to pull from).
    rt.ensure_image(&image, false).await.unwrap();

    let data = tempfile::tempdir().unwrap();
    // Root in the container has no CAP_DAC_OVERRIDE: the volume must be writable as it is.
    std::fs::set_permissions(data.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let mut spec = ContainerSpec::new(&name, &image);
    spec.labels.insert("shadow.node".into(), node.clone());
    spec.labels.insert("shadow.task".into(), "counter".into());
    spec.env.insert("GREETING".into(), "hello".into());
    spec.data_mount = Some(data.path().to_path_buf());
    spec.memory_mb = Some(64);
    spec.cpus = Some(0.5);
    spec.pids = Some(64);

    let start = Instant::now();
    let running = rt.create_and_start(&spec).await.unwrap();
    let started = start.elapsed();
    let answered = wait_until_ok(running.host_addr, "/healthz").await;
    eprintln!(
        "create+start took {started:?}, first 200 after {:?} in all",
        started + answered
    );
    assert_eq!(running.name, name);
    assert_eq!(running.host_addr.ip().to_string(), "127.0.0.1");
    assert!(rt.is_running(&running.id).await.unwrap());

    // The volume is the bind mount: the app's write lands in our directory.
    assert_eq!(
        http(running.host_addr, "POST", "/count").await,
        Some((200, "1\n".to_owned()))
    );
    assert_eq!(
        std::fs::read_to_string(data.path().join("count")).unwrap(),
        "1\n"
    );

    // What Docker was told, as it reports it.
    let inspect = docker
        .inspect_container(&running.id, None::<InspectContainerOptions>)
        .await
        .unwrap();
    let host = inspect.host_config.unwrap();
    assert_eq!(host.memory, Some(64 * 1024 * 1024));
    assert_eq!(host.nano_cpus, Some(500_000_000));
    assert_eq!(host.pids_limit, Some(64));
    assert_eq!(host.privileged, Some(false));
    assert_eq!(host.cap_drop, Some(vec!["ALL".to_owned()]));
    assert_eq!(
        host.security_opt,
        Some(vec!["no-new-privileges".to_owned()])
    );
    let bindings = host.port_bindings.unwrap()["8000/tcp"].clone().unwrap();
    assert_eq!(bindings[0].host_ip.as_deref(), Some("127.0.0.1"));
    let published = inspect.network_settings.unwrap().ports.unwrap()["8000/tcp"]
        .clone()
        .unwrap();
    assert!(
        published
            .iter()
            .all(|binding| binding.host_ip.as_deref() == Some("127.0.0.1")),
        "published beyond loopback: {published:?}"
    );
    let config = inspect.config.unwrap();
    assert!(config.env.unwrap().contains(&"GREETING=hello".to_owned()));

    // The same name again is refused, and the running container is untouched.
    let err = rt.create_and_start(&spec).await.unwrap_err();
    assert!(matches!(err, RuntimeError::NameInUse { .. }), "{err}");
    assert!(rt.is_running(&running.id).await.unwrap());

    // Someone else's containers: one with our label key but another value, one with no labels.
    let labels = HashMap::from([("shadow.node".to_owned(), "another-node".to_owned())]);
    for (name, labels) in [(&foreign, Some(labels)), (&unlabelled, None)] {
        docker
            .create_container(
                Some(CreateContainerOptionsBuilder::new().name(name).build()),
                ContainerCreateBody {
                    image: Some(image.clone()),
                    labels,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
    }

    let listed = rt.list_labelled("shadow.node", &node).await.unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].id, running.id);
    assert_eq!(listed[0].name, name);
    assert!(listed[0].running);
    assert_eq!(listed[0].host_addr, Some(running.host_addr));
    assert_eq!(listed[0].labels.get("shadow.task").unwrap(), "counter");

    let start = Instant::now();
    rt.stop_and_remove(&running.id, Duration::from_secs(5))
        .await
        .unwrap();
    eprintln!("stop+remove took {:?}", start.elapsed());
    // The app exits on SIGTERM: well within the grace, so it was not killed.
    assert!(start.elapsed() < Duration::from_secs(5));
    assert_eq!(rt.inspect(&running.id).await.unwrap(), None);
    assert!(rt
        .list_labelled("shadow.node", &node)
        .await
        .unwrap()
        .is_empty());
    // Idempotent: gone is gone.
    rt.stop_and_remove(&running.id, Duration::from_secs(5))
        .await
        .unwrap();
    // The others' containers were not touched.
    assert!(rt.inspect(&foreign).await.unwrap().is_some());
    assert!(rt.inspect(&unlabelled).await.unwrap().is_some());
    // The data stays with the volume.
    assert_eq!(
        std::fs::read_to_string(data.path().join("count")).unwrap(),
        "1\n"
    );
}

#[tokio::test]
async fn a_failing_start_shows_its_error_line() {
    let image = counter_image().await.unwrap();
    let rt = runtime().await;
    let mut cleanup = Cleanup::default();
    let name = cleanup.name("failing");
    let mut spec = ContainerSpec::new(&name, &image);
    spec.env.insert("FAIL_START".into(), "1".into());
    const LINE: &str = "FAIL_START=1 is set";

    // Whether Docker still reports the port depends on how fast the app exits: either the start
    // is reported as failed with the logs, or it is seen to exit and its logs are read.
    match rt.create_and_start(&spec).await {
        Err(err @ RuntimeError::ExitedAtStart { .. }) => {
            eprintln!("{err}");
            let RuntimeError::ExitedAtStart {
                logs, exit_code, ..
            } = err
            else {
                unreachable!()
            };
            assert!(logs.contains(LINE), "{logs}");
            assert_eq!(exit_code, Some(1));
            assert_eq!(rt.inspect(&name).await.unwrap(), None, "left behind");
        }
        Ok(running) => {
            eprintln!("started, then exited");
            let deadline = Instant::now() + READY_DEADLINE;
            let status = loop {
                let status = rt.inspect(&running.id).await.unwrap().unwrap();
                if !status.running {
                    break status;
                }
                assert!(Instant::now() < deadline, "it never exited");
                tokio::time::sleep(Duration::from_millis(10)).await;
            };
            assert_eq!(status.exit_code, Some(1));
            let logs = rt.logs_tail(&running.id, 5).await.unwrap();
            assert!(logs.contains(LINE), "{logs}");
            rt.stop_and_remove(&running.id, Duration::from_secs(1))
                .await
                .unwrap();
        }
        Err(e) => panic!("unexpected error: {e}"),
    }
}

#[tokio::test]
async fn logs_tail_keeps_the_last_lines() {
    let image = counter_image().await.unwrap();
    let rt = runtime().await;
    let docker = bollard().await;
    let mut cleanup = Cleanup::default();
    let name = cleanup.name("logs");
    let mut spec = ContainerSpec::new(&name, &image);
    spec.labels
        .insert("shadow.node".into(), format!("node-{name}"));
    let running = rt.create_and_start(&spec).await.unwrap();
    wait_until_ok(running.host_addr, "/healthz").await;
    let first = rt.logs_tail(&running.id, 1).await.unwrap();
    assert!(
        first.starts_with("counter listening on 0.0.0.0:8000"),
        "{first}"
    );

    // SIGTERM alone, so the container stays (exited) and its last words can be read.
    docker
        .kill_container(
            &running.id,
            Some(KillContainerOptionsBuilder::new().signal("TERM").build()),
        )
        .await
        .unwrap();
    let deadline = Instant::now() + READY_DEADLINE;
    while rt.is_running(&running.id).await.unwrap() {
        assert!(Instant::now() < deadline, "it did not exit on SIGTERM");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let status = rt.inspect(&running.id).await.unwrap().unwrap();
    assert_eq!(status.exit_code, Some(0));
    assert!(!status.oom_killed);
    let last = rt.logs_tail(&running.id, 1).await.unwrap();
    assert_eq!(last, "counter stopping (count 0)\n");
    let both = rt.logs_tail(&running.id, 10).await.unwrap();
    assert_eq!(both.lines().count(), 2, "{both}");
    assert!(both.ends_with(&last), "{both}");

    // An exited container is still listed, as not running and with no address.
    let listed = rt
        .list_labelled("shadow.node", &format!("node-{name}"))
        .await
        .unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert!(!listed[0].running);
    assert_eq!(listed[0].host_addr, None);
    rt.stop_and_remove(&running.id, Duration::ZERO)
        .await
        .unwrap();
    assert!(matches!(
        rt.logs_tail(&running.id, 1).await,
        Err(RuntimeError::NotFound { .. })
    ));
}

#[tokio::test]
async fn a_missing_image_is_a_clear_error_and_leaves_nothing() {
    let rt = runtime().await;
    let mut cleanup = Cleanup::default();
    let name = cleanup.name("missing");
    let image = format!("shadow-test/{name}:v1");

    let err = rt.ensure_image(&image, false).await.unwrap_err();
    assert!(matches!(err, RuntimeError::Pull { .. }), "{err}");
    let message = err.to_string();
    assert!(message.contains(&image), "{message}");
    eprintln!("{message}");

    let err = rt
        .create_and_start(&ContainerSpec::new(&name, &image))
        .await
        .unwrap_err();
    assert!(matches!(err, RuntimeError::ImageMissing { .. }), "{err}");
    assert!(err.to_string().contains(&image), "{err}");
    assert_eq!(rt.inspect(&name).await.unwrap(), None);
}

#[tokio::test]
async fn a_create_that_docker_refuses_leaves_nothing() {
    let image = counter_image().await.unwrap();
    let rt = runtime().await;
    let mut cleanup = Cleanup::default();
    let name = cleanup.name("refused");
    let mut spec = ContainerSpec::new(&name, &image);
    spec.data_mount = Some(format!("/nonexistent/{name}").into());
    let err = rt.create_and_start(&spec).await.unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, RuntimeError::Create { .. }), "{message}");
    assert!(message.contains("/nonexistent/"), "{message}");
    assert_eq!(rt.inspect(&name).await.unwrap(), None, "left behind");
}

#[tokio::test]
async fn a_start_that_docker_refuses_removes_the_created_container() {
    let base = counter_image().await.unwrap();
    // An image whose entrypoint does not exist: created fine, refused by the OCI runtime at start.
    let image = "shadow-test/counter-broken:latest";
    let mut build = tokio::process::Command::new("docker")
        .args(["build", "--quiet", "--tag", image, "-"])
        .env("DOCKER_BUILDKIT", "0")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let dockerfile = format!("FROM {base}\nENTRYPOINT [\"/nonexistent\"]\n");
    let mut stdin = build.stdin.take().unwrap();
    stdin.write_all(dockerfile.as_bytes()).await.unwrap();
    drop(stdin);
    let built = build.wait_with_output().await.unwrap();
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );

    let rt = runtime().await;
    let mut cleanup = Cleanup::default();
    let name = cleanup.name("broken");
    let err = rt
        .create_and_start(&ContainerSpec::new(&name, image))
        .await
        .unwrap_err();
    let message = err.to_string();
    eprintln!("{message}");
    assert!(matches!(err, RuntimeError::Start { .. }), "{message}");
    assert!(message.contains("/nonexistent"), "{message}");
    assert_eq!(rt.inspect(&name).await.unwrap(), None, "left behind");
}

#[tokio::test]
async fn missing_containers_are_not_errors_where_gone_is_fine() {
    let rt = runtime().await;
    let id = "shadow-test-never-existed";
    rt.stop_and_remove(id, Duration::from_secs(1))
        .await
        .unwrap();
    assert!(!rt.is_running(id).await.unwrap());
    assert_eq!(rt.inspect(id).await.unwrap(), None);
    assert!(matches!(
        rt.logs_tail(id, 10).await,
        Err(RuntimeError::NotFound { .. })
    ));
}

#[tokio::test]
async fn an_unreachable_daemon_says_where_and_what_to_check() {
    let err = DockerRuntime::connect(Some("unix:///nonexistent/docker.sock"))
        .await
        .unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, RuntimeError::Unreachable { .. }), "{message}");
    assert!(message.contains("/nonexistent/docker.sock"), "{message}");
    assert!(message.contains("Is it running"), "{message}");
}

#[tokio::test]
async fn nodes_starting_together_end_with_one_app_network() {
    let rt = runtime().await;
    let name = format!(
        "shadow-test-net-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    // Four nodes on one daemon, all finding no network and creating one at once.
    let (a, b, c, d) = tokio::join!(
        rt.ensure_network(&name),
        rt.ensure_network(&name),
        rt.ensure_network(&name),
        rt.ensure_network(&name)
    );
    let listed = std::process::Command::new("docker")
        .args(["network", "ls", "-q", "--filter", &format!("name=^{name}$")])
        .output()
        .expect("docker network ls");
    let ids: Vec<String> = String::from_utf8_lossy(&listed.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    for id in &ids {
        let _ = std::process::Command::new("docker")
            .args(["network", "rm", id])
            .output();
    }
    for r in [a, b, c, d] {
        r.expect("ensure_network");
    }
    assert_eq!(ids.len(), 1, "exactly one network named {name}: {ids:?}");
}
