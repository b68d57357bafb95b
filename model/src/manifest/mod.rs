//! Reading manifests from YAML or JSON text and writing them back
//! (DESIGN §6.1, §6.2).
//!
//! [`parse_manifest`] reads the text into a plain tree (`node.rs`), decodes
//! it field by field (`decode.rs`), then runs [`crate::validate`], and
//! reports everything it found at once, ordered by path.

mod decode;
mod depth;
mod node;

use crate::limits::MAX_MANIFEST_BYTES;
use crate::{validate, FieldPath, ProblemKind, ValidationError, ValidationErrors, Workflow};

use self::decode::Decoder;
use self::node::Node;

/// Reads a workflow manifest, YAML or JSON, and validates it.
///
/// Text whose first non-blank character is `{` is read as JSON, anything
/// else as YAML. Every problem is reported, each with its path: syntax
/// errors, unknown fields (with "did you mean"), missing fields, wrong types
/// and every rule of [`crate::validate`]. This is what both `xenectl` and the
/// server run, so they print the same messages.
pub fn parse_manifest(text: &str) -> Result<Workflow, ValidationErrors> {
    let root_error =
        |kind, message: String| ValidationErrors::new(vec![ValidationError::new(FieldPath::root(), kind, message)]);
    if text.len() > MAX_MANIFEST_BYTES {
        return Err(root_error(
            ProblemKind::TooLarge,
            format!("the manifest is {} bytes; the maximum is {MAX_MANIFEST_BYTES} (2 MiB)", text.len()),
        ));
    }
    if text.trim().is_empty() {
        return Err(root_error(ProblemKind::Syntax, "the manifest is empty".to_string()));
    }
    let node = read(text).map_err(|message| root_error(ProblemKind::Syntax, message))?;

    let mut decoder = Decoder::default();
    let workflow = decoder.workflow(&node);
    let mut errors = decoder.errors;
    if let Some(workflow) = &workflow {
        let poisoned = &decoder.poisoned;
        errors.extend(
            validate::problems(workflow)
                .into_iter()
                .filter(|error| !poisoned.iter().any(|path| error.path.starts_with(path))),
        );
    }
    match workflow {
        Some(workflow) if errors.is_empty() => Ok(workflow),
        _ => {
            errors.sort_by(|a, b| a.path.cmp(&b.path));
            Err(ValidationErrors::new(errors))
        }
    }
}

/// The text as a tree, or the syntax error as a message.
fn read(text: &str) -> Result<Node, String> {
    if text.trim_start().starts_with('{') {
        // serde_json stops at 128 levels as it reads.
        serde_json::from_str(text).map_err(|error| format!("invalid JSON: {error}"))
    } else {
        if let Some(at) = depth::deeper_than(text, depth::MAX_YAML_NESTING) {
            return Err(format!(
                "invalid YAML: nested more than {} levels deep at line {} column {}; a manifest needs far fewer",
                depth::MAX_YAML_NESTING,
                at.line,
                at.column
            ));
        }
        yaml_serde::from_str(text).map_err(|error| format!("invalid YAML: {error}"))
    }
}

/// Why a workflow could not be written out; it does not happen with values
/// this crate builds, but the encoders' signatures allow it.
#[derive(Debug, thiserror::Error)]
#[error("cannot encode the workflow: {0}")]
pub struct EncodeError(String);

/// The workflow as YAML, fields in declaration order and maps in key order.
pub fn to_yaml(workflow: &Workflow) -> Result<String, EncodeError> {
    yaml_serde::to_string(workflow).map_err(|error| EncodeError(error.to_string()))
}

/// The workflow as pretty-printed JSON.
pub fn to_json(workflow: &Workflow) -> Result<String, EncodeError> {
    serde_json::to_string_pretty(workflow).map_err(|error| EncodeError(error.to_string()))
}
