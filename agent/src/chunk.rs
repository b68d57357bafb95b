//! A chunk of log lines written as JSON while its lines come (PERF W9): the same bytes as
//! `serde_json` makes of a [`xene_model::LogChunk`], without a `LogLine` and its two
//! strings for every line, and with lines that need no escaping (most output) copied whole.

/// The JSON of a `LogChunk` being filled.
pub struct ChunkJson {
    /// `{"run":…,"lines":[`: what comes before the first line.
    head: String,
    json: String,
    lines: usize,
}

impl ChunkJson {
    /// An empty chunk of these lines' step.
    pub fn new(run: &str, task: &str, step: &str, execution: &str) -> Self {
        let mut head = String::from("{");
        push_field(&mut head, "run", run);
        push_field(&mut head, "task", task);
        push_field(&mut head, "step", step);
        // `LogChunk` leaves out an empty execution.
        if !execution.is_empty() {
            push_field(&mut head, "execution", execution);
        }
        head.push_str("\"lines\":[");
        ChunkJson { json: head.clone(), head, lines: 0 }
    }

    /// Lines in the chunk.
    pub fn lines(&self) -> usize {
        self.lines
    }

    /// Bytes of its JSON so far.
    pub fn json_bytes(&self) -> usize {
        self.json.len()
    }

    pub fn push(&mut self, seq: u64, ts_ms: u64, stream: &str, text: &str) {
        if self.lines > 0 {
            self.json.push(',');
        }
        // `LogLine`'s fields, in its order.
        let mut number = itoa::Buffer::new();
        self.json.push_str("{\"seq\":");
        self.json.push_str(number.format(seq));
        self.json.push_str(",\"ts_ms\":");
        self.json.push_str(number.format(ts_ms));
        self.json.push_str(",\"stream\":");
        push_str_json(&mut self.json, stream);
        self.json.push_str(",\"text\":");
        push_str_json(&mut self.json, text);
        self.json.push('}');
        self.lines += 1;
    }

    /// The chunk's JSON, leaving the chunk empty.
    pub fn take(&mut self) -> String {
        self.json.push_str("]}");
        self.lines = 0;
        std::mem::replace(&mut self.json, self.head.clone())
    }
}

/// Whether JSON needs `text` escaped: it holds a `"`, a `\` or a control character below
/// U+0020 (what `serde_json` escapes; everything else, non-ASCII included, goes as it is).
/// Written to be checked 16 bytes at a time.
fn needs_escaping(text: &str) -> bool {
    let special = |b: &u8| (*b < 0x20) | (*b == b'"') | (*b == b'\\');
    let mut blocks = text.as_bytes().chunks_exact(16);
    let found = blocks.by_ref().any(|block| block.iter().fold(false, |any, b| any | special(b)));
    found || blocks.remainder().iter().any(special)
}

/// `"name":value,`.
fn push_field(out: &mut String, name: &str, value: &str) {
    out.push('"');
    out.push_str(name);
    out.push_str("\":");
    push_str_json(out, value);
    out.push(',');
}

/// `value` as a JSON string: copied as it is when nothing in it needs escaping.
fn push_str_json(out: &mut String, value: &str) {
    if needs_escaping(value) {
        out.push_str(&serde_json::to_string(value).unwrap_or_default());
    } else {
        out.push('"');
        out.push_str(value);
        out.push('"');
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use xene_model::{LogChunk, LogLine};

    fn texts() -> Vec<String> {
        let mut texts: Vec<String> = [
            "",
            "plain 100-byte line 0000000000000000000000000000000000000000000000000000000000000000000000000000",
            "a \"quoted\" word",
            "back\\slash",
            "tab\there",
            "bell\u{7} and escape \u{1b}[31mred\u{1b}[0m",
            "naïve — ünïcödé ✓ 🚀",
            "del \u{7f} stays",
            "exactly sixteen!",
            "fifteen chars..",
        ]
        .iter()
        .map(|t| t.to_string())
        .collect();
        // A special byte at every position of a block and of the remainder.
        for at in 0..40 {
            let mut text = "x".repeat(40);
            text.replace_range(at..=at, "\"");
            texts.push(text);
        }
        texts
    }

    #[test]
    fn chunks_are_the_bytes_serde_makes_of_a_log_chunk() {
        for execution in ["", "e1"] {
            let (run, task, step) = ("wf/pipe/r-1", "build \"fast\"", "step\\1");
            let mut json = ChunkJson::new(run, task, step, execution);
            let mut lines = Vec::new();
            for (i, text) in texts().into_iter().enumerate() {
                let stream = if i % 3 == 0 { "stderr" } else { "stdout" };
                json.push(i as u64 + 7, 1_700_000_000_000 + i as u64, stream, &text);
                lines.push(LogLine {
                    seq: i as u64 + 7,
                    ts_ms: 1_700_000_000_000 + i as u64,
                    stream: stream.into(),
                    text,
                });
            }
            assert_eq!(json.lines(), lines.len());
            let chunk =
                LogChunk { run: run.into(), task: task.into(), step: step.into(), execution: execution.into(), lines };
            let expected = serde_json::to_string(&chunk).expect("chunk JSON");
            assert_eq!(json.json_bytes(), expected.len() - "]}".len(), "all but the closing brackets");
            assert_eq!(json.take(), expected);
            assert_eq!((json.lines(), json.json_bytes()), (0, json.head.len()), "taking empties the chunk");
            json.push(1, 2, "xene", "next");
            let next: LogChunk = serde_json::from_str(&json.take()).expect("the next chunk parses");
            assert_eq!(next.lines, vec![LogLine { seq: 1, ts_ms: 2, stream: "xene".into(), text: "next".into() }]);
        }
    }

    #[test]
    fn an_empty_chunk_is_a_chunk_without_lines() {
        let mut json = ChunkJson::new("r", "t", "s", "e");
        let chunk: LogChunk = serde_json::from_str(&json.take()).expect("empty chunk");
        assert!(chunk.lines.is_empty());
    }
}
