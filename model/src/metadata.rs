//! [`Metadata`]: an object's name and labels, and the fields the server
//! stores with it (DESIGN §6.3).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The `metadata` of a workflow.
///
/// A manifest sets `name` and optionally `description` and `labels`; the
/// server sets `uid`, `creationTimestamp` and `resourceVersion`. An update
/// that carries a `resourceVersion` fails if the stored one differs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Metadata {
    /// The object's name, unique among objects of its kind.
    pub name: String,
    /// What the object is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Labels for selecting objects.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// The server-assigned unique ID of this incarnation of the object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// When the server first stored the object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_timestamp: Option<DateTime<Utc>>,
    /// The store revision of the object's last change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<u64>,
}
