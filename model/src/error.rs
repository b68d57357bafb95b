//! The problems [`crate::parse_manifest`] and [`crate::validate`] report:
//! each one a path, a kind and a message that says what to do.

use std::fmt;

use crate::FieldPath;

/// What sort of problem a [`ValidationError`] is, for callers that branch on
/// it; the message is what people read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ProblemKind {
    /// The text is not well-formed YAML or JSON.
    Syntax,
    /// A field the manifest format does not have.
    UnknownField,
    /// A required field is absent.
    MissingField,
    /// A mapping holds the same key twice.
    DuplicateKey,
    /// A value of the wrong type, such as a list where a string belongs.
    InvalidType,
    /// A value of the right type that is not allowed.
    InvalidValue,
    /// A name that breaks the naming rules of [`crate::names`].
    InvalidName,
    /// A workflow without pipelines, a pipeline without tasks, a task without steps.
    Empty,
    /// Over one of the [`crate::limits`].
    TooLarge,
    /// `apiVersion` or `kind` is not one this crate reads, or a feature not built yet.
    Unsupported,
    /// A dependency on a task the pipeline does not have.
    UnknownDependency,
    /// Tasks that depend on each other in a circle.
    Cycle,
    /// A pipeline refers to a trigger the workflow does not declare.
    UnknownTrigger,
    /// A cron expression that does not parse.
    InvalidCron,
    /// A time zone that is not an IANA name.
    InvalidTimezone,
    /// A duration that does not parse.
    InvalidDuration,
    /// Two steps of a task with the same name.
    DuplicateStep,
}

/// One problem in a manifest: where it is and what is wrong, printed as
/// `path: message`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ValidationError {
    /// Where the problem is.
    pub path: FieldPath,
    /// What sort of problem it is.
    pub kind: ProblemKind,
    /// What is wrong, with a hint ("did you mean ...?") where there is one.
    pub message: String,
}

impl ValidationError {
    /// A problem at `path`.
    pub fn new(path: FieldPath, kind: ProblemKind, message: impl Into<String>) -> Self {
        Self { path, kind, message: message.into() }
    }
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_root() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Every problem found in one manifest, one per line when printed.
///
/// It is never empty when returned as an error.
#[derive(Clone, Debug, Default, PartialEq, Eq, thiserror::Error)]
pub struct ValidationErrors {
    errors: Vec<ValidationError>,
}

impl ValidationErrors {
    /// The list of problems, in order.
    pub fn new(errors: Vec<ValidationError>) -> Self {
        Self { errors }
    }

    /// The problems.
    pub fn errors(&self) -> &[ValidationError] {
        &self.errors
    }

    /// How many problems there are.
    pub fn len(&self) -> usize {
        self.errors.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.errors.is_empty()
    }

    /// The problems, by value.
    pub fn into_vec(self) -> Vec<ValidationError> {
        self.errors
    }

    /// Each problem as one `path: message` line.
    pub fn lines(&self) -> Vec<String> {
        self.errors.iter().map(ToString::to_string).collect()
    }
}

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.errors.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl<'a> IntoIterator for &'a ValidationErrors {
    type Item = &'a ValidationError;
    type IntoIter = std::slice::Iter<'a, ValidationError>;

    fn into_iter(self) -> Self::IntoIter {
        self.errors.iter()
    }
}
