//! `xene-model`: the Workflow manifest, its validation, the task DAG and the
//! status names, shared by `xenectl`, the server and the agent (DESIGN §6).
//!
//! This crate does no I/O: it reads and writes text and values only, so the
//! CLI and the server check a manifest with the same code and the same
//! messages.
//!
//! # Table of contents
//!
//! The manifest, from the top down (§6.1):
//!
//! - [`Workflow`] (`workflow.rs`): `apiVersion`, `kind`, `metadata`, `spec`.
//! - [`Metadata`] (`metadata.rs`): name, description, labels and the fields
//!   the server stores (§6.3).
//! - [`WorkflowSpec`] (`spec.rs`): the triggers and pipelines of a workflow.
//! - [`Trigger`] (`trigger.rs`): cron and webhook triggers; the API trigger
//!   needs no declaration.
//! - [`Pipeline`] (`pipeline.rs`) with its [`Concurrency`] (`concurrency.rs`).
//! - [`Task`] (`task.rs`), its [`RetryPolicy`] (`retry.rs`) and [`When`]
//!   condition (`when.rs`).
//! - [`Step`] (`step.rs`).
//! - [`Executor`] (`executor.rs`), [`EnvValue`] (`env.rs`).
//! - Value types: [`Duration`] (`duration.rs`), [`Cpu`] (`cpu.rs`),
//!   [`Memory`] (`memory.rs`).
//!
//! Reading and checking manifests (§6.2):
//!
//! - [`parse_manifest`] (`manifest/`): YAML or JSON text to a validated
//!   [`Workflow`], reporting every problem at once; [`to_yaml`], [`to_json`].
//! - [`validate`] (`validate.rs`): the rules that need the whole typed value.
//! - [`ValidationError`], [`ValidationErrors`] (`error.rs`), located by a
//!   [`FieldPath`] (`path.rs`).
//! - [`limits`]: the documented size limits.
//! - [`names`]: the rules for names, label keys and values, and environment
//!   variable names.
//!
//! Execution helpers:
//!
//! - [`TaskGraph`] (`dag.rs`): a pipeline's tasks as a petgraph DAG, with a
//!   topological order and the tasks ready to run.
//! - [`CronSchedule`] (`cron.rs`): cron expressions and IANA time zones, as the
//!   cron trigger evaluates them.
//! - [`status`]: the phase and status names of §9.1.
//! - [`outputs`]: task outputs, `KEY=VALUE` lines in `$XENE_OUTPUT`, and the
//!   `XENE_INPUT_<TASK>_<KEY>` variables they become (§10).
//! - [`address`]: server addresses (`HOST:PORT`, `https://HOST:PORT`) and the checks
//!   of PEM text from `--tls-*` files (§11.2).
//!
//! Stored objects and queries:
//!
//! - [`PipelineObject`] (`pipeline_object.rs`): the status object the server
//!   keeps per pipeline (§6.3).
//! - [`RunObject`] (`run.rs`): a run with its task and step statuses; [`LogChunk`]
//!   of [`LogLine`]s, and [`LogChunkView`] to check one without copying its lines.
//! - [`LabelSelector`] (`selector.rs`): `team=infra,tier!=db,canary,!legacy`.
//!
//! # Invariant
//!
//! A [`Workflow`] returned by [`parse_manifest`] has passed [`validate`]: its
//! names are well formed, its dependencies form a DAG, its references resolve
//! and its sizes are within [`limits`].

pub mod address;
pub mod limits;
pub mod names;
pub mod outputs;
pub mod status;

mod concurrency;
mod cpu;
mod cron;
mod dag;
mod duration;
mod env;
mod error;
mod executor;
mod manifest;
mod memory;
mod metadata;
mod path;
mod pipeline;
mod pipeline_object;
mod retry;
mod run;
mod selector;
mod spec;
mod step;
mod suggest;
mod task;
mod trigger;
mod validate;
mod when;
mod workflow;

pub use concurrency::{Concurrency, ConcurrencyPolicy};
pub use cpu::{Cpu, CpuError};
pub use cron::{CronSchedule, ScheduleError};
pub use dag::{DagError, TaskGraph, Walk};
pub use duration::{Duration, DurationError};
pub use env::{Env, EnvValue, SecretKeyRef};
pub use error::{ProblemKind, ValidationError, ValidationErrors};
pub use executor::{ContainerExecutor, Executor, ProcessExecutor, PULL_SECRET_KEYS};
pub use manifest::{parse_manifest, to_json, to_yaml, EncodeError};
pub use memory::{Memory, MemoryError};
pub use metadata::Metadata;
pub use path::{FieldPath, Segment};
pub use pipeline::Pipeline;
pub use pipeline_object::{
    PipelineObject, PipelineRef, PipelineStatus, TriggerStatus, PIPELINE_KIND, REASON_NO_AGENTS,
};
pub use retry::RetryPolicy;
pub use run::{
    CheckedLines, LogChunk, LogChunkView, LogLine, RunObject, RunSpec, RunStatus, StepRunStatus, TaskRunStatus,
    RUN_KIND,
};
pub use selector::{LabelSelector, Requirement, SelectorError};
pub use spec::WorkflowSpec;
pub use step::Step;
pub use task::Task;
pub use trigger::{CatchUp, CronTrigger, Trigger, Webhook, WebhookProvider, WebhookTrigger};
pub use validate::validate;
pub use when::{When, WhenError};
pub use workflow::{Workflow, API_VERSION, KIND};
