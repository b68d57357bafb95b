//! The rules for names, label keys and values, and environment variable
//! names, with messages that say what is allowed.
//!
//! Workflow, trigger, pipeline, task, step and secret names are DNS labels:
//! 1 to [`MAX_NAME_LEN`] lowercase letters, digits or `-`, starting with a
//! letter and ending with a letter or digit. They appear in URLs, container
//! names and keys of the store, where anything else would need escaping.
//!
//! Label keys and values follow Kubernetes, whose users will expect them.

use crate::limits::MAX_NAME_LEN;

/// The rule for names, as printed in messages.
pub const NAME_RULE: &str = "a name is 1 to 63 lowercase letters, digits or \"-\", \
     starting with a letter and ending with a letter or digit";

/// Why a name breaks the rule, or `None` if it is well formed.
pub fn name_problem(name: &str) -> Option<String> {
    let first = name.chars().next()?;
    let problem = if name.chars().count() > MAX_NAME_LEN {
        format!("it is {} characters long", name.chars().count())
    } else if let Some(bad) = name.chars().find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-')) {
        if bad.is_ascii_uppercase() {
            format!("uppercase \"{bad}\" is not allowed")
        } else {
            format!("\"{}\" is not allowed", bad.escape_debug())
        }
    } else if !first.is_ascii_lowercase() {
        format!("it starts with \"{}\"", first.escape_debug())
    } else if name.ends_with('-') {
        "it ends with \"-\"".to_string()
    } else {
        return None;
    };
    Some(problem)
}

/// Whether `name` follows the naming rule.
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty() && name_problem(name).is_none()
}

/// The message for a bad name of the given kind (`"task"`, `"pipeline"`...):
/// what is wrong, the rule, and a corrected name when one can be made.
pub fn name_message(kind: &str, name: &str) -> Option<String> {
    let reason = if name.is_empty() { "it is empty".to_string() } else { name_problem(name)? };
    let mut message = format!("invalid {kind} name {name:?} ({reason}): {NAME_RULE}");
    if let Some(fixed) = corrected_name(name) {
        message.push_str(&format!("; try {fixed:?}"));
    }
    Some(message)
}

/// A well-formed name close to `name`: lowercased, with other characters
/// turned into `-`, trimmed to the rule.
fn corrected_name(name: &str) -> Option<String> {
    let mut fixed = String::new();
    for c in name.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            fixed.push(c);
        } else if !fixed.is_empty() && !fixed.ends_with('-') {
            fixed.push('-');
        }
    }
    let start = fixed.find(|c: char| c.is_ascii_lowercase())?;
    let mut fixed: String = fixed[start..].chars().take(MAX_NAME_LEN).collect();
    while fixed.ends_with('-') {
        fixed.pop();
    }
    (is_valid_name(&fixed) && fixed != name).then_some(fixed)
}

/// Why a label key breaks Kubernetes' rule, or `None`.
///
/// A key is an optional DNS-subdomain prefix and `/`, then a name of 1 to 63
/// letters, digits, `-`, `_` or `.` that starts and ends with a letter or digit.
pub fn label_key_problem(key: &str) -> Option<String> {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if let Some(prefix) = prefix {
        let ok = !prefix.is_empty()
            && prefix.len() <= 253
            && prefix.split('.').all(|part| {
                !part.is_empty()
                    && part.len() <= 63
                    && part.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                    && !part.starts_with('-')
                    && !part.ends_with('-')
            });
        if !ok {
            return Some(format!(
                "invalid label key {key:?}: the prefix before \"/\" must be a lowercase DNS name such as \"example.com\""
            ));
        }
    }
    if name.is_empty() || label_value_problem(name).is_some() {
        return Some(format!("invalid label key {key:?}: {LABEL_RULE}, optionally after a DNS prefix and \"/\""));
    }
    None
}

/// The rule for label values and the name part of label keys.
const LABEL_RULE: &str = "use up to 63 letters, digits, \"-\", \"_\" or \".\", \
     starting and ending with a letter or digit";

/// Why a label value breaks Kubernetes' rule, or `None`. Empty values are
/// allowed.
pub fn label_value_problem(value: &str) -> Option<String> {
    let ok = value.is_empty()
        || (value.len() <= 63
            && value.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            && value.starts_with(|c: char| c.is_ascii_alphanumeric())
            && value.ends_with(|c: char| c.is_ascii_alphanumeric()));
    (!ok).then(|| format!("invalid label value {value:?}: {LABEL_RULE}"))
}

/// The prefix of environment variables Xene sets itself (DESIGN §9.5).
pub const RESERVED_ENV_PREFIX: &str = "XENE_";

/// Why an environment variable name is not allowed, or `None`.
///
/// Names hold ASCII letters, digits and `_` and do not start with a digit;
/// the `XENE_` prefix is reserved.
pub fn env_name_problem(name: &str) -> Option<String> {
    let well_formed = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !well_formed {
        Some(format!(
            "invalid environment variable name {name:?}: use letters, digits and \"_\", not starting with a digit"
        ))
    } else if name.starts_with(RESERVED_ENV_PREFIX) {
        Some(format!("{name:?} uses the prefix {RESERVED_ENV_PREFIX:?}, which is reserved for the variables Xene sets"))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for good in ["a", "build", "ping-ci", "a1", "x-2-y"] {
            assert!(is_valid_name(good), "{good}");
        }
        for bad in ["", "Build", "1a", "a-", "a_b", "a.b", &"a".repeat(64)] {
            assert!(!is_valid_name(bad), "{bad}");
        }
        assert_eq!(
            name_message("task", "Build_1").as_deref(),
            Some(
                "invalid task name \"Build_1\" (uppercase \"B\" is not allowed): a name is 1 to 63 \
                 lowercase letters, digits or \"-\", starting with a letter and ending with a letter \
                 or digit; try \"build-1\""
            )
        );
        assert_eq!(name_message("task", "ok"), None);
    }

    #[test]
    fn labels_and_env() {
        assert_eq!(label_key_problem("app.kubernetes.io/name"), None);
        assert_eq!(label_key_problem("team"), None);
        assert!(label_key_problem("bad key").is_some());
        assert!(label_key_problem("/x").is_some());
        assert_eq!(label_value_problem(""), None);
        assert_eq!(label_value_problem("linux"), None);
        assert!(label_value_problem("-x").is_some());
        assert_eq!(env_name_problem("CGO_ENABLED"), None);
        assert!(env_name_problem("1X").is_some());
        assert!(env_name_problem("XENE_RUN_ID").is_some());
    }
}
