//! Block storage end to end: `ebs` volumes against moto's EC2 API and `do` volumes against a
//! fake of DigitalOcean's API, with loop devices standing in for the cloud disks, a real master,
//! real node proxies, Docker and the counter app.
//!
//! These need root and loop devices; without them each test prints why it is skipped.

use std::time::Duration;

use aws_sdk_ec2::{
    types::{InstanceType, Placement, VolumeState},
    Client,
};
use serde_json::json;
use shadow_common::task::Task;
use shadow_nodeproxy::{volume::digitalocean::volume_name, NodeConfig};
use shadow_tests::{
    block::{skip_reason, MotoDisks},
    do_fake::DoFake,
    fixtures::{domain, until_released},
    http::Client as HttpClient,
    image::counter_image,
    master::{self, MasterHandle, MasterOptions, TOKEN},
    moto::Moto,
    node::{self, NodeHandle},
    procs,
};
use tokio::time::Instant;

const REGION: &str = "us-east-1";
const DO_REGION: &str = "nyc3";
/// Short leases, so a dead node's lapses quickly; not shorter, because the node renews a lease
/// only while a volume step runs and once the app started, not while the container is created
/// and probed, which can take seconds on a busy machine.
const LEASE_TTL_MS: u64 = 4000;

fn skipped() -> bool {
    match skip_reason() {
        Some(why) => {
            eprintln!("SKIPPED: {why}");
            true
        }
        None => false,
    }
}

/// The SDK's chain finds these in the tests' process, never a real account or the instance
/// metadata service.
fn aws_env() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        for (k, v) in [
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", "testing"),
            ("AWS_EC2_METADATA_DISABLED", "true"),
            ("AWS_CONFIG_FILE", "/nonexistent/shadow-test"),
            ("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/shadow-test"),
        ] {
            std::env::set_var(k, v);
        }
    });
}

async fn ec2(moto: &Moto) -> Client {
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .http_client(shadow_edgeproxy::provider::aws::https_client())
        .region(aws_config::Region::new(REGION))
        .endpoint_url(&moto.url)
        .load()
        .await;
    Client::new(&sdk)
}

/// An instance in zone `az` for a node to play.
async fn instance(ec2: &Client, az: &str) -> String {
    let ami = ec2
        .describe_images()
        .send()
        .await
        .expect("DescribeImages")
        .images()
        .first()
        .and_then(|i| i.image_id().map(str::to_string))
        .expect("moto has AMIs");
    let out = ec2
        .run_instances()
        .image_id(ami)
        .instance_type(InstanceType::T3Micro)
        .min_count(1)
        .max_count(1)
        .placement(Placement::builder().availability_zone(az).build())
        .send()
        .await
        .expect("RunInstances");
    out.instances()[0]
        .instance_id()
        .expect("instance id")
        .to_string()
}

/// Everything an `ebs` test needs: moto, its disks, a master.
struct Ebs {
    moto: Moto,
    ec2: Client,
    disks: MotoDisks,
    m: MasterHandle,
}

impl Ebs {
    async fn start() -> Ebs {
        aws_env();
        counter_image().await.expect("test image builds");
        let moto = Moto::start().await;
        let ec2 = ec2(&moto).await;
        let disks = MotoDisks::start(ec2.clone());
        let m = master::spawn(MasterOptions::default()).await;
        Ebs {
            moto,
            ec2,
            disks,
            m,
        }
    }

    /// A node playing a new instance in `az`.
    async fn node(&self, az: &str) -> (NodeHandle, String) {
        let instance = instance(&self.ec2, az).await;
        let dir = self.disks.device_dir(&instance);
        let (url, inst, az) = (self.moto.url.clone(), instance.clone(), az.to_string());
        let n = node::spawn(&self.m, move |c: &mut NodeConfig| {
            c.ebs = true;
            c.aws_instance_id = Some(inst);
            c.aws_az = Some(az);
            c.aws_region = Some(REGION.into());
            c.aws_endpoint = Some(url);
            c.block_device_dir = dir;
            c.lease_ttl_ms = LEASE_TTL_MS;
        })
        .await;
        (n, instance)
    }

    /// The task's volumes that are not deleted.
    async fn volumes(&self, task: &str) -> Vec<aws_sdk_ec2::types::Volume> {
        let out = self
            .ec2
            .describe_volumes()
            .filters(
                aws_sdk_ec2::types::Filter::builder()
                    .name("tag:shadow-task")
                    .values(task)
                    .build(),
            )
            .send()
            .await
            .expect("DescribeVolumes");
        out.volumes()
            .iter()
            .filter(|v| v.state() != Some(&VolumeState::Deleted))
            .cloned()
            .collect()
    }
}

/// Everything a `do` test needs: the fake API and a master.
struct Do {
    api: DoFake,
    m: MasterHandle,
}

impl Do {
    async fn start() -> Do {
        counter_image().await.expect("test image builds");
        Do {
            api: DoFake::start().await,
            m: master::spawn(MasterOptions::default()).await,
        }
    }

    async fn node(&self, droplet: u64) -> NodeHandle {
        self.node_with_lease(droplet, LEASE_TTL_MS).await
    }

    async fn node_with_lease(&self, droplet: u64, lease_ttl_ms: u64) -> NodeHandle {
        let dir = self.api.add_droplet(droplet, DO_REGION);
        let (url, token) = (self.api.url.clone(), self.api.token.clone());
        node::spawn(&self.m, move |c: &mut NodeConfig| {
            c.do_token = Some(token);
            c.do_api = url;
            c.do_droplet_id = Some(droplet.to_string());
            c.do_region = Some(DO_REGION.into());
            c.block_device_dir = dir;
            c.lease_ttl_ms = lease_ttl_ms;
        })
        .await
    }
}

/// The counter app on a `kind` volume, reaped after `idle_s` idle.
async fn counter_task_idle(m: &MasterHandle, domain: &str, kind: &str, idle_s: u64) -> Task {
    let spec = json!({
        "name": "counter",
        "domains": [domain],
        "image": shadow_tests::image::COUNTER_IMAGE,
        "volume": {"kind": kind, "size_gb": 1},
        "idle_timeout_s": idle_s,
        "start_timeout_s": 60,
    });
    m.client
        .create_task(&serde_json::from_value::<shadow_common::task::TaskSpec>(spec).expect("spec"))
        .await
        .expect("create task")
}

/// The counter app on a `kind` volume, reaped after a second idle.
async fn counter_task(m: &MasterHandle, domain: &str, kind: &str) -> Task {
    counter_task_idle(m, domain, kind, 1).await
}

/// A request, retried while the node has not heard of the task yet (404: its watch of the
/// master lags the task's creation); asserts a 200 and returns the body.
async fn request(c: &HttpClient, method: &str, d: &str, path: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = if method == "POST" {
            c.post(d, path, "").await
        } else {
            c.get(d, path).await
        }
        .expect("request");
        if r.status == 404 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        assert_eq!(r.status, 200, "{method} {path}: {r:?}");
        return r.body.trim().to_string();
    }
}

/// [`request`], timed; prints the time for the report.
async fn timed(c: &HttpClient, what: &str, method: &str, d: &str, path: &str) -> String {
    let t = Instant::now();
    let body = request(c, method, d, path).await;
    eprintln!("{what}: {} ms", t.elapsed().as_millis());
    body
}

/// Asks until the node answers 200 (it may refuse while another node's lease is still live).
async fn until_answered(c: &HttpClient, d: &str, limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(r) = c.get(d, "/").await {
            if r.status == 200 {
                return r.body.trim().to_string();
            }
        }
        assert!(
            Instant::now() < deadline,
            "no answer from the app within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ebs_the_count_survives_a_reap_and_a_start_on_another_node() {
    if skipped() {
        return;
    }
    let e = Ebs::start().await;
    let (a, _) = e.node("us-east-1a").await;
    let (b, inst_b) = e.node("us-east-1a").await;
    let d = domain("ebs");
    let task = counter_task(&e.m, &d, "ebs").await;

    let ca = HttpClient::new(a.addr);
    assert_eq!(
        timed(
            &ca,
            "ebs cold start (create + attach + mkfs + mount)",
            "POST",
            &d,
            "/count"
        )
        .await,
        "1"
    );
    assert_eq!(timed(&ca, "ebs warm", "POST", &d, "/count").await, "2");
    let vols = e.volumes(&task.id).await;
    assert_eq!(vols.len(), 1, "one volume for the task: {vols:?}");
    let vol = vols[0].volume_id().expect("id").to_string();
    assert_eq!(
        e.disks.fs_type_of(&vol).as_deref(),
        Some("ext4"),
        "the blank volume got a filesystem"
    );

    let t = Instant::now();
    until_released(&e.m, &task.id).await;
    eprintln!(
        "ebs reap (stop + sync + umount + detach + release): {} ms after the idle timeout",
        t.elapsed().as_millis()
    );
    let v = &e.volumes(&task.id).await[0];
    assert_eq!(
        v.state(),
        Some(&VolumeState::Available),
        "detached after the reap"
    );

    let cb = HttpClient::new(b.addr);
    assert_eq!(
        timed(
            &cb,
            "ebs start on another node (attach + mount)",
            "GET",
            &d,
            "/"
        )
        .await,
        "2",
        "the data followed the app"
    );
    let v = &e.volumes(&task.id).await[0];
    assert_eq!(v.volume_id(), Some(vol.as_str()), "the same volume");
    assert_eq!(v.attachments()[0].instance_id(), Some(inst_b.as_str()));
    a.stop().await;
    b.stop().await;
    let v = &e.volumes(&task.id).await[0];
    assert_eq!(
        v.state(),
        Some(&VolumeState::Available),
        "a node's shutdown detaches"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ebs_a_move_to_another_availability_zone_carries_the_data() {
    if skipped() {
        return;
    }
    let e = Ebs::start().await;
    let (a, _) = e.node("us-east-1a").await;
    let (b, inst_b) = e.node("us-east-1b").await;
    let d = domain("ebs-az");
    let task = counter_task(&e.m, &d, "ebs").await;

    let ca = HttpClient::new(a.addr);
    assert_eq!(
        timed(&ca, "ebs cold start in us-east-1a", "POST", &d, "/count").await,
        "1"
    );
    assert_eq!(request(&ca, "POST", &d, "/count").await, "2");
    let old = e.volumes(&task.id).await[0]
        .volume_id()
        .expect("id")
        .to_string();
    until_released(&e.m, &task.id).await;

    let cb = HttpClient::new(b.addr);
    assert_eq!(
        timed(
            &cb,
            "ebs start in us-east-1b (snapshot + new volume + attach)",
            "GET",
            &d,
            "/"
        )
        .await,
        "2",
        "the data moved with the volume"
    );
    let vols = e.volumes(&task.id).await;
    assert_eq!(vols.len(), 1, "the old volume was retired: {vols:?}");
    let new = &vols[0];
    assert_ne!(new.volume_id(), Some(old.as_str()));
    assert_eq!(new.availability_zone(), Some("us-east-1b"));
    assert_eq!(new.attachments()[0].instance_id(), Some(inst_b.as_str()));
    assert!(
        new.tags()
            .iter()
            .any(|t| t.key() == Some("shadow-moved-from") && t.value() == Some(old.as_str())),
        "{new:?}"
    );
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ebs_a_killed_nodes_volume_is_force_detached_once_its_lease_lapses() {
    if skipped() {
        return;
    }
    let e = Ebs::start().await;
    let inst_a = instance(&e.ec2, "us-east-1a").await;
    let dir_a = e.disks.device_dir(&inst_a);
    let data_a = tempfile::tempdir().expect("temp dir");
    let id_a = node::unique_id("killed");
    let lease = LEASE_TTL_MS.to_string();
    let mut a = procs::spawn_node(
        &e.m.url,
        &id_a,
        data_a.path(),
        &[
            ("SHADOW_EBS", "true"),
            ("SHADOW_AWS_INSTANCE_ID", &inst_a),
            ("SHADOW_AWS_AZ", "us-east-1a"),
            ("SHADOW_AWS_REGION", REGION),
            ("SHADOW_AWS_ENDPOINT", &e.moto.url),
            ("SHADOW_BLOCK_DEVICE_DIR", &dir_a.to_string_lossy()),
            ("SHADOW_LEASE_TTL_MS", &lease),
            ("SHADOW_API_TOKEN", TOKEN),
        ],
    )
    .await;
    let ca = HttpClient::new(a.addr);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ca
        .get("node.invalid", "/healthz")
        .await
        .is_ok_and(|r| r.status == 200)
    {
        assert!(
            Instant::now() < deadline,
            "the node process never became healthy"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (b, inst_b) = e.node("us-east-1a").await;
    let d = domain("ebs-kill");
    // Never idle: only the kill stops it.
    let task = counter_task_idle(&e.m, &d, "ebs", 3600).await;

    assert_eq!(request(&ca, "POST", &d, "/count").await, "1");
    assert_eq!(request(&ca, "POST", &d, "/count").await, "2");
    a.kill9();
    // The machine is gone, and its container with it.
    let _ = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("docker ps -aq --filter label=shadow.node={id_a} | xargs -r docker rm -f >/dev/null 2>&1"))
        .status();
    let v = &e.volumes(&task.id).await[0];
    assert_eq!(
        v.attachments()[0].instance_id(),
        Some(inst_a.as_str()),
        "still attached to the dead node"
    );

    let cb = HttpClient::new(b.addr);
    let t = Instant::now();
    assert_eq!(
        until_answered(&cb, &d, Duration::from_secs(60)).await,
        "2",
        "the data came along"
    );
    eprintln!(
        "ebs takeover after a kill (lease lapse + force-detach + attach): {} ms",
        t.elapsed().as_millis()
    );
    let v = &e.volumes(&task.id).await[0];
    assert_eq!(v.attachments().len(), 1);
    assert_eq!(v.attachments()[0].instance_id(), Some(inst_b.as_str()));
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn do_the_count_survives_a_reap_and_a_start_on_another_node() {
    if skipped() {
        return;
    }
    let f = Do::start().await;
    let a = f.node(101).await;
    let b = f.node(102).await;
    let d = domain("do");
    let task = counter_task(&f.m, &d, "do").await;
    let name = volume_name(&task.id);

    let ca = HttpClient::new(a.addr);
    assert_eq!(
        timed(
            &ca,
            "do cold start (create + attach + mkfs + mount)",
            "POST",
            &d,
            "/count"
        )
        .await,
        "1"
    );
    assert_eq!(request(&ca, "POST", &d, "/count").await, "2");
    assert_eq!(f.api.droplets_of(&name), vec![101]);
    let (fs, uuid) = f.api.fs_of(&name);
    assert_eq!(
        fs.as_deref(),
        Some("ext4"),
        "the blank volume got a filesystem"
    );

    let t = Instant::now();
    until_released(&f.m, &task.id).await;
    eprintln!(
        "do reap (stop + sync + umount + detach + release): {} ms after the idle timeout",
        t.elapsed().as_millis()
    );
    assert!(
        f.api.droplets_of(&name).is_empty(),
        "detached after the reap"
    );

    let cb = HttpClient::new(b.addr);
    assert_eq!(
        timed(
            &cb,
            "do start on another node (attach + mount)",
            "GET",
            &d,
            "/"
        )
        .await,
        "2",
        "the data followed the app"
    );
    assert_eq!(f.api.droplets_of(&name), vec![102]);
    assert_eq!(f.api.fs_of(&name).1, uuid, "never reformatted");
    a.stop().await;
    b.stop().await;
    assert!(
        f.api.droplets_of(&name).is_empty(),
        "a node's shutdown detaches"
    );
    assert_eq!(
        f.api.problems(),
        Vec::<String>::new(),
        "every request was one the real API takes"
    );
    let reqs = f.api.requests();
    assert_eq!(
        reqs.iter()
            .filter(|r| r.starts_with("POST /v2/volumes") && !r.contains("actions"))
            .count(),
        1,
        "created once: {reqs:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn do_a_used_volume_keeps_its_data_and_is_never_reformatted() {
    if skipped() {
        return;
    }
    let f = Do::start().await;
    let a = f.node(201).await;
    let d = domain("do-used");
    let task = counter_task(&f.m, &d, "do").await;
    let name = volume_name(&task.id);
    f.api.add_volume(&name, DO_REGION, |disk| {
        disk.format_with(&[("count", "41"), ("keep.txt", "from an earlier life")])
    });
    let (_, uuid) = f.api.fs_of(&name);
    assert!(uuid.is_some());

    let ca = HttpClient::new(a.addr);
    assert_eq!(
        request(&ca, "POST", &d, "/count").await,
        "42",
        "the count on the volume went on"
    );
    let mounted = a.dir.path().join("block").join(&task.id);
    assert_eq!(
        std::fs::read_to_string(mounted.join("keep.txt")).expect("the old file is there"),
        "from an earlier life"
    );
    assert_eq!(
        f.api.fs_of(&name).1,
        uuid,
        "the filesystem was kept, not remade"
    );
    a.stop().await;
    assert_eq!(f.api.problems(), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn do_a_failed_detach_keeps_the_lease_and_is_retried() {
    if skipped() {
        return;
    }
    let f = Do::start().await;
    // A lease that outlives the node's first retries (1 s, then 2 s): the stop renews it only
    // between tries.
    let a = f.node_with_lease(301, 6000).await;
    let b = f.node_with_lease(302, 6000).await;
    let d = domain("do-fail");
    let task = counter_task(&f.m, &d, "do").await;
    let name = volume_name(&task.id);
    f.api.fail_detaches(2);

    let ca = HttpClient::new(a.addr);
    assert_eq!(request(&ca, "POST", &d, "/count").await, "1");

    // The reap stops the container, then the detach fails: the node keeps the lease.
    let detaches = |f: &Do| {
        f.api
            .requests()
            .iter()
            .filter(|r| r.ends_with("detach"))
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while detaches(&f) < 1 {
        assert!(Instant::now() < deadline, "no detach within 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(a.containers().await.is_empty(), "the app is stopped");
    let leases = f.m.client.list_leases().await.expect("leases");
    assert_eq!(
        leases.len(),
        1,
        "the lease is held while the volume is attached"
    );
    assert_eq!(leases[0].node, a.id);
    assert_eq!(f.api.droplets_of(&name), vec![301]);
    // Meanwhile another node cannot take the app.
    let cb = HttpClient::new(b.addr);
    let r = cb.get(&d, "/").await.expect("req");
    assert_ne!(
        r.status, 200,
        "node B must not start the app while A holds the volume: {r:?}"
    );

    until_released(&f.m, &task.id).await;
    assert_eq!(
        detaches(&f),
        3,
        "two failures, then success: {:#?}",
        f.api.requests()
    );
    assert!(f.api.droplets_of(&name).is_empty());
    assert_eq!(
        until_answered(&cb, &d, Duration::from_secs(30)).await,
        "1",
        "the data came along"
    );
    a.stop().await;
    b.stop().await;
    assert_eq!(f.api.problems(), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn do_an_attach_longer_than_the_lease_keeps_the_lease_alive() {
    if skipped() {
        return;
    }
    let f = Do::start().await;
    let ttl = 3000;
    let a = f.node_with_lease(401, ttl).await;
    let d = domain("do-slow");
    let task = counter_task_idle(&f.m, &d, "do", 3600).await;
    // About 9 s of polling (0.1 + 0.2 + 0.4 + 0.8 + 1.6 + 3 + 3 s) against a 3 s lease.
    f.api.slow_actions(8);

    let ca = HttpClient::new(a.addr);
    assert_eq!(
        timed(&ca, "do cold start with a slow attach", "GET", &d, "/").await,
        "0"
    );
    // Had the lease lapsed during the attach, the node would stop the app at its first renewal.
    tokio::time::sleep(Duration::from_millis(2 * ttl)).await;
    assert_eq!(request(&ca, "POST", &d, "/count").await, "1");
    let leases = f.m.client.list_leases().await.expect("leases");
    assert_eq!(leases.len(), 1);
    assert_eq!(
        (leases[0].task_id.as_str(), leases[0].node.as_str()),
        (task.id.as_str(), a.id.as_str())
    );
    assert_eq!(a.containers().await.len(), 1, "the app kept running");
    a.stop().await;
    assert_eq!(f.api.problems(), Vec::<String>::new());
}
