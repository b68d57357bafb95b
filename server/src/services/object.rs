//! `ObjectService`: apply, get, list, delete and watch workflows and their pipeline status
//! objects (DESIGN §6.3, §11.1). Changes need an admin token, reads a viewer token.

use std::pin::Pin;
use std::sync::Arc;

use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use xene_proto as pb;
use xene_proto::object_service_server::ObjectService;
use xene_raft_store::{EventKind, StoreError, WatchKeys};

use crate::auth::{Role, TokenCache};
use crate::error::ServerError;
use crate::keys;
use crate::node::ClusterNode;
use crate::objects::{self, Kind, StoredObject};

/// The `ObjectService` implementation.
pub struct ObjectApi {
    node: Arc<ClusterNode>,
    tokens: TokenCache,
    stop: CancellationToken,
}

impl ObjectApi {
    pub fn new(node: Arc<ClusterNode>, tokens: TokenCache, stop: CancellationToken) -> Self {
        ObjectApi { node, tokens, stop }
    }
}

fn to_pb(object: StoredObject) -> pb::Object {
    pb::Object {
        kind: object.kind.name().into(),
        name: object.name,
        resource_version: object.resource_version,
        json: object.json,
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::ObjectEvent, Status>> + Send>>;

/// What a watch of `kind` objects named `name` reads: every object of the kind when `name` is
/// empty; a pipeline's every status object when `name` is a workflow's name alone; otherwise
/// the one object, so watching workflow `ci` says nothing of `ci-nightly`.
fn watched_keys(kind: Kind, name: &str) -> WatchKeys {
    match kind {
        Kind::Workflow if name.is_empty() => WatchKeys::Prefix(keys::WORKFLOWS.into()),
        Kind::Workflow => WatchKeys::Exact(keys::workflow(name).into_bytes()),
        Kind::Pipeline if name.is_empty() => WatchKeys::Prefix(keys::PIPELINES.into()),
        Kind::Pipeline => match name.split_once('/') {
            Some((workflow, pipeline)) => WatchKeys::Exact(keys::pipeline(workflow, pipeline).into_bytes()),
            None => WatchKeys::Prefix(keys::pipelines_of(name).into_bytes()),
        },
    }
}

#[tonic::async_trait]
impl ObjectService for ObjectApi {
    #[tracing::instrument(skip_all, fields(node = self.node.id))]
    async fn apply(&self, request: Request<pb::ApplyRequest>) -> Result<Response<pb::ApplyResponse>, Status> {
        self.tokens.authorize(&self.node, request.metadata(), Role::Admin).await?;
        let (result, object) = objects::apply(&self.node, &request.get_ref().manifest).await?;
        tracing::info!(workflow = %object.name, result = result.as_str(), "applied");
        let (pipelines, _) = objects::list(&self.node, Kind::Pipeline, "", &object.name).await?;
        Ok(Response::new(pb::ApplyResponse {
            object: Some(to_pb(object)),
            result: result.as_str().into(),
            pipelines: pipelines.into_iter().map(to_pb).collect(),
        }))
    }

    async fn get(&self, request: Request<pb::GetObjectRequest>) -> Result<Response<pb::Object>, Status> {
        self.tokens.authorize(&self.node, request.metadata(), Role::Viewer).await?;
        let kind = Kind::parse(&request.get_ref().kind)?;
        let mut object = objects::get(&self.node, kind, &request.get_ref().name).await?;
        if kind == Kind::Pipeline {
            object = objects::with_triggers(&self.node, object).await?;
        }
        Ok(Response::new(to_pb(object)))
    }

    async fn list(
        &self,
        request: Request<pb::ListObjectsRequest>,
    ) -> Result<Response<pb::ListObjectsResponse>, Status> {
        self.tokens.authorize(&self.node, request.metadata(), Role::Viewer).await?;
        let list = request.get_ref();
        let kind = Kind::parse(&list.kind)?;
        let (objects, revision) = objects::list(&self.node, kind, &list.label_selector, &list.workflow).await?;
        Ok(Response::new(pb::ListObjectsResponse { objects: objects.into_iter().map(to_pb).collect(), revision }))
    }

    #[tracing::instrument(skip_all, fields(node = self.node.id))]
    async fn delete(
        &self,
        request: Request<pb::DeleteObjectRequest>,
    ) -> Result<Response<pb::DeleteObjectResponse>, Status> {
        self.tokens.authorize(&self.node, request.metadata(), Role::Admin).await?;
        let delete = request.get_ref();
        let kind = Kind::parse(&delete.kind)?;
        let deleted = objects::delete(&self.node, kind, &delete.name, delete.resource_version).await?;
        Ok(Response::new(pb::DeleteObjectResponse { deleted: deleted.into_iter().map(to_pb).collect() }))
    }

    type WatchStream = WatchStream;

    async fn watch(&self, request: Request<pb::WatchObjectsRequest>) -> Result<Response<Self::WatchStream>, Status> {
        self.tokens.authorize(&self.node, request.metadata(), Role::Viewer).await?;
        let watch = request.into_inner();
        let kind = Kind::parse(&watch.kind)?;
        let base = match kind {
            Kind::Workflow => keys::WORKFLOWS,
            Kind::Pipeline => keys::PIPELINES,
        };
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let mut watcher = match self.node.reader.watch_keys(watch.start_revision, watched_keys(kind, &watch.name)) {
            Ok(watcher) => watcher,
            Err(StoreError::Compacted { compacted, .. }) => {
                let _ = tx.try_send(Ok(pb::ObjectEvent { r#type: 0, object: None, compact_revision: compacted }));
                return Ok(Response::new(Box::pin(ReceiverStream::new(rx))));
            }
            Err(e) => return Err(ServerError::from(e).into()),
        };
        let stop = self.stop.clone();
        tokio::spawn(async move {
            loop {
                let events = tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tx.closed() => break,
                    events = watcher.next() => events,
                };
                let events = match events {
                    Ok(events) => events,
                    Err(StoreError::Compacted { compacted, .. }) => {
                        let _ =
                            tx.send(Ok(pb::ObjectEvent { r#type: 0, object: None, compact_revision: compacted })).await;
                        break;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(ServerError::from(e).into())).await;
                        break;
                    }
                };
                for event in events {
                    let name = String::from_utf8_lossy(&event.kv.key[base.len()..]).into_owned();
                    let message = match event.kind {
                        EventKind::Delete => pb::ObjectEvent {
                            r#type: pb::object_event::Type::Deleted as i32,
                            object: Some(pb::Object {
                                kind: kind.name().into(),
                                name,
                                resource_version: event.kv.mod_revision,
                                json: String::new(),
                            }),
                            compact_revision: 0,
                        },
                        EventKind::Put => {
                            let Ok(object) = objects::decode(kind, &event.kv) else { continue };
                            let kind = if event.kv.version == 1 {
                                pb::object_event::Type::Added
                            } else {
                                pb::object_event::Type::Modified
                            };
                            pb::ObjectEvent { r#type: kind as i32, object: Some(to_pb(object)), compact_revision: 0 }
                        }
                    };
                    if tx.send(Ok(message)).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_named_watch_reads_that_object_only() {
        use WatchKeys::{Exact, Prefix};
        for (kind, name, expected) in [
            (Kind::Workflow, "", Prefix(b"/xene/objects/workflows/".to_vec())),
            (Kind::Workflow, "ci", Exact(b"/xene/objects/workflows/ci".to_vec())),
            (Kind::Pipeline, "", Prefix(b"/xene/objects/pipelines/".to_vec())),
            (Kind::Pipeline, "ci", Prefix(b"/xene/objects/pipelines/ci/".to_vec())),
            (Kind::Pipeline, "ci/build", Exact(b"/xene/objects/pipelines/ci/build".to_vec())),
        ] {
            assert_eq!(watched_keys(kind, name), expected, "{kind:?} {name:?}");
        }
    }
}
