//! A log chunk an agent sends is checked in place (`LogChunkView`) and stored as sent; what is
//! stored must read back as a `LogChunk`, and what a `LogChunk` would refuse must be refused.

use xene_model::{CheckedLines, LogChunk, LogChunkView, LogLine};

fn chunk(lines: usize) -> LogChunk {
    LogChunk {
        run: "wf.p.20261128000000abcd".into(),
        task: "build".into(),
        step: "compile".into(),
        execution: "x1".into(),
        lines: (0..lines)
            .map(|i| LogLine {
                seq: i as u64,
                ts_ms: 1_700_000_000_000 + i as u64,
                stream: "stdout".into(),
                text: format!("line {i} with \"quotes\", a tab\\t and ünïcode"),
            })
            .collect(),
    }
}

#[test]
fn a_view_reads_what_a_chunk_writes_and_borrows_its_names() {
    for lines in [0, 1, 1000] {
        let json = serde_json::to_string(&chunk(lines)).expect("serialize");
        let view: LogChunkView = serde_json::from_str(&json).expect("view");
        assert_eq!(
            (&*view.run, &*view.task, &*view.step, &*view.execution),
            ("wf.p.20261128000000abcd", "build", "compile", "x1")
        );
        assert!(matches!(view.run, std::borrow::Cow::Borrowed(_)), "names are borrowed, not copied");
        assert_eq!(view.lines, CheckedLines(lines));
        // The bytes stored as they came read back as the chunk.
        let back: LogChunk = serde_json::from_str(&json).expect("stored bytes read back");
        assert_eq!(back, chunk(lines));
    }
    // No execution (chunks of agents from before executions existed).
    let view: LogChunkView =
        serde_json::from_str(r#"{"run":"r","task":"t","step":"s","lines":[]}"#).expect("no execution");
    assert_eq!(view.execution, "");
}

#[test]
fn a_view_refuses_what_a_chunk_refuses() {
    let cases = [
        ("not json", "not json"),
        ("lines missing", r#"{"run":"r","task":"t","step":"s"}"#),
        ("lines not a list", r#"{"run":"r","task":"t","step":"s","lines":{}}"#),
        (
            "seq a string",
            r#"{"run":"r","task":"t","step":"s","lines":[{"seq":"1","ts_ms":1,"stream":"stdout","text":"a"}]}"#,
        ),
        ("text missing", r#"{"run":"r","task":"t","step":"s","lines":[{"seq":1,"ts_ms":1,"stream":"stdout"}]}"#),
        (
            "negative time",
            r#"{"run":"r","task":"t","step":"s","lines":[{"seq":1,"ts_ms":-1,"stream":"stdout","text":"a"}]}"#,
        ),
        (
            "a line not an object",
            r#"{"run":"r","task":"t","step":"s","lines":[{"seq":1,"ts_ms":1,"stream":"stdout","text":"a"}, 7]}"#,
        ),
        ("trailing bytes", r#"{"run":"r","task":"t","step":"s","lines":[]} x"#),
    ];
    for (what, json) in cases {
        assert!(serde_json::from_str::<LogChunk>(json).is_err(), "{what}: a LogChunk refuses it");
        assert!(serde_json::from_str::<LogChunkView>(json).is_err(), "{what}: the view must refuse it too");
    }
}
