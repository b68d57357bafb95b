//! [`Executor`]: how a task's steps run, in a container or as local
//! processes (DESIGN §9.3, §9.4).

use serde::{Deserialize, Serialize};

use crate::{Cpu, Memory};

/// How a task runs, chosen by `type`.
///
/// A task without one uses its pipeline's; a pipeline without one uses the
/// agent's default executor.
///
/// ```yaml
/// executor: {type: container, image: golang:1.22, cpu: "2", memory: 1Gi}
/// executor: {type: container, image: registry.example.com/ci/rust:1, pullSecret: registry}
/// executor: {type: process}
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Executor {
    /// One container per task attempt; each step is a `/bin/sh -c` in it.
    Container(ContainerExecutor),
    /// Local processes in a per-run workspace directory.
    Process(ProcessExecutor),
}

impl Executor {
    /// The `type` names, as written in manifests.
    pub const TYPES: [&'static str; 2] = ["container", "process"];
}

/// The container executor's settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ContainerExecutor {
    /// The image, pulled if the agent does not have it.
    pub image: String,
    /// A CPU limit for the task's container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<Cpu>,
    /// A memory limit for the task's container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Memory>,
    /// The secret holding the registry's `username` and `password`, used when the image must be
    /// pulled ([`PULL_SECRET_KEYS`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull_secret: Option<String>,
}

/// The keys a pull secret must have: the registry account's name and its password (or an
/// access token used as one, as `docker login` takes it).
pub const PULL_SECRET_KEYS: [&str; 2] = ["username", "password"];

/// The process executor's settings: none yet.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessExecutor {}
