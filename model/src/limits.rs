//! The size limits a manifest must respect (DESIGN §6.2).
//!
//! A workflow is stored as one object in the replicated store and travels in
//! one gRPC message, so its size is bounded; the other limits keep a single
//! manifest from being costly to validate, schedule or display.
//!
//! | Limit | Value |
//! |---|---|
//! | [`MAX_MANIFEST_BYTES`] | 2 MiB of YAML or JSON text |
//! | nesting | maps and lists 128 levels deep in YAML (checked before reading, `manifest/depth.rs`), 127 in JSON (serde_json's limit) |
//! | `when` expressions (`when.rs`) | 1,000 characters, brackets nested 32 deep |
//! | [`MAX_NAME_LEN`] | 63 characters per name (workflow, trigger, pipeline, task, step, secret) |
//! | [`MAX_DESCRIPTION_BYTES`] | 1 KiB per description |
//! | [`MAX_LABELS`] | 64 labels, and 64 `agentSelector` entries |
//! | [`MAX_TRIGGERS_PER_WORKFLOW`] | 100 |
//! | [`MAX_PIPELINES_PER_WORKFLOW`] | 100 |
//! | [`MAX_TASKS_PER_PIPELINE`] | 10,000 |
//! | [`MAX_STEPS_PER_TASK`] | 100 |
//! | [`MAX_ENV_ENTRIES`] | 100 per `env` map (pipeline, task or step) |
//! | [`MAX_ENV_VALUE_BYTES`] | 32 KiB per environment value |
//! | [`MAX_RUN_BYTES`] | 64 KiB per step script (`run`) |
//! | [`MAX_WEBHOOK_EVENTS`] | 64 event names per webhook trigger |
//! | [`MAX_RETRY_LIMIT`] | 10 retries per task or run |
//! | [`MAX_TIMEOUT`] | 168h (7 days) for any timeout or backoff |
//! | [`MIN_MEMORY`] | 6Mi, Docker's smallest memory limit |
//!
//! The manifest limit sits under tonic's default 4 MiB message limit and
//! still fits a pipeline of 10,000 short tasks.

use crate::Duration;

/// The largest manifest text [`crate::parse_manifest`] accepts, in bytes.
pub const MAX_MANIFEST_BYTES: usize = 2 * 1024 * 1024;

/// The longest name, in characters (a DNS label).
pub const MAX_NAME_LEN: usize = 63;

/// The longest description, in bytes.
pub const MAX_DESCRIPTION_BYTES: usize = 1024;

/// The most labels in `metadata.labels`, and entries in an `agentSelector`.
pub const MAX_LABELS: usize = 64;

/// The most triggers a workflow declares.
pub const MAX_TRIGGERS_PER_WORKFLOW: usize = 100;

/// The most pipelines in a workflow.
pub const MAX_PIPELINES_PER_WORKFLOW: usize = 100;

/// The most tasks in a pipeline.
pub const MAX_TASKS_PER_PIPELINE: usize = 10_000;

/// The most steps in a task.
pub const MAX_STEPS_PER_TASK: usize = 100;

/// The most entries in one `env` map.
pub const MAX_ENV_ENTRIES: usize = 100;

/// The longest literal environment value, in bytes.
pub const MAX_ENV_VALUE_BYTES: usize = 32 * 1024;

/// The longest step script (`run`), in bytes.
pub const MAX_RUN_BYTES: usize = 64 * 1024;

/// The most event names a webhook trigger filters on.
pub const MAX_WEBHOOK_EVENTS: usize = 64;

/// The highest `retries.limit`.
pub const MAX_RETRY_LIMIT: u32 = 10;

/// The longest timeout, backoff or maximum backoff: 168h (7 days).
pub const MAX_TIMEOUT: Duration = Duration::from_secs(7 * 24 * 3600);

/// The smallest container memory limit: 6Mi, the least Docker accepts.
pub const MIN_MEMORY: crate::Memory = crate::Memory::from_bytes(6 * 1024 * 1024);
