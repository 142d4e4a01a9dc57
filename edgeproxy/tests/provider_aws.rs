//! The `aws` node provider against moto (fake EC2): what it launches, what it terminates, and
//! what it leaves alone, read back from moto's state with DescribeInstances.

use std::{collections::HashMap, sync::Once};

use aws_sdk_ec2::{
    types::{
        Instance, InstanceStateName, InstanceType, RequestLaunchTemplateData, ResourceType, Tag,
        TagSpecification,
    },
    Client,
};
use shadow_common::node::NodeStatus;
use shadow_edgeproxy::provider::{
    aws::{https_client, AwsProvider},
    AwsConfig, NodeProvider, ProviderError,
};
use shadow_tests::moto::Moto;

const TEMPLATE: &str = "shadow-nodes";

/// Credentials for moto through the SDK's usual chain (the environment). Every test calls this
/// first, before any thread reads the environment.
fn env() {
    static ONCE: Once = Once::new();
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

fn config(moto: &Moto, template: &str) -> AwsConfig {
    AwsConfig {
        launch_template: template.into(),
        region: Some("us-east-1".into()),
        endpoint: Some(moto.url.clone()),
    }
}

/// A plain EC2 client on moto, for setting up and reading back.
async fn ec2(moto: &Moto) -> Client {
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .http_client(https_client())
        .region(aws_config::Region::new("us-east-1"))
        .endpoint_url(&moto.url)
        .load()
        .await;
    Client::new(&sdk)
}

/// Creates the launch template; returns (AMI id, template id).
async fn setup(ec2: &Client) -> (String, String) {
    let images = ec2.describe_images().send().await.expect("DescribeImages");
    let ami = images
        .images()
        .first()
        .and_then(|i| i.image_id())
        .expect("moto has AMIs")
        .to_string();
    let lt = ec2
        .create_launch_template()
        .launch_template_name(TEMPLATE)
        .launch_template_data(
            RequestLaunchTemplateData::builder()
                .image_id(&ami)
                .instance_type(InstanceType::T3Micro)
                .build(),
        )
        .send()
        .await
        .expect("CreateLaunchTemplate");
    let lt_id = lt
        .launch_template()
        .and_then(|t| t.launch_template_id())
        .expect("template id")
        .to_string();
    (ami, lt_id)
}

/// Starts an instance with these tags; returns it.
async fn instance(ec2: &Client, ami: &str, tags: &[(&str, &str)]) -> Instance {
    let mut spec = TagSpecification::builder().resource_type(ResourceType::Instance);
    for (k, v) in tags {
        spec = spec.tags(Tag::builder().key(*k).value(*v).build());
    }
    let out = ec2
        .run_instances()
        .image_id(ami)
        .instance_type(InstanceType::T3Micro)
        .min_count(1)
        .max_count(1)
        .tag_specifications(spec.build())
        .send()
        .await
        .expect("RunInstances");
    out.instances()[0].clone()
}

/// Every instance moto knows, by id.
async fn all(ec2: &Client) -> HashMap<String, Instance> {
    let out = ec2
        .describe_instances()
        .send()
        .await
        .expect("DescribeInstances");
    out.reservations()
        .iter()
        .flat_map(|r| r.instances())
        .map(|i| (i.instance_id().expect("id").to_string(), i.clone()))
        .collect()
}

fn state(i: &Instance) -> InstanceStateName {
    i.state().and_then(|s| s.name()).cloned().expect("state")
}

fn tags(i: &Instance) -> HashMap<String, String> {
    i.tags()
        .iter()
        .map(|t| {
            (
                t.key().unwrap_or_default().to_string(),
                t.value().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

fn node(id: &str, address: &str) -> NodeStatus {
    NodeStatus {
        id: id.into(),
        address: address.into(),
        capacity: 10,
        running: vec![],
        load: 0.0,
        last_heartbeat_ms: Some(1),
        healthy: false,
        volume_kinds: None,
    }
}

#[tokio::test]
async fn launches_from_the_template_then_terminates_the_instance_tagged_with_the_node_id() {
    env();
    let moto = Moto::start().await;
    let ec2 = ec2(&moto).await;
    let (ami, _) = setup(&ec2).await;
    let dead = instance(
        &ec2,
        &ami,
        &[("shadow-node", "true"), ("shadow-node-id", "node-a")],
    )
    .await;
    // Claims the node id but is not a Shadow node: never touched.
    let stranger = instance(&ec2, &ami, &[("shadow-node-id", "node-a")]).await;
    // Another, live, Shadow node.
    let alive = instance(
        &ec2,
        &ami,
        &[("shadow-node", "true"), ("shadow-node-id", "node-b")],
    )
    .await;
    let dead_id = dead.instance_id().expect("id").to_string();

    let provider = AwsProvider::from_config(&config(&moto, TEMPLATE))
        .await
        .expect("provider");
    assert_eq!(provider.name(), "aws");
    let r = provider
        // The address matches no instance: the tag decides.
        .replace(&node("node-a", "10.99.99.99:7071"))
        .await
        .expect("replace");

    assert_eq!(r.removed.as_deref(), Some(dead_id.as_str()));
    let new_id = r.new_instance.expect("a new instance");
    let after = all(&ec2).await;
    assert_eq!(
        after.len(),
        4,
        "exactly one instance was launched: {after:?}"
    );
    let new = &after[&new_id];
    assert_eq!(state(new), InstanceStateName::Running);
    assert_eq!(new.image_id(), Some(ami.as_str()), "the template's AMI");
    assert_eq!(
        new.instance_type(),
        Some(&InstanceType::T3Micro),
        "the template's type"
    );
    let t = tags(new);
    assert_eq!(t.get("shadow-node").map(String::as_str), Some("true"));
    assert_eq!(t.get("shadow-replaces").map(String::as_str), Some("node-a"));
    let name = t.get("Name").expect("a Name tag");
    assert!(
        name.starts_with("shadow-node-") && name.len() == 20,
        "{name}"
    );

    assert_eq!(state(&after[&dead_id]), InstanceStateName::Terminated);
    for untouched in [&stranger, &alive] {
        let id = untouched.instance_id().expect("id");
        assert_eq!(
            state(&after[id]),
            InstanceStateName::Running,
            "{id} left alone"
        );
    }
}

#[tokio::test]
async fn without_the_id_tag_finds_the_dead_instance_by_private_ip_and_takes_a_template_id() {
    env();
    let moto = Moto::start().await;
    let ec2 = ec2(&moto).await;
    let (ami, lt_id) = setup(&ec2).await;
    let dead = instance(&ec2, &ami, &[("shadow-node", "true")]).await;
    let other = instance(&ec2, &ami, &[("shadow-node", "true")]).await;
    let ip = dead.private_ip_address().expect("private ip");

    let provider = AwsProvider::from_config(&config(&moto, &lt_id))
        .await
        .expect("provider");
    let r = provider
        .replace(&node("ip-whatever", &format!("{ip}:7071")))
        .await
        .expect("replace");

    let dead_id = dead.instance_id().expect("id");
    assert_eq!(r.removed.as_deref(), Some(dead_id));
    let after = all(&ec2).await;
    assert_eq!(state(&after[dead_id]), InstanceStateName::Terminated);
    let other_id = other.instance_id().expect("id");
    assert_eq!(state(&after[other_id]), InstanceStateName::Running);
    let new = &after[r.new_instance.as_deref().expect("new")];
    assert_eq!(state(new), InstanceStateName::Running);
    assert_eq!(new.image_id(), Some(ami.as_str()));
}

#[tokio::test]
async fn a_dead_instance_that_is_gone_already_is_not_an_error_but_two_matches_are() {
    env();
    let moto = Moto::start().await;
    let ec2 = ec2(&moto).await;
    let (ami, _) = setup(&ec2).await;
    let provider = AwsProvider::from_config(&config(&moto, TEMPLATE))
        .await
        .expect("provider");

    let r = provider
        .replace(&node("node-gone", "10.1.2.3:7071"))
        .await
        .expect("replace");
    assert!(r.new_instance.is_some());
    assert_eq!(r.removed, None);

    let twins = [
        instance(
            &ec2,
            &ami,
            &[("shadow-node", "true"), ("shadow-node-id", "twin")],
        )
        .await,
        instance(
            &ec2,
            &ami,
            &[("shadow-node", "true"), ("shadow-node-id", "twin")],
        )
        .await,
    ];
    let err = provider
        .replace(&node("twin", "10.1.2.4:7071"))
        .await
        .expect_err("ambiguous");
    let msg = err.to_string();
    assert!(matches!(err, ProviderError::Partial { .. }), "{msg}");
    assert!(msg.contains("2 machines match dead node twin"), "{msg}");
    let after = all(&ec2).await;
    for t in &twins {
        let id = t.instance_id().expect("id");
        assert_eq!(state(&after[id]), InstanceStateName::Running, "{id} kept");
    }
}

#[tokio::test]
async fn a_missing_launch_template_is_a_clear_error_and_launches_nothing() {
    env();
    let moto = Moto::start().await;
    let ec2 = ec2(&moto).await;
    setup(&ec2).await;
    let provider = AwsProvider::from_config(&config(&moto, "no-such-template"))
        .await
        .expect("provider");
    let err = provider
        .replace(&node("node-a", "10.1.2.3:7071"))
        .await
        .expect_err("no template");
    let msg = err.to_string();
    assert!(
        matches!(
            err,
            ProviderError::Api {
                action: "RunInstances",
                ..
            }
        ),
        "{msg}"
    );
    assert!(msg.starts_with("aws: RunInstances failed"), "{msg}");
    assert!(all(&ec2).await.is_empty(), "nothing launched");

    let err = AwsProvider::from_config(&AwsConfig {
        launch_template: " ".into(),
        region: None,
        endpoint: None,
    })
    .await
    .expect_err("empty template");
    assert!(
        err.to_string().contains("SHADOW_AWS_LAUNCH_TEMPLATE"),
        "{err}"
    );
}
