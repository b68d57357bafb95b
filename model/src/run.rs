//! [`RunObject`]: one execution of a pipeline as stored (DESIGN §6.3, §9.1): what started it,
//! where it runs, and the status of every task and step.

use std::borrow::Cow;
use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::status::{ErrorReason, RunPhase, StepStatus};
use crate::Metadata;

/// The `kind` of a run object.
pub const RUN_KIND: &str = "Run";

/// A run. Its name is its run ID.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RunObject {
    pub api_version: String,
    pub kind: String,
    pub metadata: Metadata,
    pub spec: RunSpec,
    pub status: RunStatus,
}

/// What to run and why.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RunSpec {
    pub workflow: String,
    pub pipeline: String,
    /// `api`, or the name of the webhook or cron trigger that fired.
    pub trigger: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub parameters: BTreeMap<String, String>,
    /// Set when someone asked to cancel the run.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cancel_requested: bool,
    /// The revision the workflow was applied at when the run was made: the run starts only
    /// on an agent holding that workflow or one applied later (0: any).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub workflow_revision: u64,
    /// How many times the run was started again because the agent running it was lost
    /// (DESIGN §7.4): at most the pipeline's `retries.limit`.
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub agent_retries: u32,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn is_zero_u32(n: &u32) -> bool {
    *n == 0
}

/// Where the run is in its life.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RunStatus {
    pub phase: RunPhase,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<ErrorReason>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The agent running it and the lease epoch it runs under.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_epoch: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tasks: BTreeMap<String, TaskRunStatus>,
    /// When the leader found the run's lease gone from its agent mid-run, while the run waits
    /// (as `Unknown`) for that agent's steps to have stopped before it starts again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_lost_at: Option<DateTime<Utc>>,
}

/// A task's status follows its steps (DESIGN §9.1).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TaskRunStatus {
    pub status: StepStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<ErrorReason>,
    #[serde(default)]
    pub attempt: u32,
    /// The execution of the current attempt: an ID the agent draws when the attempt starts and
    /// puts on every log chunk of it. An agent restarted mid-run executes the attempt again
    /// under the same lease epoch, and a dead execution's chunks can still land late; logs are
    /// read from the execution named here only, so two executions' lines never mix (DESIGN §9.7).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub execution: String,
    pub steps: Vec<StepRunStatus>,
    /// What the attempt's steps wrote to `$XENE_OUTPUT` (DESIGN §10), secret values masked;
    /// the tasks after it read them as `XENE_INPUT_<TASK>_<KEY>`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub outputs: BTreeMap<String, String>,
}

/// One step's outcome.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StepRunStatus {
    pub name: String,
    pub status: StepStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<ErrorReason>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished: Option<DateTime<Utc>>,
}

impl RunStatus {
    /// A run not started yet, saying `message`.
    pub fn pending(message: Option<String>) -> Self {
        RunStatus {
            phase: RunPhase::Pending,
            reason: None,
            message,
            agent: None,
            lease_epoch: None,
            started: None,
            finished: None,
            tasks: BTreeMap::new(),
            agent_lost_at: None,
        }
    }

    /// Ends the run from outside its agent (cancelled with its workflow, its agent lost): the
    /// phase, reason and message, and every task and step still `Running` becomes `Error`
    /// with the same reason and finish time, so that a task's status follows its steps and a
    /// finished run shows nothing running (DESIGN §9.1). Steps not started stay `NotExecuted`.
    pub fn end(&mut self, phase: RunPhase, reason: ErrorReason, message: String, at: DateTime<Utc>) {
        self.phase = phase;
        self.reason = Some(reason);
        self.message = Some(message);
        self.finished = Some(at);
        for task in self.tasks.values_mut() {
            if task.status != StepStatus::Running {
                continue;
            }
            task.status = StepStatus::Error;
            task.reason = Some(reason);
            for step in task.steps.iter_mut().filter(|step| step.status == StepStatus::Running) {
                step.status = StepStatus::Error;
                step.reason = Some(reason);
                step.finished = Some(at);
            }
        }
    }
}

impl RunObject {
    /// A new pending run.
    pub fn pending(id: &str, spec: RunSpec) -> Self {
        let mut labels = BTreeMap::new();
        labels.insert("xene.dev/workflow".to_string(), spec.workflow.clone());
        labels.insert("xene.dev/pipeline".to_string(), spec.pipeline.clone());
        RunObject {
            api_version: crate::API_VERSION.into(),
            kind: RUN_KIND.into(),
            metadata: Metadata { name: id.into(), labels, ..Metadata::default() },
            spec,
            status: RunStatus::pending(None),
        }
    }
}

/// One line of a step's output (DESIGN §9.7).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    /// Position in the step's output, from 0, without gaps.
    pub seq: u64,
    /// Milliseconds since the Unix epoch.
    pub ts_ms: u64,
    /// `stdout`, `stderr`, or `xene` for lines the agent adds (truncation markers).
    pub stream: String,
    pub text: String,
}

/// A stored chunk of log lines of one step.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogChunk {
    pub run: String,
    pub task: String,
    pub step: String,
    /// The execution of the task attempt that printed the lines ([`TaskRunStatus::execution`]).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub execution: String,
    pub lines: Vec<LogLine>,
}

/// A [`LogChunk`]'s JSON read in place: its names borrowed, its lines each checked to be a
/// [`LogLine`] and counted, none kept. What a server needs to take an agent's chunk and store
/// the agent's bytes as they are, instead of building every line and serializing them again.
#[derive(Debug, Deserialize)]
pub struct LogChunkView<'a> {
    #[serde(borrow)]
    pub run: Cow<'a, str>,
    #[serde(borrow)]
    pub task: Cow<'a, str>,
    #[serde(borrow)]
    pub step: Cow<'a, str>,
    #[serde(default, borrow)]
    pub execution: Cow<'a, str>,
    pub lines: CheckedLines,
}

/// The number of lines of a [`LogChunkView`]; each was read as a [`LogLine`] would be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckedLines(pub usize);

impl<'de> Deserialize<'de> for CheckedLines {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        /// A [`LogLine`]'s fields, the strings borrowed where they need no unescaping.
        #[derive(Deserialize)]
        #[allow(dead_code)] // Read to check the line's shape, then dropped.
        struct LineView<'a> {
            seq: u64,
            ts_ms: u64,
            #[serde(borrow)]
            stream: Cow<'a, str>,
            #[serde(borrow)]
            text: Cow<'a, str>,
        }

        struct Count;
        impl<'de> serde::de::Visitor<'de> for Count {
            type Value = CheckedLines;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a list of log lines")
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<CheckedLines, A::Error> {
                let mut count = 0;
                while seq.next_element::<LineView<'de>>()?.is_some() {
                    count += 1;
                }
                Ok(CheckedLines(count))
            }
        }
        deserializer.deserialize_seq(Count)
    }
}

impl LogChunk {
    /// The longest execution ID a chunk may carry.
    pub const MAX_EXECUTION_LEN: usize = 64;

    /// Whether `execution` can name an execution: 1 to [`Self::MAX_EXECUTION_LEN`] ASCII
    /// letters, digits, `-` or `_` (it becomes part of the chunk's key).
    pub fn valid_execution(execution: &str) -> bool {
        (1..=Self::MAX_EXECUTION_LEN).contains(&execution.len())
            && execution.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(name: &str, status: StepStatus) -> StepRunStatus {
        StepRunStatus { name: name.into(), status, exit_code: None, reason: None, started: None, finished: None }
    }

    fn task(status: StepStatus, steps: Vec<StepRunStatus>) -> TaskRunStatus {
        TaskRunStatus { status, reason: None, attempt: 1, execution: String::new(), steps, outputs: BTreeMap::new() }
    }

    /// A run ended from outside shows nothing running: running tasks and steps take the run's
    /// reason, finished ones keep theirs, steps not started stay `NotExecuted`.
    #[test]
    fn ending_a_run_closes_what_was_running() {
        let spec = RunSpec { workflow: "w".into(), pipeline: "p".into(), ..RunSpec::default() };
        let mut run = RunObject::pending("w.p.1", spec);
        run.status.phase = RunPhase::Running;
        run.status.tasks.insert(
            "build".into(),
            task(
                StepStatus::Running,
                vec![
                    step("fetch", StepStatus::Success),
                    step("make", StepStatus::Running),
                    step("pack", StepStatus::NotExecuted),
                ],
            ),
        );
        run.status.tasks.insert("lint".into(), task(StepStatus::Success, vec![step("vet", StepStatus::Success)]));
        run.status
            .tasks
            .insert("test".into(), task(StepStatus::NotExecuted, vec![step("go", StepStatus::NotExecuted)]));
        let at = DateTime::parse_from_rfc3339("2026-11-28T12:00:00Z").expect("time").with_timezone(&Utc);

        run.status.end(RunPhase::Error, ErrorReason::AgentLost, "agent a lost the lease".into(), at);

        assert_eq!(
            (run.status.phase, run.status.reason, run.status.finished),
            (RunPhase::Error, Some(ErrorReason::AgentLost), Some(at))
        );
        let build = &run.status.tasks["build"];
        assert_eq!((build.status, build.reason), (StepStatus::Error, Some(ErrorReason::AgentLost)));
        let states: Vec<_> = build.steps.iter().map(|s| (s.status, s.reason, s.finished)).collect();
        assert_eq!(
            states,
            [
                (StepStatus::Success, None, None),
                (StepStatus::Error, Some(ErrorReason::AgentLost), Some(at)),
                (StepStatus::NotExecuted, None, None)
            ]
        );
        assert_eq!(run.status.tasks["lint"].status, StepStatus::Success);
        assert_eq!(run.status.tasks["test"].status, StepStatus::NotExecuted);
    }
}
