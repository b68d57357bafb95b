//! [`When`]: the condition under which a task runs (DESIGN §10).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::suggest;

/// When a task runs, once its dependencies have finished.
///
/// ```yaml
/// when: on_success                                  # the default
/// when: on_failure
/// when: always
/// when: "{{ tasks.test.outputs.coverage }} > 80"    # an expression over outputs
/// ```
///
/// An expression is kept as written and evaluated by the agent; validation
/// checks that each `{{ tasks.TASK.outputs.KEY }}` names a dependency.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub enum When {
    /// Every dependency succeeded (the default).
    #[default]
    OnSuccess,
    /// At least one dependency failed.
    OnFailure,
    /// Whatever the dependencies' outcome.
    Always,
    /// An expression over dependencies' outputs.
    Expression(String),
}

/// Why a text is not a [`When`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown condition {text:?}{hint}")]
pub struct WhenError {
    text: String,
    hint: String,
}

const KEYWORDS: [(&str, When); 3] =
    [("on_success", When::OnSuccess), ("on_failure", When::OnFailure), ("always", When::Always)];

/// One `{{ tasks.TASK.outputs.KEY }}` reference in an expression.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct OutputRef<'a> {
    /// The whole `{{ ... }}` text.
    pub(crate) text: &'a str,
    /// The task named, or `None` if the reference is not of that form.
    pub(crate) task: Option<&'a str>,
    /// The output key named, when `task` is `Some`.
    pub(crate) key: Option<&'a str>,
}

/// The longest condition accepted, in characters: real conditions are a line or two, and the
/// bound keeps the work of reading one small (see [`on_cel_stack`]).
pub const MAX_CONDITION_CHARS: usize = 1000;

/// The deepest nesting of brackets (`(`, `[`, `{`) accepted in a condition.
pub const MAX_CONDITION_NESTING: usize = 32;

/// The stack of the thread that reads and evaluates a condition. The `cel` crate's parser and
/// evaluator recurse once per level of nesting and per operator of a chain (`1+1+1…`), with
/// large frames: measured in a debug build, 16 levels of parentheses overflow a 2 MiB stack
/// (a tokio worker's), and the worst condition within the two bounds above (a chain of 500
/// additions) needs between 16 and 32 MiB; a stack overflow aborts the whole process, a
/// server's or an agent's. Only the pages used are ever touched.
const CEL_STACK_BYTES: usize = 64 << 20;

/// Runs `work` (reading or evaluating a condition) on a thread with [`CEL_STACK_BYTES`] of
/// stack, and waits for it.
fn on_cel_stack<T: Send>(work: impl FnOnce() -> Result<T, String> + Send) -> Result<T, String> {
    std::thread::scope(|scope| {
        let thread = std::thread::Builder::new()
            .name("xene-cel".into())
            .stack_size(CEL_STACK_BYTES)
            .spawn_scoped(scope, work)
            .map_err(|e| format!("could not start a thread to read the condition: {e}"))?;
        thread
            .join()
            .unwrap_or_else(|_| Err("reading the condition failed unexpectedly (a panic in the CEL library)".into()))
    })
}

/// Why a condition is too large to read, if it is: `written` longer than
/// [`MAX_CONDITION_CHARS`] (its CEL, with each reference replaced by a shorter name, is shorter
/// still), or `cel` nested deeper than [`MAX_CONDITION_NESTING`] (brackets inside string
/// literals do not count).
fn too_large(written: &str, cel: &str) -> Option<String> {
    let length = written.chars().count();
    if length > MAX_CONDITION_CHARS {
        return Some(format!("is {length} characters long; a condition may have at most {MAX_CONDITION_CHARS}"));
    }
    let (mut depth, mut deepest) = (0usize, 0usize);
    let mut chars = cel.char_indices();
    while let Some((at, c)) = chars.next() {
        match c {
            '(' | '[' | '{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            ')' | ']' | '}' => depth = depth.saturating_sub(1),
            '\'' | '"' => {
                // A string literal: '…', "…", '''…''' or """…""", raw (no escapes) after r or R.
                let raw = cel[..at].chars().next_back().is_some_and(|p| p == 'r' || p == 'R');
                let triple = cel[at..].starts_with(&c.to_string().repeat(3));
                let closing = c.to_string().repeat(if triple { 3 } else { 1 });
                if triple {
                    chars.next();
                    chars.next();
                }
                while let Some((inner, d)) = chars.next() {
                    if d == '\\' && !raw {
                        chars.next();
                    } else if cel[inner..].starts_with(&closing) {
                        for _ in 1..closing.len() {
                            chars.next();
                        }
                        break;
                    }
                }
            }
            _ => {}
        }
    }
    (deepest > MAX_CONDITION_NESTING).then(|| {
        format!("nests brackets {deepest} deep; a condition may nest them at most {MAX_CONDITION_NESTING} deep")
    })
}

/// A condition as an error about its size shows it: its first 80 characters.
fn excerpt(text: &str) -> String {
    match text.char_indices().nth(80) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_string(),
    }
}

/// The variable of the `index`th distinct reference in an expression turned into CEL.
fn variable(index: usize) -> String {
    format!("xene_output_{index}")
}

impl When {
    /// The keyword or expression as written.
    pub fn as_str(&self) -> &str {
        match self {
            Self::OnSuccess => "on_success",
            Self::OnFailure => "on_failure",
            Self::Always => "always",
            Self::Expression(expression) => expression,
        }
    }

    /// The `{{ ... }}` references of an expression, in order; an unclosed
    /// `{{` yields a reference without a task.
    pub(crate) fn references(&self) -> Vec<OutputRef<'_>> {
        let Self::Expression(expression) = self else {
            return Vec::new();
        };
        let mut refs = Vec::new();
        let mut rest = expression.as_str();
        while let Some(start) = rest.find("{{") {
            let after = &rest[start..];
            let Some(end) = after.find("}}") else {
                refs.push(OutputRef { text: after, task: None, key: None });
                break;
            };
            let text = &after[..end + 2];
            let parts: Vec<&str> = text[2..text.len() - 2].trim().split('.').collect();
            let (task, key) = match parts.as_slice() {
                ["tasks", task, "outputs", key]
                    if !task.is_empty()
                        && !key.is_empty()
                        && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') =>
                {
                    (Some(*task), Some(*key))
                }
                _ => (None, None),
            };
            refs.push(OutputRef { text, task, key });
            rest = &after[end + 2..];
        }
        refs
    }

    /// An expression as CEL (the Common Expression Language, as Kubernetes and Argo use it):
    /// each distinct `{{ tasks.TASK.outputs.KEY }}` becomes a variable, returned with the
    /// task and key it stands for. `None` for a keyword, or when a reference is malformed
    /// (validation says so).
    fn as_cel(&self) -> Option<(String, Vec<(&str, &str)>)> {
        let Self::Expression(expression) = self else { return None };
        let mut cel = String::new();
        let mut bound: Vec<(&str, &str)> = Vec::new();
        let mut rest = expression.as_str();
        for reference in self.references() {
            let (Some(task), Some(key)) = (reference.task, reference.key) else { return None };
            // References come in order and do not overlap: this one is the first in `rest`.
            let at = rest.find(reference.text)?;
            cel.push_str(&rest[..at]);
            let index = match bound.iter().position(|b| *b == (task, key)) {
                Some(index) => index,
                None => {
                    bound.push((task, key));
                    bound.len() - 1
                }
            };
            cel.push_str(&variable(index));
            rest = &rest[at + reference.text.len()..];
        }
        cel.push_str(rest);
        Some((cel, bound))
    }

    /// Whether an expression can be read (validation): `Err` says why not. Keywords, and
    /// expressions with malformed references (reported on their own), pass.
    pub(crate) fn check_syntax(&self) -> Result<(), String> {
        let Some((cel, bound)) = self.as_cel() else { return Ok(()) };
        if let Some(why) = too_large(self.as_str(), &cel) {
            return Err(format!("the condition {:?} {why}", excerpt(self.as_str())));
        }
        let variables = on_cel_stack(|| {
            let program = cel::Program::compile(&cel).map_err(|e| self.unreadable(&e))?;
            Ok(program.references().variables().into_iter().map(String::from).collect::<Vec<_>>())
        })?;
        // Any other name is a typo or an unquoted string: it could only fail at run time.
        let mut unknown: Vec<&str> = variables
            .iter()
            .map(String::as_str)
            .filter(|name| !(0..bound.len()).any(|index| variable(index) == *name))
            .collect();
        unknown.sort_unstable();
        match unknown.first() {
            Some(name) => Err(format!(
                "the condition {:?} names {name:?}, which is neither an output ({{{{ tasks.TASK.outputs.KEY }}}}) nor a quoted string ('{name}')",
                self.as_str()
            )),
            None => Ok(()),
        }
    }

    /// Why the expression is not CEL, in its own words: the parser's message without the
    /// position and the excerpt, which are of the expression with its references replaced.
    fn unreadable(&self, error: &cel::ParseErrors) -> String {
        let text = error.to_string();
        let first = text.lines().next().unwrap_or_default();
        let why = first.rsplit_once(": ").map_or(first, |(_, why)| why);
        format!("the condition {:?} cannot be read as CEL: {why}", self.as_str())
    }

    /// Evaluates an expression with the outputs `output(task, key)` gives; an output never
    /// written reads as the empty string, as in GitHub Actions. A value that reads as an
    /// integer, a number or `true`/`false` is one; any other is a string. `Err` says why the
    /// expression has no true-or-false value; keywords have none to give either.
    pub fn evaluate(&self, output: impl Fn(&str, &str) -> Option<String>) -> Result<bool, String> {
        let Some((cel, bound)) = self.as_cel() else {
            return Err(format!("{:?} is not an expression over task outputs", self.as_str()));
        };
        if let Some(why) = too_large(self.as_str(), &cel) {
            return Err(format!("the condition {:?} {why}", excerpt(self.as_str())));
        }
        let values: Vec<(String, cel::Value)> = bound
            .iter()
            .map(|(task, key)| {
                let value = typed(&output(task, key).unwrap_or_default());
                (format!("{task}.{key} = {}", shown(&value)), value)
            })
            .collect();
        let read = values.iter().map(|(read, _)| read.as_str()).collect::<Vec<_>>().join(", ");
        let outcome = on_cel_stack(|| {
            let program = cel::Program::compile(&cel).map_err(|e| self.unreadable(&e))?;
            let mut context = cel::Context::default();
            for (index, (_, value)) in values.into_iter().enumerate() {
                context.add_variable_from_value(variable(index), value);
            }
            // The value leaves the thread as what is said of it: nothing of the program does.
            Ok(program.execute(&context).map_err(|e| e.to_string()).map(|value| match value {
                cel::Value::Bool(value) => Ok(value),
                other => Err(shown(&other)),
            }))
        })?;
        match outcome {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(other)) => Err(format!(
                "the condition {:?} gives {other}, not true or false (with {read}); compare it, e.g. with > or ==",
                self.as_str(),
            )),
            Err(e) => Err(format!(
                "the condition {:?} cannot be evaluated with {read}: {e}; values that read as numbers are numbers, others strings",
                self.as_str()
            )),
        }
    }
}

/// A value as a condition would write it: `87`, `0.75`, `true`, `'main'`.
fn shown(value: &cel::Value) -> String {
    match value {
        cel::Value::Int(int) => int.to_string(),
        cel::Value::UInt(uint) => uint.to_string(),
        cel::Value::Float(float) => float.to_string(),
        cel::Value::Bool(boolean) => boolean.to_string(),
        cel::Value::String(text) => format!("{:?}", text.as_str()),
        cel::Value::Null => "null".into(),
        other => format!("{other:?}"),
    }
}

/// An output's text as a CEL value: an integer, a finite number, a boolean, or a string.
fn typed(text: &str) -> cel::Value {
    if let Ok(int) = text.parse::<i64>() {
        return cel::Value::Int(int);
    }
    match text.parse::<f64>() {
        Ok(float) if float.is_finite() && text.bytes().any(|b| b.is_ascii_digit()) => cel::Value::Float(float),
        _ => match text {
            "true" => cel::Value::Bool(true),
            "false" => cel::Value::Bool(false),
            _ => cel::Value::String(std::sync::Arc::new(text.to_string())),
        },
    }
}

impl FromStr for When {
    type Err = WhenError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if let Some((_, when)) = KEYWORDS.iter().find(|(name, _)| *name == text) {
            return Ok(when.clone());
        }
        if text.contains("{{") {
            return Ok(Self::Expression(text.to_string()));
        }
        let hint = match suggest::did_you_mean(text, KEYWORDS.iter().map(|(name, _)| *name)) {
            Some(name) => format!("; did you mean {name:?}?"),
            None => "; use on_success, on_failure, always or an expression such as \
                     \"{{ tasks.test.outputs.coverage }} > 80\""
                .to_string(),
        };
        Err(WhenError { text: text.to_string(), hint })
    }
}

impl fmt::Display for When {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for When {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for When {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keywords_expressions_and_typos() {
        assert_eq!("always".parse::<When>().unwrap(), When::Always);
        let expression: When = "{{ tasks.test.outputs.coverage }} > 80".parse().unwrap();
        let refs = expression.references();
        assert_eq!(refs.len(), 1);
        assert_eq!(refs[0].task, Some("test"));
        assert_eq!(
            "on_sucess".parse::<When>().unwrap_err().to_string(),
            "unknown condition \"on_sucess\"; did you mean \"on_success\"?"
        );
        let odd: When = "{{ foo }} && {{ tasks.a.outputs.x".parse().unwrap();
        let refs = odd.references();
        assert_eq!(refs.len(), 2);
        assert_eq!((refs[0].text, refs[0].task), ("{{ foo }}", None));
        assert_eq!(refs[1].task, None);
    }

    fn when(text: &str) -> When {
        text.parse().expect("a condition")
    }

    #[test]
    fn expressions_evaluate_over_outputs_typed_as_they_read() {
        let outputs = |task: &str, key: &str| match (task, key) {
            ("test", "coverage") => Some("87".to_string()),
            ("test", "ratio") => Some("0.75".to_string()),
            ("build", "branch") => Some("main".to_string()),
            ("build", "green") => Some("true".to_string()),
            ("unit-test", "passed") => Some("12".to_string()),
            _ => None,
        };
        for (text, want) in [
            ("{{ tasks.test.outputs.coverage }} > 80", true),
            ("{{ tasks.test.outputs.coverage }} > 90", false),
            ("{{tasks.test.outputs.coverage}} >= 87 && {{ tasks.test.outputs.coverage }} < 88", true),
            ("{{ tasks.test.outputs.ratio }} > 0.5", true),
            ("{{ tasks.build.outputs.branch }} == 'main'", true),
            ("{{ tasks.build.outputs.branch }} == \"release\"", false),
            ("{{ tasks.build.outputs.green }}", true),
            ("!{{ tasks.build.outputs.green }} || {{ tasks.unit-test.outputs.passed }} == 12", true),
            ("{{ tasks.build.outputs.missing }} == ''", true),
            // Typed as they read: true is a boolean, not the string 'true'.
            ("{{ tasks.build.outputs.green }} == true", true),
            ("{{ tasks.test.outputs.coverage }} == 87.0", true),
        ] {
            assert_eq!(when(text).evaluate(outputs), Ok(want), "{text}");
        }
        for (text, why) in [
            ("{{ tasks.build.outputs.branch }} > 80", "cannot be evaluated with build.branch = \"main\""),
            ("{{ tasks.test.outputs.coverage }} + 1", "gives 88, not true or false (with test.coverage = 87)"),
            ("{{ tasks.test.outputs.coverage }} >", "cannot be read"),
        ] {
            let message = when(text).evaluate(outputs).expect_err(text);
            assert!(message.contains(why) && message.contains(text), "{text}: {message}");
        }
        assert!(When::Always.evaluate(outputs).is_err(), "a keyword is no expression");
    }

    #[test]
    fn syntax_is_checked_before_anything_runs() {
        assert_eq!(when("{{ tasks.a.outputs.x }} > 1 && {{ tasks.a.outputs.x }} < 5").check_syntax(), Ok(()));
        let message = when("{{ tasks.a.outputs.x }} >> 1").check_syntax().expect_err("not CEL");
        assert!(message.contains("\"{{ tasks.a.outputs.x }} >> 1\" cannot be read as CEL"), "{message}");
        assert!(!message.contains("xene_output"), "the user's words, not the rewritten ones: {message}");
        assert_eq!(when("{{ nonsense }} >> 1").check_syntax(), Ok(()), "malformed references are reported elsewhere");
        let message = when("{{ tasks.b.outputs.branch }} == main").check_syntax().expect_err("an unquoted string");
        assert!(
            message.contains("names \"main\", which is neither an output") && message.contains("('main')"),
            "{message}"
        );
        assert_eq!(When::OnFailure.check_syntax(), Ok(()));
    }

    /// The `cel` crate recurses per level and per operator: a condition within the bounds is
    /// read and evaluated whole (on its own stack; this test's thread has 2 MiB, which 16
    /// levels of parentheses overflowed), one beyond them is refused before it is parsed.
    #[test]
    fn conditions_are_bounded_and_the_largest_allowed_ones_are_read_and_evaluated() {
        let x = "{{ tasks.a.outputs.x }}";
        let outputs = |_: &str, _: &str| Some("1".to_string());
        let deepest = MAX_CONDITION_NESTING;
        let parentheses = |depth: usize| when(&format!("{x} == {}1{}", "(".repeat(depth), ")".repeat(depth)));
        assert_eq!(parentheses(deepest).check_syntax(), Ok(()));
        assert_eq!(parentheses(deepest).evaluate(outputs), Ok(true));
        let lists = when(&format!("{x} == size({}1{})", "[".repeat(deepest - 1), "]".repeat(deepest - 1)));
        assert_eq!(lists.check_syntax(), Ok(()));
        assert_eq!(lists.evaluate(outputs), Ok(true));
        let message = parentheses(deepest + 1).check_syntax().expect_err("too deep");
        assert!(message.contains(&format!("nests brackets {} deep", deepest + 1)), "{message}");
        assert!(message.contains(&format!("at most {deepest} deep")), "{message}");
        assert_eq!(parentheses(deepest + 1).evaluate(outputs), Err(message));

        // Chains as long as allowed: a left-deep tree of about 500 operators, 480 negations.
        let head = format!("{x} == ");
        let chain = when(&format!("{head}1{}", "+0".repeat((MAX_CONDITION_CHARS - head.len() - 1) / 2)));
        assert_eq!(chain.as_str().len(), MAX_CONDITION_CHARS);
        assert_eq!(chain.check_syntax(), Ok(()));
        assert_eq!(chain.evaluate(outputs), Ok(true));
        let negations = when(&format!("{x} == 1 && {}true", "!!".repeat((MAX_CONDITION_CHARS - 40) / 2)));
        assert_eq!(negations.evaluate(outputs), Ok(true));
        let message = when(&format!("{x} == 1{}", " ".repeat(MAX_CONDITION_CHARS))).check_syntax().expect_err("long");
        assert!(message.contains("characters long; a condition may have at most 1000"), "{message}");
        assert!(message.len() < 200, "the condition is shown in part: {message}");

        // Brackets in string literals do not count.
        let quoted = format!(r#"{x} == 1 || '{}' == "{}" || r'\(' == '''(('''"#, "(".repeat(40), "[".repeat(40));
        assert_eq!(when(&quoted).check_syntax(), Ok(()));
    }
}
