//! Webhook triggers (DESIGN §8.2): `POST /api/v1/webhooks/{workflow}/{trigger}` on every
//! server. A delivery is verified over its raw body, in constant time, before any of it is
//! parsed; then filtered by event, deduplicated on its delivery ID, and turned into one run of
//! each pipeline that lists the trigger, all in one transaction with the delivery record.
//!
//! Answers: `202` with the run IDs (also for a redelivery, with the runs the first delivery
//! made), `200` with no runs for an event the filter drops, `401` bad or missing signature,
//! `404` unknown workflow or trigger, `413` over [`MAX_BODY_BYTES`], `422` a payload the filter
//! cannot read. Only `202` creates runs. The sender is not authenticated until its signature
//! is checked, so a `404` or `500` answer says nothing of the cluster's configuration (which
//! workflows, triggers and secrets there are): [`WebhookError::public`] is what it is told,
//! and the full reason goes to the server's log.

use std::collections::BTreeMap;

use axum::http::HeaderMap;
use chrono::{DateTime, Utc};
use hmac::{KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use xene_model::{Trigger, WebhookProvider};
use xene_raft_store::{Compare, Op, Txn};

use crate::error::ServerError;
use crate::keys;
use crate::node::ClusterNode;
use crate::runs;
use crate::secrets::SecretRecord;

/// The largest delivery body accepted; stored whole, it stays under the store's 1 MiB value
/// limit.
pub const MAX_BODY_BYTES: usize = 1_000_000;

/// How long a delivery ID is remembered; a redelivery after this makes a new run.
pub const DELIVERY_MEMORY: chrono::Duration = chrono::Duration::days(7);

/// Why a delivery made no run. `Display` is the whole reason, for the server's log; the
/// sender is told [`WebhookError::public`].
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// Unknown workflow or trigger (404).
    #[error("{0}")]
    NotFound(String),
    /// Missing or wrong signature or token (401).
    #[error("{0}")]
    Unauthorized(String),
    /// A payload the event filter cannot read (422).
    #[error("{0}")]
    Unreadable(String),
    /// The trigger's secret is missing or ambiguous: the operator must fix it (500).
    #[error("{0}")]
    Misconfigured(String),
    /// The cluster could not take the delivery (503 and the like).
    #[error(transparent)]
    Server(#[from] ServerError),
}

impl WebhookError {
    /// What the (not yet authenticated) sender is told: the reason, except where it would
    /// describe the cluster's configuration. `url` is the delivery's path.
    pub fn public(&self, url: &str) -> String {
        match self {
            WebhookError::NotFound(_) => format!(
                "no webhook at {url}; check the URL against the one `xenectl describe pipeline WORKFLOW/PIPELINE` prints"
            ),
            WebhookError::Misconfigured(_) => {
                "this webhook's signing secret is missing or unusable; the server's log says what an operator must fix"
                    .to_string()
            }
            other => other.to_string(),
        }
    }
}

/// What a delivery made.
#[derive(Debug, PartialEq, Eq)]
pub enum Accepted {
    /// The runs started, or, for a redelivery, the runs the first delivery started.
    Runs { runs: Vec<String>, duplicate: bool },
    /// Nothing: the event is filtered out, or no pipeline uses the trigger.
    Ignored(String),
}

/// A delivery ID as remembered.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct DeliveryRecord {
    pub(crate) runs: Vec<String>,
    received: DateTime<Utc>,
    /// For an API request with an idempotency key: a digest of its parameters, so that the
    /// key sent again with other parameters is refused rather than answered with a run that
    /// does not have them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) parameters: Option<String>,
}

impl DeliveryRecord {
    /// The record of an API request with an idempotency key, received now, that made `run`.
    pub(crate) fn api_request(run: String, parameters: &BTreeMap<String, String>) -> Self {
        DeliveryRecord { runs: vec![run], received: Utc::now(), parameters: Some(parameters_digest(parameters)) }
    }
}

/// A digest of run parameters (keys and values, in key order).
pub(crate) fn parameters_digest(parameters: &BTreeMap<String, String>) -> String {
    let mut digest = Sha256::new();
    for (key, value) in parameters {
        for part in [key, value] {
            digest.update((part.len() as u64).to_le_bytes());
            digest.update(part.as_bytes());
        }
    }
    hex::encode(digest.finalize())
}

/// Receives one delivery of `trigger` of `workflow`.
pub async fn receive(
    node: &ClusterNode,
    workflow: &str,
    trigger: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Accepted, WebhookError> {
    node.read_barrier().await?;
    let (spec, spec_revision) = match runs::workflow(node, workflow).await {
        Ok(found) => found,
        Err(ServerError::NotFound(message)) => return Err(WebhookError::NotFound(message)),
        Err(e) => return Err(e.into()),
    };
    let hook = match spec.spec.triggers.get(trigger) {
        Some(Trigger::Webhook(hook)) => &hook.webhook,
        _ => {
            let known: Vec<&str> = spec
                .spec
                .triggers
                .iter()
                .filter(|(_, t)| matches!(t, Trigger::Webhook(_)))
                .map(|(name, _)| name.as_str())
                .collect();
            let known = if known.is_empty() { "none".to_string() } else { known.join(", ") };
            return Err(WebhookError::NotFound(format!(
                "workflow {workflow:?} has no webhook trigger {trigger:?}; its webhook triggers: {known}"
            )));
        }
    };
    let secret = signing_secret(node, &hook.secret_ref).await?;
    verify(hook.provider, secret.as_bytes(), headers, body).map_err(WebhookError::Unauthorized)?;

    // Verified: now the payload may be read.
    let json = parse_payload(hook.provider, body)?;
    let event = event(hook.provider, headers, json.as_ref());
    if !hook.events.is_empty() {
        let Some(event) = &event else {
            return Err(WebhookError::Unreadable(format!(
                "cannot tell this delivery's event ({}), which trigger {trigger:?} filters on",
                event_source(hook.provider)
            )));
        };
        if !hook.events.iter().any(|wanted| wanted == event) {
            return Ok(Accepted::Ignored(format!(
                "event {event:?} is not one trigger {trigger:?} runs on ({})",
                hook.events.join(", ")
            )));
        }
    }
    let pipelines: Vec<&String> =
        spec.spec.pipelines.iter().filter(|(_, p)| p.triggers.iter().any(|t| t == trigger)).map(|(n, _)| n).collect();
    if pipelines.is_empty() {
        return Ok(Accepted::Ignored(format!("no pipeline of {workflow:?} lists trigger {trigger:?}")));
    }

    let delivery = delivery_id(hook.provider, headers);
    let delivery_key = delivery.as_deref().map(|id| keys::delivery(workflow, trigger, &key_safe(id)));
    if let Some(key) = &delivery_key {
        // The read barrier at the top covers this read.
        if let Some(record) = remembered(node, key).await? {
            return Ok(Accepted::Runs { runs: record.runs, duplicate: true });
        }
    }
    let mut parameters = essentials(json.as_ref());
    if let Some(event) = event {
        parameters.insert("XENE_EVENT".into(), event);
    }
    if let Some(id) = &delivery {
        parameters.insert("XENE_DELIVERY".into(), id.chars().take(200).collect());
    }
    let mut made = Vec::new();
    let mut ops = Vec::new();
    // One copy of the body per Raft entry: a body of up to 1 MB for each of many pipelines must
    // not make one entry of many megabytes (a follower must take an entry within a heartbeat
    // interval). The first run's payload travels with the runs; the others' are written ahead,
    // and removed again if the runs are not made.
    let mut ahead = Vec::new();
    for pipeline in pipelines {
        let new = runs::pending(&spec, spec_revision, pipeline, trigger, parameters.clone())?;
        let payload = Op::Put { key: keys::payload(&new.run.metadata.name).into_bytes(), value: body.to_vec() };
        if made.is_empty() {
            ops.push(payload);
        } else {
            node.txn(Txn { compare: vec![], success: vec![payload], failure: vec![] }).await?;
            ahead.push(Op::Delete { key: keys::payload(&new.run.metadata.name).into_bytes() });
        }
        ops.push(Op::Put { key: new.key.clone().into_bytes(), value: new.value.clone() });
        made.push(new);
    }
    let mut compare = vec![Compare::mod_revision(keys::workflow(workflow), spec_revision)];
    if let Some(key) = &delivery_key {
        let record = DeliveryRecord {
            runs: made.iter().map(|n| n.run.metadata.name.clone()).collect(),
            received: Utc::now(),
            parameters: None,
        };
        let value = serde_json::to_vec(&record).map_err(|e| ServerError::Internal(e.to_string()))?;
        compare.push(Compare::absent(key.clone()));
        ops.push(Op::Put { key: key.clone().into_bytes(), value });
    }
    let response = node.txn(Txn { compare, success: ops, failure: vec![] }).await?;
    if !response.succeeded {
        if !ahead.is_empty() {
            if let Err(e) = node.txn(Txn { compare: vec![], success: ahead, failure: vec![] }).await {
                tracing::warn!(error = %e, "removing the payloads of runs that were not made failed");
            }
        }
        // The same delivery reached another server first, or the workflow changed under us.
        if let Some(key) = &delivery_key {
            node.read_barrier().await?;
            if let Some(record) = remembered(node, key).await? {
                return Ok(Accepted::Runs { runs: record.runs, duplicate: true });
            }
        }
        return Err(ServerError::unavailable(format!(
            "workflow {workflow:?} changed while the delivery was taken; send it again"
        ))
        .into());
    }
    let runs = made.into_iter().map(|new| new.created(response.revision).run.metadata.name).collect();
    Ok(Accepted::Runs { runs, duplicate: false })
}

/// The record of a delivery, from this server's applied state (callers pass a read barrier).
pub(crate) async fn remembered(node: &ClusterNode, key: &str) -> Result<Option<DeliveryRecord>, ServerError> {
    let found = node.reader.range(key.as_bytes().to_vec(), false, 0).await?;
    Ok(found.kvs.first().and_then(|kv| serde_json::from_slice(&kv.value).ok()))
}

/// Deletes delivery records older than [`DELIVERY_MEMORY`]; returns how many.
pub async fn forget_old_deliveries(node: &ClusterNode) -> Result<usize, ServerError> {
    let found = node.reader.range(keys::DELIVERIES.as_bytes().to_vec(), true, 0).await?;
    let cutoff = Utc::now() - DELIVERY_MEMORY;
    let old: Vec<Op> = found
        .kvs
        .iter()
        .filter(|kv| serde_json::from_slice::<DeliveryRecord>(&kv.value).is_ok_and(|r| r.received < cutoff))
        .take(1000)
        .map(|kv| Op::Delete { key: kv.key.clone() })
        .collect();
    let count = old.len();
    if count > 0 {
        node.txn(Txn { compare: vec![], success: old, failure: vec![] }).await?;
    }
    Ok(count)
}

/// The signing key or token a trigger's `secretRef` names: the secret's only value, or its
/// value under the key `secret` or `token`.
async fn signing_secret(node: &ClusterNode, name: &str) -> Result<String, WebhookError> {
    let key = named_signing_key(node, name).await?;
    if key.trim().is_empty() {
        // HMAC takes an empty key, and anyone can sign with it.
        tracing::warn!(secret = name, "a webhook trigger's signing key is empty; deliveries are refused");
        return Err(WebhookError::Misconfigured(format!(
            "the trigger's secret {name:?} holds an empty signing key, which anyone could sign with; \
             set it again: xenectl secret set {name} --from-literal secret=VALUE"
        )));
    }
    Ok(key)
}

/// The value of secret `name` that signs a trigger's deliveries, as stored.
async fn named_signing_key(node: &ClusterNode, name: &str) -> Result<String, WebhookError> {
    let found = node.reader.range(keys::secret(name).into_bytes(), false, 0).await.map_err(ServerError::from)?;
    let Some(record) = found.kvs.first().and_then(|kv| serde_json::from_slice::<SecretRecord>(&kv.value).ok()) else {
        tracing::warn!(secret = name, "a webhook trigger's secret does not exist");
        return Err(WebhookError::Misconfigured(format!(
            "the trigger's secret {name:?} does not exist; create it with: xenectl secret set {name} --from-literal secret=VALUE"
        )));
    };
    if record.data.len() == 1 {
        if let Some(value) = record.data.values().next() {
            return Ok(value.clone());
        }
    }
    for key in ["secret", "token"] {
        if let Some(value) = record.data.get(key) {
            return Ok(value.clone());
        }
    }
    Err(WebhookError::Misconfigured(format!(
        "the trigger's secret {name:?} has several keys and none is named \"secret\" or \"token\"; \
         keep one key, or name the signing key \"secret\""
    )))
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim).filter(|v| !v.is_empty())
}

/// The header that carries a provider's signature, as named in error messages.
fn signature_header(provider: WebhookProvider) -> &'static str {
    match provider {
        WebhookProvider::Github => "X-Hub-Signature-256",
        WebhookProvider::Gitea => "X-Gitea-Signature",
        WebhookProvider::Forgejo => "X-Forgejo-Signature",
        WebhookProvider::Gitlab => "X-Gitlab-Token",
        WebhookProvider::Generic => "X-Xene-Signature-256",
    }
}

/// Checks a delivery's signature (or GitLab's token) against `secret`, in constant time.
/// The error says what was wrong, never what was expected.
pub fn verify(provider: WebhookProvider, secret: &[u8], headers: &HeaderMap, body: &[u8]) -> Result<(), String> {
    let name = signature_header(provider);
    let presented = match provider {
        WebhookProvider::Forgejo => header(headers, name).or_else(|| header(headers, "X-Gitea-Signature")),
        _ => header(headers, name),
    };
    let Some(presented) = presented else {
        return Err(format!("the delivery has no {name} header; configure the webhook's secret at the sender"));
    };
    if provider == WebhookProvider::Gitlab {
        // A shared token, not a signature: compare digests so neither length nor content leaks.
        let equal = Sha256::digest(presented.as_bytes()).ct_eq(&Sha256::digest(secret));
        return if bool::from(equal) { Ok(()) } else { Err(format!("{name} does not match the trigger's secret")) };
    }
    let hex_signature = match provider {
        WebhookProvider::Github => presented.strip_prefix("sha256="),
        _ => Some(presented.strip_prefix("sha256=").unwrap_or(presented)),
    };
    let signature = hex_signature.and_then(|text| hex::decode(text).ok()).ok_or_else(|| {
        format!(
            "{name} is not a hex HMAC-SHA256{}",
            if provider == WebhookProvider::Github { " after \"sha256=\"" } else { "" }
        )
    })?;
    let mut mac = <hmac::Hmac<Sha256> as KeyInit>::new_from_slice(secret).map_err(|e| format!("signing key: {e}"))?;
    mac.update(body);
    mac.verify_slice(&signature).map_err(|_| format!("{name} does not match the body signed with the trigger's secret"))
}

/// Where a provider names the event, for error messages.
fn event_source(provider: WebhookProvider) -> &'static str {
    match provider {
        WebhookProvider::Github => "no X-GitHub-Event header",
        WebhookProvider::Gitea => "no X-Gitea-Event header",
        WebhookProvider::Forgejo => "no X-Forgejo-Event or X-Gitea-Event header",
        WebhookProvider::Gitlab => "no X-Gitlab-Event header",
        WebhookProvider::Generic => "no X-Xene-Event header and no \"event\" field in a JSON body",
    }
}

/// The event type, in the sender's own words (`push`, `pull_request`); GitLab's
/// `Push Hook` becomes `push` and `Merge Request Hook` `merge_request`, its `object_kind`s.
pub fn event(provider: WebhookProvider, headers: &HeaderMap, json: Option<&serde_json::Value>) -> Option<String> {
    let found = match provider {
        WebhookProvider::Github => header(headers, "X-GitHub-Event").map(String::from),
        WebhookProvider::Gitea => header(headers, "X-Gitea-Event").map(String::from),
        WebhookProvider::Forgejo => {
            header(headers, "X-Forgejo-Event").or_else(|| header(headers, "X-Gitea-Event")).map(String::from)
        }
        WebhookProvider::Gitlab => header(headers, "X-Gitlab-Event")
            .map(|e| e.trim_end_matches(" Hook").trim().to_ascii_lowercase().replace(' ', "_")),
        WebhookProvider::Generic => header(headers, "X-Xene-Event")
            .map(String::from)
            .or_else(|| json.and_then(|j| j.get("event")).and_then(|e| e.as_str()).map(String::from)),
    };
    found.filter(|e| !e.is_empty())
}

/// The delivery ID a sender keeps across redeliveries, if it sends one.
pub fn delivery_id(provider: WebhookProvider, headers: &HeaderMap) -> Option<String> {
    let names: &[&str] = match provider {
        WebhookProvider::Github => &["X-GitHub-Delivery"],
        WebhookProvider::Gitea => &["X-Gitea-Delivery"],
        WebhookProvider::Forgejo => &["X-Forgejo-Delivery", "X-Gitea-Delivery"],
        WebhookProvider::Gitlab => &["Idempotency-Key", "X-Gitlab-Event-UUID"],
        WebhookProvider::Generic => &["X-Xene-Delivery"],
    };
    names.iter().find_map(|name| header(headers, name)).map(String::from)
}

/// A delivery ID as a key segment: as sent when it is short and plain, else its SHA-256.
pub(crate) fn key_safe(id: &str) -> String {
    if id.len() <= 128 && id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) {
        id.to_string()
    } else {
        hex::encode(Sha256::digest(id.as_bytes()))
    }
}

/// The payload as JSON. The forges always send a JSON object; a generic sender may send
/// anything, and then nothing is read from it.
fn parse_payload(provider: WebhookProvider, body: &[u8]) -> Result<Option<serde_json::Value>, WebhookError> {
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(value @ serde_json::Value::Object(_)) => Ok(Some(value)),
        _ if provider == WebhookProvider::Generic => Ok(None),
        Ok(_) => Err(WebhookError::Unreadable("the payload is JSON but not an object".into())),
        Err(e) => Err(WebhookError::Unreadable(format!(
            "the payload is not JSON ({e}); set the webhook's content type to application/json at the sender"
        ))),
    }
}

/// The run parameters a payload gives: `XENE_REF`, `XENE_SHA` and `XENE_REPOSITORY`, from the
/// fields GitHub, Gitea, Forgejo and GitLab use for pushes and pull/merge requests.
pub fn essentials(json: Option<&serde_json::Value>) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let Some(json) = json else { return out };
    let text = |pointers: &[&str]| {
        pointers
            .iter()
            .find_map(|p| json.pointer(p).and_then(|v| v.as_str()).filter(|s| !s.is_empty()).map(String::from))
    };
    let fields = [
        ("XENE_REF", &["/ref", "/pull_request/head/ref", "/object_attributes/source_branch"][..]),
        ("XENE_SHA", &["/after", "/checkout_sha", "/pull_request/head/sha", "/object_attributes/last_commit/id"][..]),
        ("XENE_REPOSITORY", &["/repository/full_name", "/project/path_with_namespace"][..]),
    ];
    for (name, pointers) in fields {
        if let Some(value) = text(pointers) {
            out.insert(name.to_string(), value.chars().take(1000).collect());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    fn sign(secret: &str, body: &[u8]) -> String {
        let mut mac = <hmac::Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(body);
        hex::encode(mac.finalize().into_bytes())
    }

    const GITHUB_SECRET: &str = "It's a Secret to Everybody";
    const GITHUB_BODY: &[u8] = b"Hello, World!";
    const GITHUB_SIGNATURE: &str = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";

    #[test]
    fn github_published_vector_passes() {
        // https://docs.github.com/en/webhooks/using-webhooks/validating-webhook-deliveries
        assert_eq!(format!("sha256={}", sign(GITHUB_SECRET, GITHUB_BODY)), GITHUB_SIGNATURE);
        let ok = headers(&[("X-Hub-Signature-256", GITHUB_SIGNATURE)]);
        assert_eq!(verify(WebhookProvider::Github, GITHUB_SECRET.as_bytes(), &ok, GITHUB_BODY), Ok(()));
        // One byte of body changed, the wrong secret, no prefix, no header: refused.
        assert!(verify(WebhookProvider::Github, GITHUB_SECRET.as_bytes(), &ok, b"Hello, World?").is_err());
        assert!(verify(WebhookProvider::Github, b"another secret", &ok, GITHUB_BODY).is_err());
        let bare = headers(&[("X-Hub-Signature-256", &GITHUB_SIGNATURE["sha256=".len()..])]);
        let error = verify(WebhookProvider::Github, GITHUB_SECRET.as_bytes(), &bare, GITHUB_BODY).unwrap_err();
        assert!(error.contains("after \"sha256=\""), "{error}");
        let error =
            verify(WebhookProvider::Github, GITHUB_SECRET.as_bytes(), &HeaderMap::new(), GITHUB_BODY).unwrap_err();
        assert!(error.contains("no X-Hub-Signature-256 header"), "{error}");
    }

    #[test]
    fn each_provider_accepts_its_own_signature_and_refuses_a_wrong_one() {
        let body = br#"{"ref":"refs/heads/main"}"#;
        let good = sign("s3cret", body);
        let bad = sign("not-it", body);
        let cases: [(WebhookProvider, &'static str, String, String); 5] = [
            (WebhookProvider::Github, "X-Hub-Signature-256", format!("sha256={good}"), format!("sha256={bad}")),
            (WebhookProvider::Gitea, "X-Gitea-Signature", good.clone(), bad.clone()),
            (WebhookProvider::Forgejo, "X-Forgejo-Signature", good.clone(), bad.clone()),
            (WebhookProvider::Gitlab, "X-Gitlab-Token", "s3cret".into(), "s3cre".into()),
            (WebhookProvider::Generic, "X-Xene-Signature-256", format!("sha256={good}"), bad.clone()),
        ];
        for (provider, name, accepted, refused) in cases {
            assert_eq!(verify(provider, b"s3cret", &headers(&[(name, &accepted)]), body), Ok(()), "{provider:?}");
            let error = verify(provider, b"s3cret", &headers(&[(name, &refused)]), body).unwrap_err();
            assert!(error.contains(name), "{provider:?}: {error}");
        }
        // Forgejo also sends the Gitea header.
        assert_eq!(
            verify(WebhookProvider::Forgejo, b"s3cret", &headers(&[("X-Gitea-Signature", &good)]), body),
            Ok(())
        );
    }

    #[test]
    fn reads_event_delivery_and_essentials() {
        let gitlab = headers(&[("X-Gitlab-Event", "Merge Request Hook"), ("Idempotency-Key", "abc")]);
        assert_eq!(event(WebhookProvider::Gitlab, &gitlab, None).as_deref(), Some("merge_request"));
        assert_eq!(delivery_id(WebhookProvider::Gitlab, &gitlab).as_deref(), Some("abc"));
        let generic: serde_json::Value = serde_json::json!({"event": "deploy"});
        assert_eq!(event(WebhookProvider::Generic, &HeaderMap::new(), Some(&generic)).as_deref(), Some("deploy"));
        let push = serde_json::json!({
            "ref": "refs/heads/main", "after": "0123abcd",
            "repository": {"full_name": "fristonio/ping"}
        });
        let params = essentials(Some(&push));
        assert_eq!(params["XENE_REF"], "refs/heads/main");
        assert_eq!(params["XENE_SHA"], "0123abcd");
        assert_eq!(params["XENE_REPOSITORY"], "fristonio/ping");
        assert_eq!(key_safe("72d3162e-cc78-11e3-81ab-4c9367dc0958"), "72d3162e-cc78-11e3-81ab-4c9367dc0958");
        assert_eq!(key_safe("a/b").len(), 64);
    }
}
