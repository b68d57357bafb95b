//! Workflow manifests through `ObjectService` and `xenectl` against real servers
//! (issue "Workflow manifests"; DESIGN §6, §11.1, §12).

use std::path::PathBuf;

use tokio_stream::StreamExt;
use tonic::Code;
use xene_chaos_tests::harness::{ClusterOptions, TestCluster};
use xene_model::{parse_manifest, PipelineObject, Workflow};
use xene_proto as pb;
use xene_proto::object_service_client::ObjectServiceClient;

fn examples() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

fn example(name: &str) -> String {
    std::fs::read_to_string(examples().join(name)).expect("read example")
}

fn objects(cluster: &TestCluster, index: usize) -> ObjectServiceClient<tonic::transport::Channel> {
    ObjectServiceClient::new(cluster.channel(index))
}

async fn apply(cluster: &TestCluster, index: usize, manifest: &str) -> Result<pb::ApplyResponse, tonic::Status> {
    objects(cluster, index)
        .apply(cluster.request(pb::ApplyRequest { manifest: manifest.into() }))
        .await
        .map(|r| r.into_inner())
}

async fn list(cluster: &TestCluster, kind: &str, selector: &str) -> Vec<pb::Object> {
    let request =
        pb::ListObjectsRequest { kind: kind.into(), label_selector: selector.into(), workflow: String::new() };
    objects(cluster, 0).list(cluster.request(request)).await.expect("list").into_inner().objects
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_is_idempotent_versioned_and_delete_removes_pipelines() {
    let cluster = TestCluster::start(ClusterOptions::default()).await;
    let manifest = example("ping-ci.yaml");

    let first = apply(&cluster, 1, &manifest).await.expect("apply");
    assert_eq!(first.result, "created");
    let version = first.object.as_ref().expect("object").resource_version;
    assert_eq!(first.pipelines.len(), 1);
    let pipeline: PipelineObject = serde_json::from_str(&first.pipelines[0].json).expect("pipeline json");
    assert_eq!(pipeline.metadata.name, "ping-ci/build");
    assert_eq!(pipeline.status.phase.as_str(), "NotScheduled");
    assert_eq!(pipeline.status.reason.as_deref(), Some("no agents"));
    // Every object has its own uid and creation time (DESIGN §6.3).
    let created: Workflow = serde_json::from_str(&first.object.as_ref().expect("object").json).expect("json");
    assert!(created.metadata.uid.as_deref().is_some_and(|uid| uid.len() == 36), "{:?}", created.metadata);
    assert!(pipeline.metadata.uid.as_deref().is_some_and(|uid| uid.len() == 36), "{:?}", pipeline.metadata);
    assert_ne!(pipeline.metadata.uid, created.metadata.uid, "a pipeline is an object of its own");
    assert!(pipeline.metadata.creation_timestamp.is_some(), "{:?}", pipeline.metadata);

    // Applying the same manifest again changes nothing: same resourceVersion.
    let again = apply(&cluster, 2, &manifest).await.expect("apply again");
    assert_eq!(again.result, "unchanged");
    assert_eq!(again.object.expect("object").resource_version, version);

    // A change with a stale resourceVersion is refused and changes nothing.
    let changed = manifest.replace("CI for the ping tool", "CI for ping, v2");
    let stale = changed.replacen("metadata:\n", &format!("metadata:\n  resourceVersion: {}\n", version - 1), 1);
    let conflict = apply(&cluster, 0, &stale).await.expect_err("stale resourceVersion");
    assert_eq!(conflict.code(), Code::Aborted, "{conflict}");
    assert!(conflict.message().contains("resourceVersion"), "{conflict}");
    let stored = objects(&cluster, 0)
        .get(cluster.request(pb::GetObjectRequest { kind: "workflow".into(), name: "ping-ci".into() }))
        .await
        .expect("get")
        .into_inner();
    assert_eq!(stored.resource_version, version, "nothing changed");

    // The right resourceVersion (or none) updates it; uid and creation time stay.
    let current = changed.replacen("metadata:\n", &format!("metadata:\n  resourceVersion: {version}\n"), 1);
    let updated = apply(&cluster, 0, &current).await.expect("update");
    assert_eq!(updated.result, "configured");
    let updated_object = updated.object.expect("object");
    assert!(updated_object.resource_version > version);
    let before: Workflow = serde_json::from_str(&first.object.expect("object").json).expect("json");
    let after: Workflow = serde_json::from_str(&updated_object.json).expect("json");
    assert_eq!(before.metadata.uid, after.metadata.uid);
    assert_eq!(before.metadata.creation_timestamp, after.metadata.creation_timestamp);

    // Store → YAML → parse: the manifest comes back as it was applied (lossless).
    let yaml = cluster.xenectl(&["get", "workflows", "ping-ci", "-o", "yaml"]);
    assert!(yaml.status.success(), "{}", String::from_utf8_lossy(&yaml.stderr));
    let round_trip =
        parse_manifest(&String::from_utf8_lossy(&yaml.stdout)).expect("the YAML xenectl prints is a valid manifest");
    let applied = parse_manifest(&changed).expect("valid");
    assert_eq!(round_trip.spec, applied.spec);
    assert_eq!(round_trip.metadata.labels, applied.metadata.labels);
    assert_eq!(round_trip.metadata.description, applied.metadata.description);

    // Delete removes the workflow and its pipelines.
    let deleted = objects(&cluster, 2)
        .delete(cluster.request(pb::DeleteObjectRequest {
            kind: "workflow".into(),
            name: "ping-ci".into(),
            resource_version: 0,
        }))
        .await
        .expect("delete")
        .into_inner();
    assert_eq!(deleted.deleted.len(), 2);
    assert!(list(&cluster, "pipelines", "").await.is_empty());
    assert!(list(&cluster, "workflows", "").await.is_empty());
    let missing = objects(&cluster, 0)
        .get(cluster.request(pb::GetObjectRequest { kind: "workflow".into(), name: "ping-ci".into() }))
        .await
        .expect_err("gone");
    assert_eq!(missing.code(), Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_manifests_are_refused_whole_with_every_problem() {
    let cluster = TestCluster::start(ClusterOptions::default()).await;
    let bad = example("fan-out-fan-in.yaml").replace("dependencies: [prepare]", "dependencies: [prepair]");
    assert_ne!(bad, example("fan-out-fan-in.yaml"), "the test edits the example");
    let bad = format!("{bad}\nbogus: 1\n");
    let refused = apply(&cluster, 0, &bad).await.expect_err("invalid");
    assert_eq!(refused.code(), Code::InvalidArgument);
    let message = refused.message();
    assert!(message.contains("unknown task \"prepair\"; did you mean \"prepare\"?"), "{message}");
    assert!(message.contains("bogus"), "every problem is reported: {message}");
    assert!(list(&cluster, "workflows", "").await.is_empty(), "nothing was stored");

    // A condition nested deeper than allowed is refused before it is parsed; the deepest one
    // allowed is parsed (on its own stack: the parser's recursion once aborted a server).
    let nested = |depth: usize| {
        let condition = format!("{{{{ tasks.prepare.outputs.n }}}} == {}1{}", "(".repeat(depth), ")".repeat(depth));
        example("fan-out-fan-in.yaml").replace(
            "        shard-a:\n          dependencies: [prepare]\n",
            &format!("        shard-a:\n          dependencies: [prepare]\n          when: \"{condition}\"\n"),
        )
    };
    assert_ne!(nested(1), example("fan-out-fan-in.yaml"), "the test edits the example");
    let refused = apply(&cluster, 0, &nested(33)).await.expect_err("too deep");
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(
        refused.message().contains("nests brackets 33 deep; a condition may nest them at most 32 deep"),
        "{refused}"
    );
    assert!(list(&cluster, "workflows", "").await.is_empty(), "nothing was stored");
    apply(&cluster, 0, &nested(32)).await.expect("the deepest condition allowed");
    assert_eq!(list(&cluster, "workflows", "").await.len(), 1);

    for (manifest, expected) in [("{not yaml", "manifest"), ("apiVersion: xene.dev/v1\nkind: Secret\n", "kind")] {
        let refused = apply(&cluster, 0, manifest).await.expect_err("refused");
        assert_eq!(refused.code(), Code::InvalidArgument, "{refused}");
        assert!(refused.message().to_lowercase().contains(expected), "{refused}");
    }
    let unknown_kind = objects(&cluster, 0)
        .get(cluster.request(pb::GetObjectRequest { kind: "gadget".into(), name: "x".into() }))
        .await
        .expect_err("unknown kind");
    assert!(unknown_kind.message().contains("Workflow and Pipeline"), "{unknown_kind}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_input_selectors_and_watch() {
    let cluster = TestCluster::start(ClusterOptions::default()).await;
    let mut watch = objects(&cluster, 1)
        .watch(cluster.request(pb::WatchObjectsRequest {
            kind: "workflows".into(),
            name: String::new(),
            start_revision: 0,
        }))
        .await
        .expect("watch")
        .into_inner();

    let hello: Workflow = parse_manifest(&example("hello.yaml")).expect("valid");
    let json = serde_json::to_string(&hello).expect("json");
    assert_eq!(apply(&cluster, 0, &json).await.expect("JSON manifest").result, "created");
    apply(&cluster, 0, &example("ping-ci.yaml")).await.expect("apply");

    let infra: Vec<String> = list(&cluster, "workflows", "team=infra").await.into_iter().map(|o| o.name).collect();
    assert_eq!(infra, vec!["ping-ci".to_string()]);
    let not_infra: Vec<String> = list(&cluster, "workflows", "team!=infra").await.into_iter().map(|o| o.name).collect();
    assert_eq!(not_infra, vec!["hello".to_string()]);
    let bad_selector = objects(&cluster, 0)
        .list(cluster.request(pb::ListObjectsRequest {
            kind: "workflows".into(),
            label_selector: "=x".into(),
            workflow: String::new(),
        }))
        .await
        .expect_err("bad selector");
    assert_eq!(bad_selector.code(), Code::InvalidArgument);

    objects(&cluster, 0)
        .delete(cluster.request(pb::DeleteObjectRequest {
            kind: "workflow".into(),
            name: "hello".into(),
            resource_version: 0,
        }))
        .await
        .expect("delete");
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let event = tokio::time::timeout(std::time::Duration::from_secs(10), watch.next())
            .await
            .expect("an event in time")
            .expect("stream open")
            .expect("event");
        let object = event.object.expect("object");
        seen.push((event.r#type, object.name));
    }
    use pb::object_event::Type;
    assert_eq!(
        seen,
        vec![
            (Type::Added as i32, "hello".to_string()),
            (Type::Added as i32, "ping-ci".to_string()),
            (Type::Deleted as i32, "hello".to_string()),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xenectl_validates_before_sending_and_shows_workflows() {
    let cluster = TestCluster::start(ClusterOptions::default()).await;
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("good.yaml"), example("hello.yaml")).expect("write");
    std::fs::write(dir.path().join("bad.yaml"), example("hello.yaml").replace("name: hello", "name: Hello_World"))
        .expect("write");
    let refused = cluster.xenectl(&["apply", "-f", &dir.path().display().to_string()]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("bad.yaml: metadata.name"), "{stderr}");
    assert!(stderr.contains("nothing was applied"), "{stderr}");
    assert!(list(&cluster, "workflows", "").await.is_empty(), "the valid file was not sent either");

    let applied = cluster.xenectl(&["apply", "-f", &examples().display().to_string()]);
    assert!(applied.status.success(), "{}", String::from_utf8_lossy(&applied.stderr));
    let stdout = String::from_utf8_lossy(&applied.stdout);
    assert_eq!(stdout.matches(" created").count(), 3, "{stdout}");
    let again = cluster.xenectl(&["apply", "-f", &examples().display().to_string()]);
    assert_eq!(String::from_utf8_lossy(&again.stdout).matches(" unchanged").count(), 3);

    let table = String::from_utf8_lossy(&cluster.xenectl(&["get", "workflows"]).stdout).into_owned();
    assert!(table.starts_with("NAME"), "{table}");
    assert!(table.lines().any(|l| l.starts_with("ping-ci") && l.contains(" 1 ")), "{table}");
    let pipelines = String::from_utf8_lossy(&cluster.xenectl(&["get", "pipelines", "-o", "wide"]).stdout).into_owned();
    assert!(
        pipelines.contains("ping-ci/build") && pipelines.contains("NotScheduled") && pipelines.contains("no agents"),
        "{pipelines}"
    );
    let json = cluster.xenectl(&["get", "pipelines", "ping-ci/build", "-o", "json"]);
    let value: serde_json::Value = serde_json::from_slice(&json.stdout).expect("json output");
    assert_eq!(value["status"]["phase"], "NotScheduled");

    let describe = String::from_utf8_lossy(&cluster.xenectl(&["describe", "workflow", "ping-ci"]).stdout).into_owned();
    for expected in [
        "Name:              ping-ci",
        "nightly (cron \"0 3 * * *\" Europe/Berlin)",
        "checkout (1 step)",
        "└─ build (2 steps)",
        "└─ test (1 step)",
    ] {
        assert!(describe.contains(expected), "describe lacks {expected:?}:\n{describe}");
    }
    let fan =
        String::from_utf8_lossy(&cluster.xenectl(&["describe", "workflow", "fan-out-fan-in"]).stdout).into_owned();
    assert!(fan.contains("(see above)"), "a fan-in task shows once and is referred to after:\n{fan}");
    let mistaken = cluster.xenectl(&["describe", "workflow", "ping-ci/build"]);
    let stderr = String::from_utf8_lossy(&mistaken.stderr);
    assert!(
        !mistaken.status.success() && stderr.contains("xenectl describe pipeline ping-ci/build"),
        "a pipeline's name given as a workflow's says what to ask for: {stderr}"
    );
    let both = cluster.xenectl(&["get", "workflows", "hello", "-l", "team=infra"]);
    let stderr = String::from_utf8_lossy(&both.stderr);
    assert!(!both.status.success() && stderr.contains("cannot be used with"), "NAME and -l: {stderr}");

    let deleted = cluster.xenectl(&["delete", "workflow", "hello"]);
    assert!(String::from_utf8_lossy(&deleted.stdout).contains("workflow/hello deleted"));
    let missing = cluster.xenectl(&["get", "workflows", "hello"]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("not found"));
}
