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
                refs.push(OutputRef { text: after, task: None });
                break;
            };
            let text = &after[..end + 2];
            let parts: Vec<&str> = text[2..text.len() - 2].trim().split('.').collect();
            let task = match parts.as_slice() {
                ["tasks", task, "outputs", key]
                    if !task.is_empty()
                        && !key.is_empty()
                        && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') =>
                {
                    Some(*task)
                }
                _ => None,
            };
            refs.push(OutputRef { text, task });
            rest = &after[end + 2..];
        }
        refs
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
}
