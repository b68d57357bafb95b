//! A line-per-operation text form of key-value histories, for writing test cases by hand and
//! for saving a chaos run's history so a failure can be re-checked offline.
//!
//! ```text
//! # client  call  return  key  operation
//! c1        0     10      x    put a
//! c2        5     15      x    get -> a
//! c3        20    ?       x    cas a b            # indeterminate: no "->"
//! c4        12    30      x    cas nil b -> fail
//! c5        31    40      x    del -> existed     # or "-> absent", or plain "del"
//! c6        41    50      x    get -> nil
//! ```
//!
//! A return time of `?` marks an indeterminate operation, which has no output. Values and
//! keys are single tokens: printable ASCII as is, anything else as `0x` and hex. `nil` is
//! the absent value; `#` starts a comment.

use std::fmt::Write as _;

use thiserror::Error;

use super::history::{ClientId, Completion, KeyedOperation, Operation, Time};
use super::register::{Key, KvOperation, RegisterInput, RegisterOutput, Value};

/// A line of a history text that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("history line {line}: {message}")]
pub struct ParseError {
    /// 1-based.
    pub line: usize,
    pub message: String,
}

/// Parses a history from its text form.
pub fn parse_kv_history(text: &str) -> Result<Vec<KvOperation>, ParseError> {
    let mut history = Vec::new();
    for (number, raw) in text.lines().enumerate() {
        let content = raw.split('#').next().unwrap_or_default();
        let tokens: Vec<&str> = content.split_whitespace().collect();
        if tokens.is_empty() {
            continue;
        }
        let fail = |message: String| ParseError { line: number + 1, message };
        history.push(parse_line(&tokens).map_err(fail)?);
    }
    Ok(history)
}

fn parse_line(tokens: &[&str]) -> Result<KvOperation, String> {
    let (client, call, ret, key, op) = match tokens {
        [client, call, ret, key, op @ ..] if !op.is_empty() => (client, call, ret, key, op),
        _ => return Err(format!("expected `client call return key operation`, found {} fields", tokens.len())),
    };
    let client = ClientId(parse_number(client.strip_prefix('c').unwrap_or(client), "client")?);
    let call = Time(parse_number(call, "call time")?);
    let ret = match *ret {
        "?" => None,
        time => Some(Time(parse_number(time, "return time")?)),
    };
    let key = Key(parse_bytes(key)?);
    let (request, response) = match op.iter().position(|t| *t == "->") {
        Some(arrow) => (&op[..arrow], Some(&op[arrow + 1..])),
        None => (op, None),
    };
    let input = parse_input(request)?;
    let completion = match (ret, response) {
        (None, None) => Completion::Indeterminate,
        (None, Some(_)) => return Err("an indeterminate operation (return `?`) has no `-> output`".into()),
        (Some(at), response) => Completion::Returned { at, output: parse_output(&input, response)? },
    };
    Ok(KeyedOperation { key, operation: Operation { client, input, call, completion } })
}

fn parse_number(token: &str, what: &str) -> Result<u64, String> {
    token.parse().map_err(|_| format!("{what} {token:?} is not a non-negative integer"))
}

fn parse_bytes(token: &str) -> Result<Vec<u8>, String> {
    let Some(hex) = token.strip_prefix("0x") else {
        return Ok(token.as_bytes().to_vec());
    };
    let digits = hex.as_bytes();
    if digits.len() % 2 != 0 {
        return Err(format!("{token:?} has an odd number of hex digits"));
    }
    digits
        .chunks(2)
        .map(|pair| {
            std::str::from_utf8(pair)
                .ok()
                .and_then(|pair| u8::from_str_radix(pair, 16).ok())
                .ok_or_else(|| format!("{token:?} is not valid hex"))
        })
        .collect()
}

fn parse_value(token: &str) -> Result<Value, String> {
    if token == "nil" {
        return Err("`nil` (absent) cannot be written; put a value".into());
    }
    parse_bytes(token).map(Value)
}

fn parse_optional_value(token: &str) -> Result<Option<Value>, String> {
    match token {
        "nil" => Ok(None),
        token => parse_bytes(token).map(|bytes| Some(Value(bytes))),
    }
}

fn parse_input(tokens: &[&str]) -> Result<RegisterInput, String> {
    match tokens {
        ["put", value] => Ok(RegisterInput::Put(parse_value(value)?)),
        ["get"] => Ok(RegisterInput::Get),
        ["cas", expected, new] => {
            Ok(RegisterInput::CompareAndSet { expected: parse_optional_value(expected)?, new: parse_value(new)? })
        }
        ["del"] => Ok(RegisterInput::Delete),
        _ => Err(format!(
            "unknown operation `{}`; expected `put V`, `get`, `cas EXPECTED NEW` or `del`",
            tokens.join(" ")
        )),
    }
}

fn parse_output(input: &RegisterInput, tokens: Option<&[&str]>) -> Result<RegisterOutput, String> {
    match (input, tokens) {
        (RegisterInput::Put(_), None | Some(["ok"])) => Ok(RegisterOutput::Put),
        (RegisterInput::Get, Some([value])) => Ok(RegisterOutput::Get(parse_optional_value(value)?)),
        (RegisterInput::CompareAndSet { .. }, Some(["ok"])) => Ok(RegisterOutput::CompareAndSet(true)),
        (RegisterInput::CompareAndSet { .. }, Some(["fail"])) => Ok(RegisterOutput::CompareAndSet(false)),
        (RegisterInput::Delete, None) => Ok(RegisterOutput::Delete { existed: None }),
        (RegisterInput::Delete, Some(["existed"])) => Ok(RegisterOutput::Delete { existed: Some(true) }),
        (RegisterInput::Delete, Some(["absent"])) => Ok(RegisterOutput::Delete { existed: Some(false) }),
        (input, tokens) => Err(format!(
            "`-> {}` is not an output of {input:?}; expected put [-> ok], get -> V|nil, \
             cas .. -> ok|fail, del [-> existed|absent]",
            tokens.unwrap_or_default().join(" ")
        )),
    }
}

/// Renders bytes as one token that [`parse_kv_history`] reads back.
fn format_bytes(bytes: &[u8]) -> String {
    let plain = std::str::from_utf8(bytes).ok().filter(|text| {
        !text.is_empty()
            && text.chars().all(|c| c.is_ascii_graphic() && c != '#')
            && !matches!(*text, "nil" | "->" | "?")
            && !text.starts_with("0x")
    });
    match plain {
        Some(text) => text.to_string(),
        None => bytes.iter().fold("0x".to_string(), |mut out, b| {
            let _ = write!(out, "{b:02x}");
            out
        }),
    }
}

fn format_optional(value: &Option<Value>) -> String {
    value.as_ref().map_or_else(|| "nil".to_string(), |value| format_bytes(&value.0))
}

/// Renders a history in the text form [`parse_kv_history`] reads.
pub fn format_kv_history(history: &[KvOperation]) -> String {
    let mut out = String::new();
    for KeyedOperation { key, operation } in history {
        let ret = operation.return_time().map_or_else(|| "?".to_string(), |time| time.to_string());
        let input = match &operation.input {
            RegisterInput::Put(value) => format!("put {}", format_bytes(&value.0)),
            RegisterInput::Get => "get".to_string(),
            RegisterInput::CompareAndSet { expected, new } => {
                format!("cas {} {}", format_optional(expected), format_bytes(&new.0))
            }
            RegisterInput::Delete => "del".to_string(),
        };
        let output = match operation.output() {
            None | Some(RegisterOutput::Put) | Some(RegisterOutput::Delete { existed: None }) => String::new(),
            Some(RegisterOutput::Get(value)) => format!(" -> {}", format_optional(value)),
            Some(RegisterOutput::CompareAndSet(ok)) => {
                format!(" -> {}", if *ok { "ok" } else { "fail" })
            }
            Some(RegisterOutput::Delete { existed: Some(existed) }) => {
                format!(" -> {}", if *existed { "existed" } else { "absent" })
            }
        };
        // Writing to a String cannot fail.
        let _ =
            writeln!(out, "{} {} {} {} {input}{output}", operation.client, operation.call, ret, format_bytes(&key.0));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let text = "\
c1 0 10 x put a
c2 5 15 x get -> a
c3 20 ? x cas a b
c4 12 30 0x00ff cas nil 0x6e696c -> fail
c5 31 40 x del -> existed
c6 41 50 x del
c7 41 50 x del -> absent
c8 51 ? x get
c9 52 60 x get -> nil
";
        let history = parse_kv_history(text).expect("test history parses");
        assert_eq!(history.len(), 9);
        assert_eq!(format_kv_history(&history), text);
        assert_eq!(
            history[3].operation.input,
            RegisterInput::CompareAndSet { expected: None, new: Value::from("nil") }
        );
    }

    #[test]
    fn errors_name_the_line_and_the_problem() {
        let cases = [
            ("c1 0 10 x", "found 4 fields"),
            ("\n# comment\nc1 zero 10 x get -> a", "line 3: call time \"zero\""),
            ("c1 0 ? x get -> a", "indeterminate operation"),
            ("c1 0 1 x get", "is not an output of Get"),
            ("c1 0 1 x frob", "unknown operation `frob`"),
            ("c1 0 1 x put nil", "cannot be written"),
            ("c1 0 1 0xabc get -> a", "odd number of hex digits"),
        ];
        for (text, want) in cases {
            let error = parse_kv_history(text).expect_err(text).to_string();
            assert!(error.contains(want), "{text:?}: {error:?} lacks {want:?}");
        }
    }
}
