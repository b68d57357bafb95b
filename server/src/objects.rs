//! Workflows and their pipeline status objects in the store (DESIGN §6.3): apply with
//! optimistic concurrency, get, list with label selectors, delete.
//!
//! A workflow lives at `/xene/objects/workflows/<name>` as JSON; its `resourceVersion` is the
//! key's mod revision, never stored in the value. Applying a workflow also creates one
//! `Pipeline` status object per pipeline; re-applying an unchanged manifest writes nothing.

use chrono::Utc;
use xene_model::{parse_manifest, LabelSelector, PipelineObject, Workflow, PIPELINE_KIND, REASON_NO_AGENTS};
use xene_raft_store::{Compare, KeyValue, Op, Txn};

use crate::error::{Result, ServerError};
use crate::keys;
use crate::node::ClusterNode;

/// The kinds of object the API knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Workflow,
    Pipeline,
}

impl Kind {
    /// Reads a kind as users write it: `workflow`, `workflows`, `Workflow`, `wf`, ...
    pub fn parse(text: &str) -> Result<Kind> {
        match text.to_ascii_lowercase().as_str() {
            "workflow" | "workflows" | "wf" => Ok(Kind::Workflow),
            "pipeline" | "pipelines" | "pl" => Ok(Kind::Pipeline),
            _ => {
                Err(ServerError::InvalidArgument(format!("unknown kind {text:?}; the kinds are Workflow and Pipeline")))
            }
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::Workflow => xene_model::KIND,
            Kind::Pipeline => PIPELINE_KIND,
        }
    }
}

/// An object read from the store: its JSON (with `resourceVersion` filled in) and revision.
#[derive(Debug, Clone)]
pub struct StoredObject {
    pub kind: Kind,
    pub name: String,
    pub resource_version: u64,
    pub json: String,
    pub labels: std::collections::BTreeMap<String, String>,
}

/// What an apply did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyResult {
    Created,
    Configured,
    Unchanged,
}

impl ApplyResult {
    pub fn as_str(self) -> &'static str {
        match self {
            ApplyResult::Created => "created",
            ApplyResult::Configured => "configured",
            ApplyResult::Unchanged => "unchanged",
        }
    }
}

fn internal(e: impl std::fmt::Display) -> ServerError {
    ServerError::Internal(e.to_string())
}

fn decode_workflow(kv: &KeyValue) -> Result<StoredObject> {
    let mut workflow: Workflow = serde_json::from_slice(&kv.value).map_err(internal)?;
    workflow.metadata.resource_version = Some(kv.mod_revision);
    Ok(StoredObject {
        kind: Kind::Workflow,
        name: workflow.metadata.name.clone(),
        resource_version: kv.mod_revision,
        labels: workflow.metadata.labels.clone(),
        json: serde_json::to_string(&workflow).map_err(internal)?,
    })
}

fn decode_pipeline(kv: &KeyValue) -> Result<StoredObject> {
    let mut pipeline: PipelineObject = serde_json::from_slice(&kv.value).map_err(internal)?;
    pipeline.metadata.resource_version = Some(kv.mod_revision);
    Ok(StoredObject {
        kind: Kind::Pipeline,
        name: pipeline.metadata.name.clone(),
        resource_version: kv.mod_revision,
        labels: pipeline.metadata.labels.clone(),
        json: serde_json::to_string(&pipeline).map_err(internal)?,
    })
}

/// The workflow an apply just wrote at `revision`, as reads return it.
fn written(key: &str, workflow: &Workflow, revision: u64) -> Result<StoredObject> {
    let value = serde_json::to_vec(workflow).map_err(internal)?;
    decode_workflow(&KeyValue { key: key.as_bytes().to_vec(), value, mod_revision: revision, ..KeyValue::default() })
}

pub fn decode(kind: Kind, kv: &KeyValue) -> Result<StoredObject> {
    match kind {
        Kind::Workflow => decode_workflow(kv),
        Kind::Pipeline => decode_pipeline(kv),
    }
}

/// What a user controls in a workflow; two applies with the same desired state are one.
fn desired(
    workflow: &Workflow,
) -> (&Option<String>, &std::collections::BTreeMap<String, String>, &xene_model::WorkflowSpec) {
    (&workflow.metadata.description, &workflow.metadata.labels, &workflow.spec)
}

/// The status object of a pipeline just added to the store: not placed yet, with its own uid
/// and creation time (DESIGN §6.3).
fn new_pipeline_object(workflow: &Workflow, pipeline: &str) -> PipelineObject {
    let mut object = PipelineObject::not_scheduled(&workflow.metadata, pipeline, REASON_NO_AGENTS);
    object.metadata.uid = Some(crate::runs::new_uid());
    object.metadata.creation_timestamp = Some(Utc::now());
    object
}

fn put_json<T: serde::Serialize>(key: String, value: &T) -> Result<Op> {
    let value = serde_json::to_vec(value).map_err(internal)?;
    if value.len() > xene_raft_store::command::MAX_VALUE_BYTES {
        return Err(ServerError::InvalidArgument(format!(
            "{key}: the object is {} bytes as stored, over the store's limit of {} bytes; split the workflow",
            value.len(),
            xene_raft_store::command::MAX_VALUE_BYTES
        )));
    }
    Ok(Op::Put { key: key.into_bytes(), value })
}

/// Applies a Workflow manifest: validates it, then creates or updates the workflow and its
/// pipeline status objects in one transaction.
pub async fn apply(node: &ClusterNode, manifest: &str) -> Result<(ApplyResult, StoredObject)> {
    // Off the async workers, which also carry Raft's heartbeats: reading takes about 14 ms per
    // 100 KB of YAML (release build), so about 0.3 s for the largest manifest.
    let text = manifest.to_owned();
    let mut workflow = tokio::task::spawn_blocking(move || parse_manifest(&text))
        .await
        .map_err(|e| ServerError::Internal(format!("reading the manifest stopped: {e}")))?
        .map_err(|errors| ServerError::InvalidArgument(format!("the manifest is not valid:\n{errors}")))?;
    let requested = workflow.metadata.resource_version.take();
    let name = workflow.metadata.name.clone();
    let key = keys::workflow(&name);
    // Without a requested version, a concurrent change simply means reading again.
    for _ in 0..5 {
        node.read_barrier().await?;
        let current = node.reader.range(key.clone().into_bytes(), false, 0).await?.kvs.into_iter().next();
        match current {
            None => {
                if let Some(version) = requested {
                    return Err(ServerError::NotFound(format!(
                        "workflow {name:?} does not exist, so resourceVersion {version} cannot match; remove metadata.resourceVersion to create it"
                    )));
                }
                workflow.metadata.uid = Some(crate::runs::new_uid());
                workflow.metadata.creation_timestamp = Some(Utc::now());
                let mut ops = vec![put_json(key.clone(), &workflow)?];
                for pipeline in workflow.spec.pipelines.keys() {
                    let object = new_pipeline_object(&workflow, pipeline);
                    ops.push(put_json(keys::pipeline(&name, pipeline), &object)?);
                }
                let response = node
                    .txn(Txn { compare: vec![Compare::absent(key.clone())], success: ops, failure: vec![] })
                    .await?;
                if response.succeeded {
                    return Ok((ApplyResult::Created, written(&key, &workflow, response.revision)?));
                }
            }
            Some(kv) => {
                let stored: Workflow = serde_json::from_slice(&kv.value).map_err(internal)?;
                if let Some(version) = requested {
                    if version != kv.mod_revision {
                        return Err(ServerError::Conflict(format!(
                            "workflow {name:?} changed since resourceVersion {version} (it is at {}); get it again, reapply your change, or drop metadata.resourceVersion",
                            kv.mod_revision
                        )));
                    }
                }
                if desired(&stored) == desired(&workflow) {
                    return Ok((ApplyResult::Unchanged, decode_workflow(&kv)?));
                }
                workflow.metadata.uid = stored.metadata.uid.clone();
                workflow.metadata.creation_timestamp = stored.metadata.creation_timestamp;
                let mut ops = vec![put_json(key.clone(), &workflow)?];
                ops.extend(crate::triggers::cron::restart_cursors(&stored, &workflow, Utc::now())?);
                for pipeline in workflow.spec.pipelines.keys().filter(|p| !stored.spec.pipelines.contains_key(*p)) {
                    let object = new_pipeline_object(&workflow, pipeline);
                    ops.push(put_json(keys::pipeline(&name, pipeline), &object)?);
                }
                for pipeline in stored.spec.pipelines.keys().filter(|p| !workflow.spec.pipelines.contains_key(*p)) {
                    ops.push(Op::Delete { key: keys::pipeline(&name, pipeline).into_bytes() });
                }
                let response = node
                    .txn(Txn {
                        compare: vec![Compare::mod_revision(key.clone(), kv.mod_revision)],
                        success: ops,
                        failure: vec![],
                    })
                    .await?;
                if response.succeeded {
                    return Ok((ApplyResult::Configured, written(&key, &workflow, response.revision)?));
                }
                if requested.is_some() {
                    return Err(ServerError::Conflict(format!(
                        "workflow {name:?} changed while this apply ran; get it again and reapply"
                    )));
                }
            }
        }
    }
    Err(ServerError::unavailable(format!("workflow {name:?} keeps changing under this apply; retry")))
}

fn object_key(kind: Kind, name: &str) -> Result<String> {
    match kind {
        Kind::Workflow if name.contains('/') => Err(ServerError::InvalidArgument(format!(
            "workflow name {name:?} has a '/', which no workflow name has; for the pipeline {name}, ask for kind pipeline (xenectl describe pipeline {name})"
        ))),
        Kind::Workflow => Ok(keys::workflow(name)),
        Kind::Pipeline => {
            let (workflow, pipeline) = name.split_once('/').ok_or_else(|| {
                ServerError::InvalidArgument(format!("pipeline name {name:?}: write it as WORKFLOW/PIPELINE"))
            })?;
            Ok(keys::pipeline(workflow, pipeline))
        }
    }
}

/// Reads one object (linearizably).
pub async fn get(node: &ClusterNode, kind: Kind, name: &str) -> Result<StoredObject> {
    let key = object_key(kind, name)?;
    node.read_barrier().await?;
    let found = node.reader.range(key.into_bytes(), false, 0).await?.kvs.into_iter().next();
    match found {
        Some(kv) => decode(kind, &kv),
        None => Err(ServerError::NotFound(format!("{} {name:?} not found", kind.name().to_lowercase()))),
    }
}

/// A pipeline status object with its triggers' state filled in (next and last fire, webhook
/// URL), as `xenectl describe pipeline` shows it.
pub async fn with_triggers(node: &ClusterNode, mut object: StoredObject) -> Result<StoredObject> {
    let mut pipeline: PipelineObject = serde_json::from_str(&object.json).map_err(internal)?;
    let (spec, _) = crate::runs::workflow(node, &pipeline.spec.workflow).await?;
    crate::triggers::describe(node, &spec, &mut pipeline).await?;
    object.json = serde_json::to_string(&pipeline).map_err(internal)?;
    Ok(object)
}

/// Lists objects of a kind that match `selector` (pipelines optionally of one workflow).
pub async fn list(node: &ClusterNode, kind: Kind, selector: &str, workflow: &str) -> Result<(Vec<StoredObject>, u64)> {
    let selector = LabelSelector::parse(selector).map_err(|e| ServerError::InvalidArgument(e.to_string()))?;
    let prefix = match (kind, workflow.is_empty()) {
        (Kind::Workflow, _) => keys::WORKFLOWS.to_string(),
        (Kind::Pipeline, true) => keys::PIPELINES.to_string(),
        (Kind::Pipeline, false) => keys::pipelines_of(workflow),
    };
    node.read_barrier().await?;
    let result = node.reader.range(prefix.into_bytes(), true, 0).await?;
    let mut objects = Vec::new();
    for kv in &result.kvs {
        let object = decode(kind, kv)?;
        if selector.matches(&object.labels) {
            objects.push(object);
        }
    }
    Ok((objects, result.revision))
}

/// Unfinished runs cancelled by one transaction of a workflow's delete (two operations each,
/// under the store's 1,024).
const CANCEL_CHUNK: usize = 400;

/// Deletes a workflow and its pipeline status objects in one transaction, or refuses when
/// `resource_version` is set and stale. Its unfinished runs end as `Cancelled` in the same
/// transaction (DESIGN §6.3); the scheduler then revokes the leases, and the agents stop what
/// they ran.
pub async fn delete(node: &ClusterNode, kind: Kind, name: &str, resource_version: u64) -> Result<Vec<StoredObject>> {
    if kind != Kind::Workflow {
        return Err(ServerError::InvalidArgument(format!(
            "{} objects belong to their workflow; delete or change the workflow instead",
            kind.name()
        )));
    }
    let current = get(node, kind, name).await?;
    if resource_version != 0 && resource_version != current.resource_version {
        return Err(ServerError::Conflict(format!(
            "workflow {name:?} changed since resourceVersion {resource_version} (it is at {}); get it again before deleting",
            current.resource_version
        )));
    }
    let (pipelines, _) = list(node, Kind::Pipeline, "", name).await?;
    let key = keys::workflow(name);
    // A run that changes meanwhile (an agent's report) fails the compares: read them again.
    // Runs beyond what one transaction holds are cancelled ahead, a chunk at a time.
    let mut conflicts = 0;
    while conflicts < 5 {
        let (mut compare, mut success) = crate::runs::cancel_all(node, name).await?;
        if compare.len() > CANCEL_CHUNK {
            compare.truncate(CANCEL_CHUNK);
            success.truncate(CANCEL_CHUNK);
            if !node.txn(Txn { compare, success, failure: vec![] }).await?.succeeded {
                conflicts += 1;
            }
            continue;
        }
        compare.push(Compare::mod_revision(key.clone(), current.resource_version));
        success.extend([
            Op::DeletePrefix { prefix: keys::pipelines_of(name).into_bytes() },
            Op::DeletePrefix { prefix: format!("{}{name}/", keys::CRON).into_bytes() },
            Op::DeletePrefix { prefix: format!("{}{name}/", keys::DELIVERIES).into_bytes() },
            Op::Delete { key: key.clone().into_bytes() },
        ]);
        let response = node.txn(Txn { compare, success, failure: vec![] }).await?;
        if response.succeeded {
            let mut deleted = vec![current];
            deleted.extend(pipelines);
            return Ok(deleted);
        }
        let now = get(node, kind, name).await?;
        if now.resource_version != current.resource_version {
            return Err(ServerError::Conflict(format!("workflow {name:?} changed during the delete; retry")));
        }
        conflicts += 1;
    }
    Err(ServerError::unavailable("the workflow's runs kept changing during the delete; retry"))
}
