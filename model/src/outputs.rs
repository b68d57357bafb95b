//! Task outputs (DESIGN §10): what a task's steps write to the file named by `$XENE_OUTPUT`,
//! one `KEY=VALUE` per line, and the variables the tasks after it read them as,
//! `XENE_INPUT_<TASK>_<KEY>`.

use std::collections::BTreeMap;

/// The most bytes of outputs one task attempt may write (GitHub Actions allows 1 MB per job;
/// outputs travel in the run's status, which every status update rewrites).
pub const MAX_OUTPUT_BYTES: usize = 64 * 1024;

/// The most bytes of outputs (keys and values) all the tasks of one run may hold together:
/// they travel in the run's status, one value in the store (at most 1 MiB), which every
/// status update rewrites. Values hold no control characters, so JSON at most doubles them.
pub const MAX_RUN_OUTPUT_BYTES: usize = 256 * 1024;

/// The environment variable that names the outputs file of a step.
pub const OUTPUT_VARIABLE: &str = "XENE_OUTPUT";

/// Why a task's outputs file cannot be read, phrased for the step's log.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OutputError {
    #[error("$XENE_OUTPUT holds more than {MAX_OUTPUT_BYTES} bytes, the most a task may write: pass large results as files in the workspace")]
    TooLarge(usize),
    #[error(
        "the run's outputs would reach {0} bytes with this task's; the most a run may hold is {MAX_RUN_OUTPUT_BYTES}: pass large results as files in the workspace"
    )]
    RunTooLarge(usize),
    #[error(
        "$XENE_OUTPUT line {line}: {what}; write one KEY=VALUE per line, e.g. echo \"coverage=87\" >> \"$XENE_OUTPUT\""
    )]
    Line { line: usize, what: String },
}

/// Reads an outputs file: `KEY=VALUE` lines (a key of letters, digits and `_`, not starting
/// with a digit; the value is the rest of the line, kept as written), blank lines skipped; a
/// key written again takes its last value, as `>>` appends mean.
pub fn parse_outputs(text: &[u8]) -> Result<BTreeMap<String, String>, OutputError> {
    if text.len() > MAX_OUTPUT_BYTES {
        return Err(OutputError::TooLarge(text.len()));
    }
    let text = std::str::from_utf8(text)
        .map_err(|e| OutputError::Line { line: line_of(text, e.valid_up_to()), what: "it is not UTF-8".into() })?;
    let mut outputs = BTreeMap::new();
    let mut variables: BTreeMap<String, String> = BTreeMap::new();
    for (index, line) in text.lines().enumerate() {
        let line_number = index + 1;
        if line.trim().is_empty() {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            return Err(OutputError::Line { line: line_number, what: format!("{line:?} has no '='") });
        };
        let well_formed = key.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !well_formed {
            return Err(OutputError::Line {
                line: line_number,
                what: format!("the key {key:?} is not letters, digits and '_' (not starting with a digit)"),
            });
        }
        let variable = key.to_ascii_uppercase();
        if let Some(other) = variables.get(&variable).filter(|other| *other != key) {
            return Err(OutputError::Line {
                line: line_number,
                what: format!(
                    "the keys {other:?} and {key:?} differ only in case; the tasks after it could not tell them apart"
                ),
            });
        }
        if value.chars().any(|c| c.is_control() && c != '\t') {
            return Err(OutputError::Line {
                line: line_number,
                what: format!("the value of {key:?} holds a control character (a NUL, an escape, a carriage return)"),
            });
        }
        variables.insert(variable, key.to_string());
        outputs.insert(key.to_string(), value.to_string());
    }
    Ok(outputs)
}

fn line_of(text: &[u8], offset: usize) -> usize {
    text[..offset].iter().filter(|&&b| b == b'\n').count() + 1
}

/// The bytes `outputs` count for against [`MAX_RUN_OUTPUT_BYTES`].
pub fn outputs_bytes(outputs: &BTreeMap<String, String>) -> usize {
    outputs.iter().map(|(key, value)| key.len() + value.len()).sum()
}

/// The variable a dependent task reads output `key` of task `task` as:
/// `XENE_INPUT_<TASK>_<KEY>`, upper case, `-` in task names as `_`.
pub fn input_variable(task: &str, key: &str) -> String {
    format!("XENE_INPUT_{}_{}", task.to_ascii_uppercase().replace('-', "_"), key.to_ascii_uppercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_are_key_value_lines_and_the_last_value_wins() {
        let text = b"coverage=87\n\nreport=build/out.html\ncoverage=91\nempty=\nwith_equals=a=b\n";
        let outputs = parse_outputs(text).expect("well formed");
        let want: BTreeMap<String, String> =
            [("coverage", "91"), ("report", "build/out.html"), ("empty", ""), ("with_equals", "a=b")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
        assert_eq!(outputs, want);
        assert_eq!(parse_outputs(b"").expect("nothing written"), BTreeMap::new());
        assert_eq!(parse_outputs(b"tabbed=a\tb\n").expect("a tab is text")["tabbed"], "a\tb");
        assert_eq!(outputs_bytes(&want), "coverage91reportbuild/out.htmlemptywith_equalsa=b".len());
    }

    #[test]
    fn a_bad_line_is_refused_saying_which_and_how_to_write_it() {
        for (text, want) in [
            (&b"a=1\nno equals\n"[..], "line 2: \"no equals\" has no '='"),
            (b"1x=2\n", "line 1: the key \"1x\" is not letters"),
            (b"a-b=2\n", "the key \"a-b\""),
            (b"Key=1\nKEY=2\n", "line 2: the keys \"Key\" and \"KEY\" differ only in case"),
            (b"a=1\nb=\xff\n", "line 2: it is not UTF-8"),
            (b"a=1\0\n", "line 1: the value of \"a\" holds a control character"),
            (b"a=\x1b[31mred\n", "line 1: the value of \"a\" holds a control character"),
        ] {
            let message = parse_outputs(text).expect_err(want).to_string();
            assert!(message.contains(want), "want {want:?} in {message}");
            assert!(message.contains("KEY=VALUE"), "{message}");
        }
        let large = vec![b'a'; MAX_OUTPUT_BYTES + 1];
        assert_eq!(parse_outputs(&large), Err(OutputError::TooLarge(MAX_OUTPUT_BYTES + 1)));
    }

    #[test]
    fn inputs_are_named_after_task_and_key_in_upper_case() {
        assert_eq!(input_variable("unit-test", "coverage"), "XENE_INPUT_UNIT_TEST_COVERAGE");
        assert_eq!(input_variable("build", "Image_Tag"), "XENE_INPUT_BUILD_IMAGE_TAG");
    }
}
