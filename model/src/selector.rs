//! [`LabelSelector`]: Kubernetes-style label selectors (`team=infra,tier!=db,canary,!legacy`).

use std::collections::BTreeMap;

/// One requirement of a selector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    Exists(String),
    NotExists(String),
}

/// A parsed label selector; every requirement must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabelSelector {
    pub requirements: Vec<Requirement>,
}

/// A selector that cannot be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("label selector {selector:?}: {problem}; write requirements like team=infra,tier!=db,canary,!legacy")]
pub struct SelectorError {
    pub selector: String,
    pub problem: String,
}

impl LabelSelector {
    /// Parses `text`; an empty text selects everything.
    pub fn parse(text: &str) -> Result<Self, SelectorError> {
        let fail = |problem: String| SelectorError { selector: text.to_string(), problem };
        let mut requirements = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let requirement = if let Some((key, value)) = part.split_once("!=") {
                Requirement::NotEquals(key.trim().into(), value.trim().into())
            } else if let Some((key, value)) = part.split_once("==").or_else(|| part.split_once('=')) {
                Requirement::Equals(key.trim().into(), value.trim().into())
            } else if let Some(key) = part.strip_prefix('!') {
                Requirement::NotExists(key.trim().into())
            } else {
                Requirement::Exists(part.into())
            };
            let key = match &requirement {
                Requirement::Equals(k, _)
                | Requirement::NotEquals(k, _)
                | Requirement::Exists(k)
                | Requirement::NotExists(k) => k,
            };
            if key.is_empty() || key.contains(|c: char| c.is_whitespace() || c == '=' || c == '!') {
                return Err(fail(format!("{part:?} has no valid label key")));
            }
            requirements.push(requirement);
        }
        Ok(LabelSelector { requirements })
    }

    /// Whether `labels` satisfy every requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|r| match r {
            Requirement::Equals(k, v) => labels.get(k) == Some(v),
            Requirement::NotEquals(k, v) => labels.get(k) != Some(v),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::NotExists(k) => !labels.contains_key(k),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_parse_and_match() {
        let labels: BTreeMap<String, String> =
            [("team".to_string(), "infra".to_string()), ("canary".to_string(), String::new())].into();
        let cases = [
            ("", true),
            ("team=infra", true),
            ("team==infra", true),
            ("team=web", false),
            ("team!=web", true),
            ("team!=infra", false),
            ("canary", true),
            ("!canary", false),
            ("!legacy", true),
            ("team=infra,!legacy,canary", true),
            ("team=infra,legacy", false),
        ];
        for (selector, expected) in cases {
            assert_eq!(LabelSelector::parse(selector).expect(selector).matches(&labels), expected, "{selector}");
        }
        for bad in ["=x", "!", "a b=c", "!=x"] {
            let error = LabelSelector::parse(bad).expect_err(bad);
            assert!(error.to_string().contains("team=infra"), "{error}");
        }
    }
}
