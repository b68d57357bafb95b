//! Accepting manifests (DESIGN §6.1): every file in `examples/` parses and
//! validates, the §6.1 example is accepted as written, YAML round trips are
//! lossless, JSON is accepted, and the field-by-field decoder agrees with the
//! derived serde implementations that read stored workflows.

use std::path::PathBuf;

use xene_model::{
    parse_manifest, to_json, to_yaml, CatchUp, ConcurrencyPolicy, Cpu, Duration, EnvValue, Executor, Memory,
    SecretKeyRef, TaskGraph, Trigger, WebhookProvider, When, Workflow,
};

/// Every manifest in the repository's `examples/` folder, by file name.
fn examples() -> Vec<(String, String)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut files: Vec<(String, String)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| matches!(path.extension().and_then(|e| e.to_str()), Some("yaml" | "yml" | "json")))
        .map(|path| {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read_to_string(&path).unwrap())
        })
        .collect();
    files.sort();
    files
}

fn example(name: &str) -> String {
    examples().into_iter().find(|(file, _)| file == name).unwrap_or_else(|| panic!("examples/{name} is missing")).1
}

/// A manifest that sets every field, each in canonical form.
const KITCHEN_SINK: &str = r#"
apiVersion: xene.dev/v1
kind: Workflow
metadata:
  name: everything
  description: Sets every field once
  labels: {team: infra, app.kubernetes.io/name: everything}
  uid: 6f1c2a9e-0d3b-4c55-9a57-1f0e8c7d2b10
  creationTimestamp: 2024-05-01T12:00:00Z
  resourceVersion: 42
spec:
  triggers:
    nightly: {type: cron, cron: "0 0 3 * * *", timezone: Europe/Berlin, catchUp: All}
    on-push:
      type: webhook
      webhook: {provider: gitlab, secretRef: hook, events: [push, merge_request]}
  pipelines:
    build:
      description: Builds
      triggers: [nightly, on-push]
      agentSelector: {os: linux, arch: amd64}
      executor: {type: container, image: "golang:1.22", cpu: 500m, memory: 512Mi}
      env:
        PLAIN: value
        FROM_SECRET: {secretRef: db}
        FROM_KEY: {secretRef: db, key: password}
      concurrency: {policy: Allow, maxConcurrent: 3}
      timeout: 1h30m
      retries: {limit: 1, backoff: 250ms, maxBackoff: 1m}
      workingDir: /workspace/src
      tasks:
        compile:
          steps:
            - {name: compile, run: make}
        test:
          dependencies: [compile]
          retries: {limit: 2, backoff: 5s, maxBackoff: 30s}
          timeout: 20m
          executor: {type: process}
          env: {GOFLAGS: -count=1}
          workingDir: src
          when: always
          steps:
            - name: unit
              run: |
                go test ./...
                echo coverage=81 >> "$XENE_OUTPUT"
              env: {VERBOSE: "1"}
              timeout: 10m
        publish:
          dependencies: [test]
          when: on_failure
          steps:
            - {name: push, run: make publish}
"#;

#[test]
fn every_example_parses_and_validates() {
    let files = examples();
    let names: Vec<&str> = files.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(names, ["fan-out-fan-in.yaml", "hello.yaml", "ping-ci.yaml"]);
    for (name, text) in &files {
        let workflow = parse_manifest(text).unwrap_or_else(|errors| panic!("{name}:\n{errors}"));
        xene_model::validate(&workflow).unwrap();
        for pipeline in workflow.spec.pipelines.values() {
            TaskGraph::from_pipeline(pipeline).unwrap();
        }
    }
}

#[test]
fn the_design_example_is_accepted_as_written() {
    let workflow = parse_manifest(&example("ping-ci.yaml")).unwrap();
    assert_eq!(workflow.metadata.name, "ping-ci");
    assert_eq!(workflow.metadata.labels["team"], "infra");
    let Trigger::Cron(nightly) = &workflow.spec.triggers["nightly"] else {
        panic!("nightly is not a cron trigger");
    };
    assert_eq!(nightly.cron, "0 3 * * *");
    assert_eq!(nightly.timezone.as_deref(), Some("Europe/Berlin"));
    let Trigger::Webhook(on_push) = &workflow.spec.triggers["on-push"] else {
        panic!("on-push is not a webhook trigger");
    };
    assert_eq!(on_push.webhook.provider, WebhookProvider::Github);
    assert_eq!(on_push.webhook.secret_ref, "ping-hook-secret");
    assert_eq!(on_push.webhook.events, ["push"]);

    let build = &workflow.spec.pipelines["build"];
    assert_eq!(build.triggers, ["nightly", "on-push"]);
    assert_eq!(build.agent_selector["os"], "linux");
    assert_eq!(
        build.executor,
        Some(Executor::Container(xene_model::ContainerExecutor {
            image: "golang:1.22".into(),
            cpu: None,
            memory: None,
            pull_secret: None,
        }))
    );
    assert_eq!(build.env["CGO_ENABLED"], EnvValue::from("0"));
    assert_eq!(build.concurrency.as_ref().map(|c| c.policy()), Some(ConcurrencyPolicy::Forbid));
    assert_eq!(build.timeout, Some(Duration::from_secs(30 * 60)));

    let task = &build.tasks["build"];
    assert_eq!(task.dependencies, ["checkout"]);
    let retries = task.retries.as_ref().unwrap();
    assert_eq!((retries.limit, retries.backoff), (2, Some(Duration::from_secs(5))));
    let steps: Vec<&str> = task.steps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(steps, ["vet", "build"]);
    assert_eq!(task.steps[1].run, "go build -o bin/ping . && ls -la bin");
    assert_eq!(task.steps[1].timeout, Some(Duration::from_secs(600)));
    assert_eq!(
        build.tasks["test"].steps[0].env["TOKEN"],
        EnvValue::Secret(SecretKeyRef { secret_ref: "ping-token".into(), key: None })
    );

    let graph = TaskGraph::from_pipeline(build).unwrap();
    assert_eq!(graph.topological_order(), ["checkout", "build", "test"]);
}

#[test]
fn the_kitchen_sink_reads_every_field() {
    let workflow = parse_manifest(KITCHEN_SINK).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(workflow.metadata.resource_version, Some(42));
    let Trigger::Cron(nightly) = &workflow.spec.triggers["nightly"] else {
        panic!("nightly is not a cron trigger");
    };
    assert_eq!(nightly.catch_up, Some(CatchUp::All));
    let build = &workflow.spec.pipelines["build"];
    let Some(Executor::Container(container)) = &build.executor else {
        panic!("no container executor");
    };
    assert_eq!(container.cpu, Some(Cpu::from_millicores(500)));
    assert_eq!(container.memory, Some(Memory::from_bytes(512 << 20)));
    assert_eq!(
        build.env["FROM_KEY"],
        EnvValue::Secret(SecretKeyRef { secret_ref: "db".into(), key: Some("password".into()) })
    );
    let test = &build.tasks["test"];
    assert_eq!(test.when, Some(When::Always));
    assert_eq!(build.executor_for(test), Some(&Executor::Process(Default::default())));
    assert_eq!(build.tasks["publish"].when, Some(When::OnFailure));
}

/// The manifests every round-trip test runs on.
fn all_manifests() -> Vec<(String, String)> {
    let mut all = examples();
    all.push(("kitchen sink".into(), KITCHEN_SINK.into()));
    all
}

#[test]
fn yaml_round_trip_is_lossless() {
    for (name, text) in all_manifests() {
        let workflow = parse_manifest(&text).unwrap();
        let yaml = to_yaml(&workflow).unwrap();
        // Nothing is lost or changed: the written YAML holds exactly the
        // values of the original, field for field.
        let original: serde_json::Value = yaml_serde::from_str(&text).unwrap();
        let written: serde_json::Value = yaml_serde::from_str(&yaml).unwrap();
        assert_eq!(written, original, "{name}:\n{yaml}");
        // And reading it back gives the same workflow and the same text.
        let again = parse_manifest(&yaml).unwrap();
        assert_eq!(again, workflow, "{name}");
        assert_eq!(to_yaml(&again).unwrap(), yaml, "{name}");
    }
}

#[test]
fn json_is_accepted_and_round_trips() {
    for (name, text) in all_manifests() {
        let workflow = parse_manifest(&text).unwrap();
        let json = to_json(&workflow).unwrap();
        assert!(json.starts_with('{'));
        assert_eq!(parse_manifest(&json).unwrap(), workflow, "{name}:\n{json}");
    }
    let compact = r#"{"apiVersion":"xene.dev/v1","kind":"Workflow","metadata":{"name":"hello"},
        "spec":{"pipelines":{"main":{"tasks":{"greet":{"steps":[{"name":"hello","run":"echo hello"}]}}}}}}"#;
    let workflow = parse_manifest(compact).unwrap();
    assert_eq!(workflow.spec.pipelines["main"].tasks["greet"].steps[0].run, "echo hello");
    assert_eq!(workflow.spec.pipelines["main"].executor, None);
}

#[test]
fn serde_derives_agree_with_the_decoder() {
    for (name, text) in all_manifests() {
        let decoded = parse_manifest(&text).unwrap();
        let derived: Workflow = yaml_serde::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(derived, decoded, "{name}");
        let from_json: Workflow = serde_json::from_str(&to_json(&decoded).unwrap()).unwrap();
        assert_eq!(from_json, decoded, "{name}");
    }
}

#[test]
fn serde_derives_reject_unknown_fields_too() {
    let good = example("ping-ci.yaml");
    for (from, to) in [
        ("      timeout: 30m", "      timeout: 30m\n      tiemout: 1m"),
        ("executor: {type: container, image: golang:1.22}", "executor: {type: container, image: golang:1.22, x: 1}"),
        ("cron: \"0 3 * * *\"", "cron: \"0 3 * * *\"\n      extra: 1"),
        ("{name: vet, run: go vet ./...}", "{name: vet, run: go vet ./..., shell: bash}"),
        ("{TOKEN: {secretRef: ping-token}}", "{TOKEN: {secretRef: ping-token, path: x}}"),
    ] {
        assert!(good.contains(from), "{from}");
        let bad = good.replacen(from, to, 1);
        assert!(yaml_serde::from_str::<Workflow>(&bad).is_err(), "serde accepted {to}");
        assert!(parse_manifest(&bad).is_err(), "parse_manifest accepted {to}");
    }
}

#[test]
fn fan_out_fan_in_is_a_dag() {
    let workflow = parse_manifest(&example("fan-out-fan-in.yaml")).unwrap();
    let graph = TaskGraph::from_pipeline(&workflow.spec.pipelines["shards"]).unwrap();
    assert_eq!(graph.topological_order(), ["prepare", "shard-a", "shard-b", "shard-c", "report"]);
    assert_eq!(graph.dependencies("report"), ["shard-a", "shard-b", "shard-c"]);
}

#[test]
fn ten_thousand_tasks_fit_the_limits() {
    // The largest pipeline allowed, written compactly, fits the byte limit.
    let mut text = String::from(
        "apiVersion: xene.dev/v1\nkind: Workflow\nmetadata: {name: big}\nspec:\n  pipelines:\n    main:\n      tasks:\n",
    );
    for i in 0..xene_model::limits::MAX_TASKS_PER_PIPELINE {
        let dependencies = if i == 0 { String::new() } else { format!("dependencies: [t{}], ", i - 1) };
        text.push_str(&format!("        t{i}: {{{dependencies}steps: [{{name: s, run: make}}]}}\n"));
    }
    assert!(text.len() < xene_model::limits::MAX_MANIFEST_BYTES, "{} bytes", text.len());
    let workflow = parse_manifest(&text).unwrap();
    assert_eq!(workflow.spec.pipelines["main"].tasks.len(), 10_000);
}
