//! [`validate`]: the rules of DESIGN §6.2 that need the typed workflow:
//! names, emptiness, references, cycles, cron expressions and time zones,
//! durations, duplicates and limits.
//!
//! Unknown fields and wrong types are found earlier, while reading the text
//! (`manifest/decode.rs`); [`crate::parse_manifest`] runs both and reports
//! everything at once.

use std::collections::{BTreeMap, BTreeSet};

use crate::limits::{
    MAX_DESCRIPTION_BYTES, MAX_ENV_ENTRIES, MAX_ENV_VALUE_BYTES, MAX_LABELS, MAX_PIPELINES_PER_WORKFLOW,
    MAX_RETRY_LIMIT, MAX_RUN_BYTES, MAX_STEPS_PER_TASK, MAX_TASKS_PER_PIPELINE, MAX_TIMEOUT, MAX_TRIGGERS_PER_WORKFLOW,
    MAX_WEBHOOK_EVENTS, MIN_MEMORY,
};
use crate::{
    cron, dag, names, suggest, Concurrency, ConcurrencyPolicy, Duration, Env, EnvValue, Executor, FieldPath, Pipeline,
    ProblemKind, RetryPolicy, Step, Task, Trigger, ValidationError, ValidationErrors, When, Workflow, API_VERSION,
    KIND,
};

/// Checks `workflow` against every rule of DESIGN §6.2 that applies to a
/// typed value, and returns every problem found, ordered by path.
pub fn validate(workflow: &Workflow) -> Result<(), ValidationErrors> {
    let mut problems = problems(workflow);
    if problems.is_empty() {
        return Ok(());
    }
    problems.sort_by(|a, b| a.path.cmp(&b.path));
    Err(ValidationErrors::new(problems))
}

/// Every problem in `workflow`, in the order found.
pub(crate) fn problems(workflow: &Workflow) -> Vec<ValidationError> {
    let mut v = Validator::default();
    v.workflow(workflow);
    v.errors
}

#[derive(Default)]
struct Validator {
    errors: Vec<ValidationError>,
}

impl Validator {
    fn push(&mut self, path: FieldPath, kind: ProblemKind, message: impl Into<String>) {
        self.errors.push(ValidationError::new(path, kind, message));
    }

    fn workflow(&mut self, workflow: &Workflow) {
        let root = FieldPath::root();
        if workflow.api_version != API_VERSION {
            self.push(
                root.key("apiVersion"),
                ProblemKind::Unsupported,
                format!("unsupported apiVersion {:?}; use {API_VERSION:?}", workflow.api_version),
            );
        }
        if workflow.kind != KIND {
            self.push(
                root.key("kind"),
                ProblemKind::Unsupported,
                format!("unsupported kind {:?}; use {KIND:?}", workflow.kind),
            );
        }

        let metadata = root.key("metadata");
        self.name(metadata.key("name"), "workflow", &workflow.metadata.name);
        self.description(metadata.key("description"), workflow.metadata.description.as_deref());
        self.labels(metadata.key("labels"), &workflow.metadata.labels);

        let spec = root.key("spec");
        let triggers = spec.key("triggers");
        self.count(&triggers, "triggers", workflow.spec.triggers.len(), MAX_TRIGGERS_PER_WORKFLOW);
        for (name, trigger) in &workflow.spec.triggers {
            let path = triggers.key(name);
            self.key_name(&path, "trigger", name);
            self.trigger(&path, trigger);
        }

        let pipelines = spec.key("pipelines");
        if workflow.spec.pipelines.is_empty() {
            self.push(pipelines.clone(), ProblemKind::Empty, "a workflow needs at least one pipeline");
        }
        self.count(&pipelines, "pipelines", workflow.spec.pipelines.len(), MAX_PIPELINES_PER_WORKFLOW);
        let declared: Vec<&str> = workflow.spec.triggers.keys().map(String::as_str).collect();
        for (name, pipeline) in &workflow.spec.pipelines {
            let path = pipelines.key(name);
            self.key_name(&path, "pipeline", name);
            self.pipeline(&path, pipeline, &declared);
        }
    }

    fn trigger(&mut self, path: &FieldPath, trigger: &Trigger) {
        match trigger {
            Trigger::Cron(cron) => {
                if let Err(error) = cron::parse_cron(&cron.cron) {
                    self.push(path.key("cron"), ProblemKind::InvalidCron, error.to_string());
                }
                if let Some(timezone) = &cron.timezone {
                    if let Err(error) = cron::parse_timezone(timezone) {
                        self.push(path.key("timezone"), ProblemKind::InvalidTimezone, error.to_string());
                    }
                }
            }
            Trigger::Webhook(webhook) => {
                let path = path.key("webhook");
                self.name(path.key("secretRef"), "secret", &webhook.webhook.secret_ref);
                let events = path.key("events");
                self.count(&events, "events", webhook.webhook.events.len(), MAX_WEBHOOK_EVENTS);
                for (i, event) in webhook.webhook.events.iter().enumerate() {
                    if event.trim().is_empty() {
                        self.push(events.index(i), ProblemKind::InvalidValue, "an event name must not be empty");
                    }
                }
            }
        }
    }

    fn pipeline(&mut self, path: &FieldPath, pipeline: &Pipeline, declared: &[&str]) {
        self.description(path.key("description"), pipeline.description.as_deref());

        let mut seen = BTreeSet::new();
        for (i, trigger) in pipeline.triggers.iter().enumerate() {
            let at = path.key("triggers").index(i);
            if !declared.contains(&trigger.as_str()) {
                let hint = match suggest::did_you_mean(trigger, declared.iter().copied()) {
                    Some(close) => format!("; did you mean {close:?}?"),
                    None => "; declare it under spec.triggers".to_string(),
                };
                self.push(at, ProblemKind::UnknownTrigger, format!("unknown trigger {trigger:?}{hint}"));
            } else if !seen.insert(trigger.as_str()) {
                self.push(at, ProblemKind::InvalidValue, format!("trigger {trigger:?} is listed twice"));
            }
        }

        self.labels(path.key("agentSelector"), &pipeline.agent_selector);
        if let Some(executor) = &pipeline.executor {
            self.executor(&path.key("executor"), executor);
        }
        self.env(&path.key("env"), &pipeline.env);
        if let Some(concurrency) = &pipeline.concurrency {
            self.concurrency(&path.key("concurrency"), concurrency);
        }
        self.timeout(path.key("timeout"), pipeline.timeout);
        if let Some(retries) = &pipeline.retries {
            self.retries(&path.key("retries"), retries);
        }
        self.working_dir(path.key("workingDir"), pipeline.working_dir.as_deref());

        let tasks = path.key("tasks");
        if pipeline.tasks.is_empty() {
            self.push(tasks.clone(), ProblemKind::Empty, "a pipeline needs at least one task");
        }
        self.count(&tasks, "tasks", pipeline.tasks.len(), MAX_TASKS_PER_PIPELINE);
        for (name, task) in &pipeline.tasks {
            let path = tasks.key(name);
            self.key_name(&path, "task", name);
            self.task(&path, name, task, &pipeline.tasks);
        }
        for members in dag::find_cycles(&pipeline.tasks) {
            self.push(
                tasks.clone(),
                ProblemKind::Cycle,
                format!("dependency cycle: {} (each task depends on the next)", dag::cycle_text(&members)),
            );
        }
    }

    fn task(&mut self, path: &FieldPath, name: &str, task: &Task, tasks: &BTreeMap<String, Task>) {
        let mut seen = BTreeSet::new();
        for (i, dependency) in task.dependencies.iter().enumerate() {
            let at = path.key("dependencies").index(i);
            if dependency == name {
                self.push(at, ProblemKind::Cycle, format!("task {name:?} depends on itself"));
            } else if !tasks.contains_key(dependency) {
                self.push(
                    at,
                    ProblemKind::UnknownDependency,
                    format!("unknown task {dependency:?}{}", task_hint(dependency, tasks)),
                );
            } else if !seen.insert(dependency.as_str()) {
                self.push(at, ProblemKind::InvalidValue, format!("task {dependency:?} is listed twice"));
            }
        }
        if let Some(retries) = &task.retries {
            self.retries(&path.key("retries"), retries);
        }
        self.timeout(path.key("timeout"), task.timeout);
        if let Some(executor) = &task.executor {
            self.executor(&path.key("executor"), executor);
        }
        self.env(&path.key("env"), &task.env);
        self.working_dir(path.key("workingDir"), task.working_dir.as_deref());
        if let Some(when) = &task.when {
            self.when(path.key("when"), name, task, when, tasks);
        }

        let steps = path.key("steps");
        if task.steps.is_empty() {
            self.push(steps.clone(), ProblemKind::Empty, "a task needs at least one step");
        }
        self.count(&steps, "steps", task.steps.len(), MAX_STEPS_PER_TASK);
        let mut names = BTreeSet::new();
        for (i, step) in task.steps.iter().enumerate() {
            let path = steps.index(i);
            self.step(&path, step);
            if !step.name.is_empty() && !names.insert(step.name.as_str()) {
                self.push(
                    path.key("name"),
                    ProblemKind::DuplicateStep,
                    format!("duplicate step name {:?}; step names must be unique within a task", step.name),
                );
            }
        }
    }

    fn when(&mut self, path: FieldPath, name: &str, task: &Task, when: &When, tasks: &BTreeMap<String, Task>) {
        for reference in when.references() {
            let message = match reference.task {
                None => format!("cannot read {:?}; write {{{{ tasks.TASK.outputs.KEY }}}}", reference.text),
                Some(other) if !tasks.contains_key(other) => {
                    format!("unknown task {other:?} in {:?}{}", reference.text, task_hint(other, tasks))
                }
                Some(other) if !task.dependencies.iter().any(|d| d == other) => format!(
                    "task {name:?} reads the outputs of {other:?}, which is not among its \
                     dependencies; add it to dependencies"
                ),
                Some(_) => continue,
            };
            self.push(path.clone(), ProblemKind::InvalidValue, message);
        }
        if let Err(message) = when.check_syntax() {
            self.push(path, ProblemKind::InvalidValue, message);
        }
    }

    fn step(&mut self, path: &FieldPath, step: &Step) {
        self.name(path.key("name"), "step", &step.name);
        if step.run.trim().is_empty() {
            self.push(path.key("run"), ProblemKind::Empty, "a step needs a command to run");
        } else if step.run.len() > MAX_RUN_BYTES {
            self.push(
                path.key("run"),
                ProblemKind::TooLarge,
                format!("the script is {} bytes; the maximum is {MAX_RUN_BYTES}", step.run.len()),
            );
        }
        self.env(&path.key("env"), &step.env);
        self.timeout(path.key("timeout"), step.timeout);
    }

    fn executor(&mut self, path: &FieldPath, executor: &Executor) {
        let Executor::Container(container) = executor else {
            return;
        };
        if container.image.trim().is_empty() {
            self.push(path.key("image"), ProblemKind::Empty, "a container executor needs an image");
        } else if container.image.chars().any(char::is_whitespace) {
            self.push(
                path.key("image"),
                ProblemKind::InvalidValue,
                format!("invalid image {:?}: an image reference has no whitespace", container.image),
            );
        }
        if let Some(secret) = &container.pull_secret {
            self.name(path.key("pullSecret"), "secret", secret);
        }
        if container.cpu.is_some_and(|cpu| cpu.millicores() == 0) {
            self.push(path.key("cpu"), ProblemKind::InvalidValue, "must be greater than zero");
        }
        if let Some(memory) = container.memory {
            if memory < MIN_MEMORY {
                self.push(
                    path.key("memory"),
                    ProblemKind::InvalidValue,
                    format!("{memory} is under the minimum of {MIN_MEMORY}"),
                );
            }
        }
    }

    fn env(&mut self, path: &FieldPath, env: &Env) {
        self.count(path, "variables", env.len(), MAX_ENV_ENTRIES);
        for (name, value) in env {
            let at = path.key(name);
            if let Some(problem) = names::env_name_problem(name) {
                self.push(at.clone(), ProblemKind::InvalidName, problem);
            }
            match value {
                EnvValue::Literal(text) if text.len() > MAX_ENV_VALUE_BYTES => self.push(
                    at,
                    ProblemKind::TooLarge,
                    format!("the value is {} bytes; the maximum is {MAX_ENV_VALUE_BYTES}", text.len()),
                ),
                EnvValue::Literal(_) => {}
                EnvValue::Secret(secret) => {
                    self.name(at.key("secretRef"), "secret", &secret.secret_ref);
                    if secret.key.as_deref().is_some_and(|key| key.trim().is_empty()) {
                        self.push(
                            at.key("key"),
                            ProblemKind::Empty,
                            "a secret key must not be empty; leave key out to use the secret's only value",
                        );
                    }
                }
            }
        }
    }

    fn concurrency(&mut self, path: &FieldPath, concurrency: &Concurrency) {
        let Some(max) = concurrency.max_concurrent else {
            return;
        };
        let at = path.key("maxConcurrent");
        if max == 0 {
            self.push(at, ProblemKind::InvalidValue, "must be at least 1");
        } else if concurrency.policy() != ConcurrencyPolicy::Allow {
            self.push(
                at,
                ProblemKind::InvalidValue,
                format!(
                    "maxConcurrent applies only to policy Allow; policy {:?} runs one at a time",
                    concurrency.policy()
                ),
            );
        }
    }

    fn retries(&mut self, path: &FieldPath, retries: &RetryPolicy) {
        if retries.limit > MAX_RETRY_LIMIT {
            self.push(
                path.key("limit"),
                ProblemKind::TooLarge,
                format!("{} retries is over the maximum of {MAX_RETRY_LIMIT}", retries.limit),
            );
        }
        self.max_duration(path.key("backoff"), retries.backoff);
        self.max_duration(path.key("maxBackoff"), retries.max_backoff);
        if let (Some(backoff), Some(max)) = (retries.backoff, retries.max_backoff) {
            if max < backoff {
                self.push(
                    path.key("maxBackoff"),
                    ProblemKind::InvalidValue,
                    format!("maxBackoff {max} is shorter than backoff {backoff}"),
                );
            }
        }
    }

    fn timeout(&mut self, path: FieldPath, timeout: Option<Duration>) {
        if timeout.is_some_and(Duration::is_zero) {
            self.push(path, ProblemKind::InvalidDuration, "a timeout must be greater than zero");
        } else {
            self.max_duration(path, timeout);
        }
    }

    fn max_duration(&mut self, path: FieldPath, duration: Option<Duration>) {
        if let Some(duration) = duration.filter(|d| *d > MAX_TIMEOUT) {
            self.push(path, ProblemKind::TooLarge, format!("{duration} is over the maximum of {MAX_TIMEOUT}"));
        }
    }

    fn working_dir(&mut self, path: FieldPath, dir: Option<&str>) {
        let Some(dir) = dir else {
            return;
        };
        if dir.trim().is_empty() {
            self.push(path, ProblemKind::Empty, "workingDir must not be empty; leave it out to use the workspace");
        } else if dir.contains('\0') || dir.split('/').any(|part| part == "..") {
            self.push(
                path,
                ProblemKind::InvalidValue,
                format!("invalid workingDir {dir:?}: it must not contain \"..\" or NUL"),
            );
        }
    }

    fn labels(&mut self, path: FieldPath, labels: &BTreeMap<String, String>) {
        self.count(&path, "labels", labels.len(), MAX_LABELS);
        for (key, value) in labels {
            let at = path.key(key);
            if let Some(problem) = names::label_key_problem(key) {
                self.push(at.clone(), ProblemKind::InvalidName, problem);
            }
            if let Some(problem) = names::label_value_problem(value) {
                self.push(at, ProblemKind::InvalidValue, problem);
            }
        }
    }

    fn description(&mut self, path: FieldPath, description: Option<&str>) {
        if let Some(text) = description.filter(|t| t.len() > MAX_DESCRIPTION_BYTES) {
            self.push(
                path,
                ProblemKind::TooLarge,
                format!("the description is {} bytes; the maximum is {MAX_DESCRIPTION_BYTES}", text.len()),
            );
        }
    }

    fn count(&mut self, path: &FieldPath, what: &str, count: usize, max: usize) {
        if count > max {
            self.push(path.clone(), ProblemKind::TooLarge, format!("too many {what} ({count}); the maximum is {max}"));
        }
    }

    /// A name held in a field, such as `metadata.name`.
    fn name(&mut self, path: FieldPath, kind: &str, name: &str) {
        if let Some(message) = names::name_message(kind, name) {
            self.push(path, ProblemKind::InvalidName, message);
        }
    }

    /// A name that is a mapping key, reported at the key's own path.
    fn key_name(&mut self, path: &FieldPath, kind: &str, name: &str) {
        self.name(path.clone(), kind, name);
    }
}

/// A hint after an unknown task name: the closest task, or the list of
/// tasks when it is short.
fn task_hint(unknown: &str, tasks: &BTreeMap<String, Task>) -> String {
    let names = tasks.keys().map(String::as_str);
    if let Some(close) = suggest::did_you_mean(unknown, names.clone()) {
        format!("; did you mean {close:?}?")
    } else if (1..=10).contains(&tasks.len()) {
        format!("; the tasks are {}", names.collect::<Vec<_>>().join(", "))
    } else {
        String::new()
    }
}
