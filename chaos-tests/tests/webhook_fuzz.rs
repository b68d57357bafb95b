//! Bad input never crashes a server (DESIGN §14), for webhook handling: a seeded run of
//! deliveries with mutated bodies (signed over the mutated bytes half the time, so that parsing
//! is reached), odd signatures, events, delivery IDs and paths, against a real server. Every
//! answer must be one of the documented codes, the server must stay up, and the runs that
//! exist afterwards must be exactly those that `202` answers named. The seed is printed; set
//! `XENE_FUZZ_SEED` to replay and `XENE_FUZZ_CASES` to run longer.

use std::collections::BTreeSet;

use hmac::{KeyInit, Mac};
use xene_chaos_tests::harness::{ClusterOptions, TestCluster};
use xene_chaos_tests::rest;
use xene_proto as pb;
use xene_proto::object_service_client::ObjectServiceClient;
use xene_proto::run_service_client::RunServiceClient;

const MANIFEST: &str = r#"
apiVersion: xene.dev/v1
kind: Workflow
metadata: {name: fuzz}
spec:
  triggers:
    github: {type: webhook, webhook: {provider: github, secretRef: fuzz-secret, events: [push]}}
    gitea: {type: webhook, webhook: {provider: gitea, secretRef: fuzz-secret}}
    forgejo: {type: webhook, webhook: {provider: forgejo, secretRef: fuzz-secret}}
    gitlab: {type: webhook, webhook: {provider: gitlab, secretRef: fuzz-secret, events: [push]}}
    generic: {type: webhook, webhook: {provider: generic, secretRef: fuzz-secret}}
  pipelines:
    build:
      triggers: [github, gitea, forgejo, gitlab, generic]
      tasks:
        show:
          steps:
            - {name: event, run: 'echo "$XENE_EVENT $XENE_REF"'}
"#;

const SECRET: &str = "fuzz-signing-key";

/// The run's random choices, all from one seed, so a failure can be replayed.
struct Rng(rand::rngs::StdRng);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(rand::SeedableRng::seed_from_u64(seed))
    }

    fn next(&mut self) -> u64 {
        rand::Rng::random(&mut self.0)
    }

    fn below(&mut self, n: usize) -> usize {
        rand::Rng::random_range(&mut self.0, 0..n.max(1))
    }

    fn pick<'a, T: ?Sized>(&mut self, items: &[&'a T]) -> &'a T {
        items[self.below(items.len())]
    }
}

fn sign(body: &[u8]) -> String {
    let mut mac = <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(SECRET.as_bytes()).expect("key");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

const BODIES: [&str; 4] = [
    r#"{"ref":"refs/heads/main","after":"0123abcd","repository":{"full_name":"o/r"}}"#,
    r#"{"object_kind":"push","ref":"refs/heads/dev","checkout_sha":"feed","project":{"path_with_namespace":"g/p"}}"#,
    r#"{"pull_request":{"head":{"ref":"topic","sha":"beef"}},"event":"deploy"}"#,
    r#"{"event":"push","values":[1,2.5,null,true,"\u00e9"],"nested":{"a":{"b":{"c":[]}}}}"#,
];

/// A body: a sample mutated a few times, random bytes, deep nesting, or a big one.
fn body(rng: &mut Rng) -> Vec<u8> {
    match rng.below(10) {
        0 => (0..rng.below(300)).map(|_| rng.next() as u8).collect(),
        1 => {
            let depth = 1 + rng.below(50_000);
            format!("{}{}", "[".repeat(depth), "]".repeat(depth)).into_bytes()
        }
        2 => {
            let size = 1_000_000 - 64 + rng.below(128);
            let mut big = br#"{"ref":"refs/heads/big","pad":""#.to_vec();
            big.resize(size.saturating_sub(2), b'x');
            big.extend_from_slice(b"\"}");
            big
        }
        _ => {
            let mut bytes = BODIES[rng.below(BODIES.len())].as_bytes().to_vec();
            for _ in 0..rng.below(4) {
                if bytes.is_empty() {
                    break;
                }
                let at = rng.below(bytes.len());
                match rng.below(3) {
                    0 => {
                        let end = (at + 1 + rng.below(8)).min(bytes.len());
                        bytes.drain(at..end);
                    }
                    1 => {
                        let piece: &[u8] =
                            rng.pick(&[&b"{"[..], b"}", b"[", b"\"", b"\\", b",", b":", b"\xff", b"null"]);
                        bytes.splice(at..at, piece.iter().copied());
                    }
                    _ => bytes[at] = rng.next() as u8,
                }
            }
            bytes
        }
    }
}

/// A header value: printable, odd, long or not ASCII; never CR or LF (which would end it).
fn odd_value(rng: &mut Rng) -> String {
    match rng.below(6) {
        0 => String::new(),
        1 => "ß🦀 not ascii".into(),
        2 => "x".repeat(1 + rng.below(9_000)),
        3 => "sha256=".into(),
        4 => format!("sha256={}", "zz".repeat(32)),
        _ => (0..rng.below(80)).map(|_| char::from(b' ' + (rng.next() % 95) as u8)).collect(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_webhook_deliveries_get_documented_answers_and_make_only_the_runs_they_say() {
    std::env::set_var("XENE_RUN_HISTORY", "100000");
    let seed = std::env::var("XENE_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x000F_A22E_u64);
    let cases: usize = std::env::var("XENE_FUZZ_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(300);
    println!("seed {seed}, {cases} cases");
    let cluster = TestCluster::start(ClusterOptions { servers: 1, ..ClusterOptions::default() }).await;
    let set = cluster.xenectl(&["secret", "set", "fuzz-secret", "--from-literal", &format!("secret={SECRET}")]);
    assert!(set.status.success(), "{}", String::from_utf8_lossy(&set.stderr));
    ObjectServiceClient::new(cluster.channel(0))
        .apply(cluster.request(pb::ApplyRequest { manifest: MANIFEST.into() }))
        .await
        .expect("apply");
    let http = cluster.servers[0].http.clone();

    let long_name = "w".repeat(300);
    let mut rng = Rng::new(seed);
    let mut made: BTreeSet<String> = BTreeSet::new();
    let mut answers: std::collections::BTreeMap<u16, usize> = Default::default();
    for case in 0..cases {
        let trigger = rng.pick(&["github", "gitea", "forgejo", "gitlab", "generic", "nope", "%FF%FE", "..", "a%2Fb"]);
        let workflow = if rng.below(10) == 0 { rng.pick(&["nope", "%C3%28", long_name.as_str()]) } else { "fuzz" };
        let path = format!("/api/v1/webhooks/{workflow}/{trigger}");
        let body = body(&mut rng);
        let good = rng.below(2) == 0;
        let signature = if good { sign(&body) } else { odd_value(&mut rng) };
        let mut headers: Vec<(&str, String)> = vec![("Content-Type", "application/json".into())];
        let (signature_header, event_header, delivery_header, signature) = match trigger {
            "github" => ("X-Hub-Signature-256", "X-GitHub-Event", "X-GitHub-Delivery", format!("sha256={signature}")),
            "gitea" => ("X-Gitea-Signature", "X-Gitea-Event", "X-Gitea-Delivery", signature),
            "forgejo" => ("X-Forgejo-Signature", "X-Forgejo-Event", "X-Forgejo-Delivery", signature),
            "gitlab" => ("X-Gitlab-Token", "X-Gitlab-Event", "X-Gitlab-Event-UUID", {
                if good {
                    SECRET.into()
                } else {
                    signature
                }
            }),
            _ => ("X-Xene-Signature-256", "X-Xene-Event", "X-Xene-Delivery", format!("sha256={signature}")),
        };
        if rng.below(8) != 0 {
            headers.push((signature_header, signature));
        }
        if rng.below(4) != 0 {
            let event = match rng.below(4) {
                0 => "Push Hook".to_string(),
                1 => "push".to_string(),
                2 => "issues".to_string(),
                _ => odd_value(&mut rng),
            };
            headers.push((event_header, event));
        }
        if rng.below(3) != 0 {
            // A small pool, so that redeliveries happen too.
            let delivery = match rng.below(5) {
                0 => odd_value(&mut rng),
                _ => format!("d-{}", rng.below(40)),
            };
            headers.push((delivery_header, delivery));
        }
        let (status, answer) = rest::post(&http, &path, &headers, &body).await;
        *answers.entry(status).or_default() += 1;
        assert!(
            [200, 202, 400, 401, 404, 413, 422].contains(&status),
            "case {case} of seed {seed}: {status} for POST {path} with {} bytes and headers {:?}: {answer}",
            body.len(),
            headers.iter().map(|(n, v)| format!("{n}: {}", v.chars().take(80).collect::<String>())).collect::<Vec<_>>()
        );
        if status == 202 {
            let value: serde_json::Value = serde_json::from_str(&answer).expect("a 202 answer is JSON");
            let runs = value["runs"].as_array().expect("a 202 answer names runs");
            assert!(!runs.is_empty(), "case {case}: {answer}");
            made.extend(runs.iter().map(|r| r.as_str().expect("a run ID").to_string()));
        }
    }
    println!("answers by status: {answers:?}; {} runs made", made.len());
    assert!(cluster.servers[0].is_running(), "the server died:\n{}", cluster.servers[0].log_tail(40));
    let listed = RunServiceClient::new(cluster.channel(0))
        .list(cluster.request(pb::ListRunsRequest {
            workflow: "fuzz".into(),
            pipeline: String::new(),
            phase: String::new(),
        }))
        .await
        .expect("list runs")
        .into_inner();
    let exist: BTreeSet<String> = listed
        .runs
        .iter()
        .map(|r| serde_json::from_str::<xene_model::RunObject>(&r.json).expect("run json").metadata.name)
        .collect();
    assert_eq!(exist, made, "the runs that exist are exactly those that 202 answers named");
    assert!(answers.get(&202).copied().unwrap_or(0) > 0 && answers.get(&401).copied().unwrap_or(0) > 0, "{answers:?}");
}
