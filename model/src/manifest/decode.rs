//! The decoder: from a [`Node`] tree to a [`Workflow`], field by field, so
//! that one bad field does not hide the others.
//!
//! serde's derived `Deserialize` stops at the first error, which would make a
//! user fix a manifest one problem per attempt. This decoder instead reads
//! each field on its own, records every unknown field, missing field and
//! wrong value with its path, and goes on with a placeholder. It accepts
//! exactly what the derived `Deserialize` implementations accept (the tests
//! check both on the same manifests), which stay the format of stored
//! workflows.
//!
//! Where a value was replaced by a placeholder, its path is *poisoned*:
//! [`crate::validate`]'s findings at or under it are dropped, because they
//! would be about the placeholder rather than the manifest. An unknown field
//! with a close known name poisons that name too, so `stpes` is reported
//! once rather than also as "a task needs at least one step".

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Display;
use std::str::FromStr;

use chrono::{DateTime, Utc};

use super::node::Node;
use crate::{
    suggest, CatchUp, Concurrency, ConcurrencyPolicy, ContainerExecutor, CronTrigger, Env, EnvValue, Executor,
    FieldPath, Metadata, Pipeline, ProblemKind, ProcessExecutor, RetryPolicy, SecretKeyRef, Step, Task, Trigger,
    ValidationError, Webhook, WebhookProvider, WebhookTrigger, When, Workflow, WorkflowSpec, API_VERSION, KIND,
};

/// The problems found while decoding, and the paths whose values were
/// replaced by placeholders.
#[derive(Default)]
pub(crate) struct Decoder {
    pub(crate) errors: Vec<ValidationError>,
    pub(crate) poisoned: Vec<FieldPath>,
}

/// A mapping being read as a struct: it remembers which fields were asked
/// for, so [`Object::finish`] can report the others as unknown.
struct Object<'n> {
    entries: &'n [(String, Node)],
    path: FieldPath,
    known: Vec<&'static str>,
}

impl<'n> Object<'n> {
    /// The value of field `name`, if present and not null.
    fn get(&mut self, name: &'static str) -> Option<(&'n Node, FieldPath)> {
        self.known.push(name);
        self.entries
            .iter()
            .find(|(key, _)| key == name)
            .filter(|(_, value)| !matches!(value, Node::Null))
            .map(|(_, value)| (value, self.path.key(name)))
    }

    /// An optional field, decoded by `read`.
    fn opt<T>(
        &mut self,
        d: &mut Decoder,
        name: &'static str,
        read: impl FnOnce(&mut Decoder, &Node, &FieldPath) -> Option<T>,
    ) -> Option<T> {
        let (node, path) = self.get(name)?;
        read(d, node, &path)
    }

    /// A required field, decoded by `read`; reports it when missing.
    fn req<T>(
        &mut self,
        d: &mut Decoder,
        name: &'static str,
        read: impl FnOnce(&mut Decoder, &Node, &FieldPath) -> Option<T>,
    ) -> Option<T> {
        let Some((node, path)) = self.get(name) else {
            let hint = match name {
                "apiVersion" => format!("; set it to {API_VERSION:?}"),
                "kind" => format!("; set it to {KIND:?}"),
                _ => String::new(),
            };
            d.error(self.path.clone(), ProblemKind::MissingField, format!("missing field {name:?}{hint}"));
            d.poisoned.push(self.path.key(name));
            return None;
        };
        read(d, node, &path)
    }

    /// A field whose absence means an empty collection.
    fn or_default<T: Default>(
        &mut self,
        d: &mut Decoder,
        name: &'static str,
        read: impl FnOnce(&mut Decoder, &Node, &FieldPath) -> T,
    ) -> T {
        match self.get(name) {
            Some((node, path)) => read(d, node, &path),
            None => T::default(),
        }
    }

    /// Reports every key that was not asked for.
    fn finish(self, d: &mut Decoder) {
        for (key, _) in self.entries {
            if self.known.contains(&key.as_str()) {
                continue;
            }
            let message = match suggest::did_you_mean(key, self.known.iter().copied()) {
                Some(close) => {
                    d.poisoned.push(self.path.key(close));
                    format!("unknown field {key:?}; did you mean {close:?}?")
                }
                None => format!("unknown field {key:?}; the fields here are {}", self.known.join(", ")),
            };
            d.error(self.path.clone(), ProblemKind::UnknownField, message);
        }
    }
}

impl Decoder {
    fn error(&mut self, path: FieldPath, kind: ProblemKind, message: impl Into<String>) {
        self.errors.push(ValidationError::new(path, kind, message));
    }

    /// Reports a value that is replaced by a placeholder, and poisons it.
    fn fail(&mut self, path: &FieldPath, kind: ProblemKind, message: impl Into<String>) {
        self.poisoned.push(path.clone());
        self.error(path.clone(), kind, message);
    }

    fn wrong_type(&mut self, path: &FieldPath, expected: &str, found: &Node) {
        let mut message = format!("expected {expected}, found {}", found.describe());
        if expected.starts_with("a string") {
            if let Some(text) = found.scalar_text() {
                message.push_str(&format!("; quote it: \"{text}\""));
            }
        }
        self.fail(path, ProblemKind::InvalidType, message);
    }

    /// A mapping's entries, after reporting keys that appear twice.
    fn entries<'n>(&mut self, node: &'n Node, path: &FieldPath) -> Option<&'n [(String, Node)]> {
        let Node::Map(entries) = node else {
            self.wrong_type(path, "a mapping", node);
            return None;
        };
        let mut seen = BTreeSet::new();
        for (key, _) in entries {
            if !seen.insert(key.as_str()) {
                self.error(
                    path.clone(),
                    ProblemKind::DuplicateKey,
                    format!("duplicate key {key:?}; each key may appear once"),
                );
            }
        }
        Some(entries)
    }

    fn object<'n>(&mut self, node: &'n Node, path: &FieldPath) -> Option<Object<'n>> {
        let entries = self.entries(node, path)?;
        Some(Object { entries, path: path.clone(), known: Vec::new() })
    }

    fn string(&mut self, node: &Node, path: &FieldPath) -> Option<String> {
        match node {
            Node::Str(s) => Some(s.clone()),
            other => {
                self.wrong_type(path, "a string", other);
                None
            }
        }
    }

    fn uint<T: TryFrom<u64>>(&mut self, node: &Node, path: &FieldPath) -> Option<T> {
        let message = match node {
            Node::UInt(u) => match T::try_from(*u) {
                Ok(value) => return Some(value),
                Err(_) => format!("{u} is too large"),
            },
            Node::Int(i) => format!("expected a whole number of 0 or more, found {i}"),
            other => format!("expected a whole number, found {}", other.describe()),
        };
        self.fail(path, ProblemKind::InvalidType, message);
        None
    }

    /// A value written as a string (or, if `numbers`, a bare number) and
    /// parsed with `FromStr`.
    fn parsed<T>(
        &mut self,
        node: &Node,
        path: &FieldPath,
        kind: ProblemKind,
        expected: &str,
        numbers: bool,
    ) -> Option<T>
    where
        T: FromStr,
        T::Err: Display,
    {
        let text = match node {
            Node::Str(s) => s.clone(),
            Node::Int(_) | Node::UInt(_) | Node::Float(_) if numbers => node.scalar_text()?,
            other => {
                self.fail(path, ProblemKind::InvalidType, format!("expected {expected}, found {}", other.describe()));
                return None;
            }
        };
        match text.parse() {
            Ok(value) => Some(value),
            Err(error) => {
                self.fail(path, kind, error.to_string());
                None
            }
        }
    }

    fn duration(&mut self, node: &Node, path: &FieldPath) -> Option<crate::Duration> {
        self.parsed(node, path, ProblemKind::InvalidDuration, "a duration such as \"30s\" or \"1h30m\"", false)
    }

    /// One of a fixed set of names, such as a policy.
    fn choice<T: Copy>(
        &mut self,
        node: &Node,
        path: &FieldPath,
        what: &str,
        choices: &[(&'static str, T)],
    ) -> Option<T> {
        let text = self.string(node, path)?;
        if let Some((_, value)) = choices.iter().find(|(name, _)| *name == text) {
            return Some(*value);
        }
        let names = choices.iter().map(|(name, _)| *name);
        let hint = match suggest::did_you_mean(&text, names.clone()) {
            Some(close) => format!("; did you mean {close:?}?"),
            None => format!("; use one of {}", names.collect::<Vec<_>>().join(", ")),
        };
        self.fail(path, ProblemKind::InvalidValue, format!("unknown {what} {text:?}{hint}"));
        None
    }

    /// A list, each item decoded by `read`; a bad item leaves a placeholder in
    /// its place so that later indices keep their meaning.
    fn list<T: Placeholder>(
        &mut self,
        node: &Node,
        path: &FieldPath,
        mut read: impl FnMut(&mut Self, &Node, &FieldPath) -> Option<T>,
    ) -> Vec<T> {
        let Node::Seq(items) = node else {
            self.wrong_type(path, "a list", node);
            return Vec::new();
        };
        items
            .iter()
            .enumerate()
            .map(|(i, item)| read(self, item, &path.index(i)).unwrap_or_else(T::placeholder))
            .collect()
    }

    /// A mapping from names to values decoded by `read`; a bad value leaves
    /// a placeholder in its place so that references to its name still resolve.
    fn map<T: Placeholder>(
        &mut self,
        node: &Node,
        path: &FieldPath,
        mut read: impl FnMut(&mut Self, &Node, &FieldPath) -> Option<T>,
    ) -> BTreeMap<String, T> {
        let Some(entries) = self.entries(node, path) else {
            return BTreeMap::new();
        };
        let mut map = BTreeMap::new();
        for (key, value) in entries {
            if map.contains_key(key) {
                continue;
            }
            let item = read(self, value, &path.key(key)).unwrap_or_else(T::placeholder);
            map.insert(key.clone(), item);
        }
        map
    }

    fn strings(&mut self, node: &Node, path: &FieldPath) -> Vec<String> {
        self.list(node, path, Self::string)
    }

    fn string_map(&mut self, node: &Node, path: &FieldPath) -> BTreeMap<String, String> {
        self.map(node, path, Self::string)
    }

    pub(crate) fn workflow(&mut self, node: &Node) -> Option<Workflow> {
        let root = FieldPath::root();
        let Node::Map(_) = node else {
            self.fail(
                &root,
                ProblemKind::InvalidType,
                format!("a manifest is a mapping with apiVersion, kind, metadata and spec; found {}", node.describe()),
            );
            return None;
        };
        let mut o = self.object(node, &root)?;
        let workflow = Workflow {
            api_version: o.req(self, "apiVersion", Self::string).unwrap_or_default(),
            kind: o.req(self, "kind", Self::string).unwrap_or_default(),
            metadata: o.req(self, "metadata", Self::metadata).unwrap_or_default(),
            spec: o.req(self, "spec", Self::spec).unwrap_or_default(),
        };
        o.finish(self);
        Some(workflow)
    }

    fn metadata(&mut self, node: &Node, path: &FieldPath) -> Option<Metadata> {
        let mut o = self.object(node, path)?;
        let metadata = Metadata {
            name: o.req(self, "name", Self::string).unwrap_or_default(),
            description: o.opt(self, "description", Self::string),
            labels: o.or_default(self, "labels", Self::string_map),
            uid: o.opt(self, "uid", Self::string),
            creation_timestamp: o.opt(self, "creationTimestamp", Self::timestamp),
            resource_version: o.opt(self, "resourceVersion", Self::uint),
        };
        o.finish(self);
        Some(metadata)
    }

    fn timestamp(&mut self, node: &Node, path: &FieldPath) -> Option<DateTime<Utc>> {
        let text = self.string(node, path)?;
        match DateTime::parse_from_rfc3339(&text) {
            Ok(time) => Some(time.with_timezone(&Utc)),
            Err(_) => {
                self.fail(
                    path,
                    ProblemKind::InvalidValue,
                    format!("invalid timestamp {text:?}; use RFC 3339, as in \"2024-05-01T12:00:00Z\""),
                );
                None
            }
        }
    }

    fn spec(&mut self, node: &Node, path: &FieldPath) -> Option<WorkflowSpec> {
        let mut o = self.object(node, path)?;
        let spec = WorkflowSpec {
            triggers: o.or_default(self, "triggers", |d, n, p| d.map(n, p, Self::trigger)),
            pipelines: o.or_default(self, "pipelines", |d, n, p| d.map(n, p, Self::pipeline)),
        };
        o.finish(self);
        Some(spec)
    }

    /// The `type` of a tagged object, one of `kinds`; when it is missing or
    /// unknown the whole object is poisoned, since its other fields cannot be
    /// read.
    fn tag(&mut self, o: &mut Object<'_>, what: &str, kinds: &[(&'static str, &'static str)]) -> Option<&'static str> {
        let names: Vec<&str> = kinds.iter().map(|(name, _)| *name).collect();
        let kind = match o.get("type") {
            Some((node, path)) => self.choice(node, &path, what, kinds),
            None => {
                self.error(
                    o.path.clone(),
                    ProblemKind::MissingField,
                    format!("missing field \"type\"; use one of {}", names.join(", ")),
                );
                None
            }
        };
        if kind.is_none() {
            self.poisoned.push(o.path.clone());
        }
        kind
    }

    /// A trigger; when its type or settings cannot be read, a poisoned
    /// placeholder, so that pipelines naming it do not also report an
    /// unknown trigger.
    fn trigger(&mut self, node: &Node, path: &FieldPath) -> Option<Trigger> {
        let mut o = self.object(node, path)?;
        let kinds = [("cron", "cron"), ("webhook", "webhook")];
        let kind = self.tag(&mut o, "trigger type", &kinds)?;
        let trigger = if kind == "cron" {
            Trigger::Cron(CronTrigger {
                cron: o.req(self, "cron", Self::string).unwrap_or_default(),
                timezone: o.opt(self, "timezone", Self::string),
                catch_up: o.opt(self, "catchUp", |d, n, p| d.choice(n, p, "catchUp policy", &CatchUp::ALL)),
            })
        } else {
            match o.req(self, "webhook", Self::webhook) {
                Some(webhook) => Trigger::Webhook(WebhookTrigger { webhook }),
                None => {
                    self.poisoned.push(path.clone());
                    Trigger::placeholder()
                }
            }
        };
        o.finish(self);
        Some(trigger)
    }

    fn webhook(&mut self, node: &Node, path: &FieldPath) -> Option<Webhook> {
        let mut o = self.object(node, path)?;
        let provider = o.req(self, "provider", |d, n, p| d.choice(n, p, "provider", &WebhookProvider::ALL));
        let secret_ref = o.req(self, "secretRef", Self::string);
        let events = o.or_default(self, "events", Self::strings);
        o.finish(self);
        Some(Webhook { provider: provider?, secret_ref: secret_ref?, events })
    }

    fn pipeline(&mut self, node: &Node, path: &FieldPath) -> Option<Pipeline> {
        let mut o = self.object(node, path)?;
        let pipeline = Pipeline {
            description: o.opt(self, "description", Self::string),
            triggers: o.or_default(self, "triggers", Self::strings),
            agent_selector: o.or_default(self, "agentSelector", Self::string_map),
            executor: o.opt(self, "executor", Self::executor),
            env: o.or_default(self, "env", Self::env),
            concurrency: o.opt(self, "concurrency", Self::concurrency),
            timeout: o.opt(self, "timeout", Self::duration),
            retries: o.opt(self, "retries", Self::retries),
            working_dir: o.opt(self, "workingDir", Self::string),
            tasks: o.or_default(self, "tasks", |d, n, p| d.map(n, p, Self::task)),
        };
        o.finish(self);
        Some(pipeline)
    }

    fn task(&mut self, node: &Node, path: &FieldPath) -> Option<Task> {
        let mut o = self.object(node, path)?;
        let task = Task {
            dependencies: o.or_default(self, "dependencies", Self::strings),
            retries: o.opt(self, "retries", Self::retries),
            timeout: o.opt(self, "timeout", Self::duration),
            executor: o.opt(self, "executor", Self::executor),
            env: o.or_default(self, "env", Self::env),
            working_dir: o.opt(self, "workingDir", Self::string),
            when: o
                .opt(self, "when", |d, n, p| d.parsed::<When>(n, p, ProblemKind::InvalidValue, "a condition", false)),
            steps: o.or_default(self, "steps", |d, n, p| d.list(n, p, Self::step)),
        };
        o.finish(self);
        Some(task)
    }

    fn step(&mut self, node: &Node, path: &FieldPath) -> Option<Step> {
        let mut o = self.object(node, path)?;
        let step = Step {
            name: o.req(self, "name", Self::string).unwrap_or_default(),
            run: o.req(self, "run", Self::string).unwrap_or_default(),
            env: o.or_default(self, "env", Self::env),
            timeout: o.opt(self, "timeout", Self::duration),
        };
        o.finish(self);
        Some(step)
    }

    fn executor(&mut self, node: &Node, path: &FieldPath) -> Option<Executor> {
        let mut o = self.object(node, path)?;
        let kinds = [("container", "container"), ("process", "process")];
        let kind = self.tag(&mut o, "executor type", &kinds)?;
        let executor = if kind == "container" {
            let image = o.req(self, "image", Self::string);
            let cpu = o.opt(self, "cpu", |d, n, p| {
                d.parsed(n, p, ProblemKind::InvalidValue, "a CPU limit such as \"2\"", true)
            });
            let memory = o.opt(self, "memory", |d, n, p| {
                d.parsed(n, p, ProblemKind::InvalidValue, "a memory limit such as \"512Mi\"", true)
            });
            let pull_secret = o.opt(self, "pullSecret", Self::string);
            image.map(|image| Executor::Container(ContainerExecutor { image, cpu, memory, pull_secret }))
        } else {
            Some(Executor::Process(ProcessExecutor {}))
        };
        o.finish(self);
        executor
    }

    fn env(&mut self, node: &Node, path: &FieldPath) -> Env {
        self.map(node, path, Self::env_value)
    }

    fn env_value(&mut self, node: &Node, path: &FieldPath) -> Option<EnvValue> {
        match node {
            Node::Str(s) => Some(EnvValue::Literal(s.clone())),
            Node::Map(_) => {
                let mut o = self.object(node, path)?;
                let secret_ref = o.req(self, "secretRef", Self::string);
                let key = o.opt(self, "key", Self::string);
                o.finish(self);
                Some(EnvValue::Secret(SecretKeyRef { secret_ref: secret_ref?, key }))
            }
            other => {
                self.wrong_type(path, "a string or {secretRef: NAME}", other);
                None
            }
        }
    }

    fn concurrency(&mut self, node: &Node, path: &FieldPath) -> Option<Concurrency> {
        let mut o = self.object(node, path)?;
        let concurrency = Concurrency {
            policy: o.opt(self, "policy", |d, n, p| d.choice(n, p, "policy", &ConcurrencyPolicy::ALL)),
            max_concurrent: o.opt(self, "maxConcurrent", Self::uint),
        };
        o.finish(self);
        Some(concurrency)
    }

    fn retries(&mut self, node: &Node, path: &FieldPath) -> Option<RetryPolicy> {
        let mut o = self.object(node, path)?;
        let retries = RetryPolicy {
            limit: o.req(self, "limit", Self::uint).unwrap_or_default(),
            backoff: o.opt(self, "backoff", Self::duration),
            max_backoff: o.opt(self, "maxBackoff", Self::duration),
        };
        o.finish(self);
        Some(retries)
    }
}

/// The value left where one could not be read; its path is poisoned, so
/// validation never reports on it.
trait Placeholder {
    fn placeholder() -> Self;
}

impl Placeholder for String {
    fn placeholder() -> Self {
        String::new()
    }
}

impl Placeholder for EnvValue {
    fn placeholder() -> Self {
        EnvValue::Literal(String::new())
    }
}

impl Placeholder for Trigger {
    fn placeholder() -> Self {
        Trigger::Cron(CronTrigger { cron: String::new(), timezone: None, catch_up: None })
    }
}

impl Placeholder for Pipeline {
    fn placeholder() -> Self {
        Pipeline::default()
    }
}

impl Placeholder for Task {
    fn placeholder() -> Self {
        Task::default()
    }
}

impl Placeholder for Step {
    fn placeholder() -> Self {
        Step { name: String::new(), run: String::new(), env: Env::new(), timeout: None }
    }
}
