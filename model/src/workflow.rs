//! [`Workflow`]: the top-level object a user applies (DESIGN §1, §6.1).

use serde::{Deserialize, Serialize};

use crate::{Metadata, WorkflowSpec};

/// The `apiVersion` this crate reads and writes.
pub const API_VERSION: &str = "xene.dev/v1";

/// The `kind` of a workflow manifest.
pub const KIND: &str = "Workflow";

/// A workflow manifest: one or more pipelines and the triggers they use.
///
/// Read one with [`crate::parse_manifest`], which also validates it; the
/// serde implementations read and write the same shape without validating,
/// for values already checked (as the store keeps them).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Workflow {
    /// Always [`API_VERSION`].
    pub api_version: String,
    /// Always [`KIND`].
    pub kind: String,
    /// Name, labels and stored fields.
    pub metadata: Metadata,
    /// Triggers and pipelines.
    pub spec: WorkflowSpec,
}

impl Workflow {
    /// An empty workflow named `name`, to build on in code.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            api_version: API_VERSION.to_string(),
            kind: KIND.to_string(),
            metadata: Metadata { name: name.into(), ..Metadata::default() },
            spec: WorkflowSpec::default(),
        }
    }
}
