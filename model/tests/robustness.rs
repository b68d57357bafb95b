//! Bad input never panics the parser (DESIGN §14): a seeded mutation run over
//! the examples, plus hand-picked oddities for the cron, duration and
//! expression parsers. The seed is printed; set `XENE_FUZZ_SEED` to replay a
//! run and `XENE_FUZZ_CASES` to run longer.

use std::path::PathBuf;

use xene_model::{parse_manifest, CronSchedule};

/// A small deterministic generator (SplitMix64), so a failure can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

const PIECES: [&str; 24] = [
    "{", "}", "[", "]", ":", ",", "-", " ", "\n", "\t", "\"", "'", "&a", "*a", "!tag ", "{{", "}}", "ß", "🦀", "0",
    "-1", "1e999", "~", "null",
];

#[test]
fn mutated_manifests_never_panic() {
    let seed = std::env::var("XENE_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x5EED_u64);
    let cases: usize = std::env::var("XENE_FUZZ_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(1500);
    println!("seed {seed}, {cases} cases");
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut texts = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        texts.push(std::fs::read_to_string(entry.unwrap().path()).unwrap());
    }
    texts.sort();
    let mut rng = Rng(seed);
    for case in 0..cases {
        let mut text = texts[rng.below(texts.len())].clone().into_bytes();
        for _ in 0..1 + rng.below(4) {
            let at = rng.below(text.len());
            match rng.below(3) {
                0 => {
                    let end = (at + 1 + rng.below(8)).min(text.len());
                    text.drain(at..end);
                }
                1 => {
                    let piece = PIECES[rng.below(PIECES.len())].as_bytes();
                    text.splice(at..at, piece.iter().copied());
                }
                _ => text[at] = b" :-{}[]x0\n"[rng.below(10)],
            }
        }
        let text = String::from_utf8_lossy(&text);
        let result = std::panic::catch_unwind(|| parse_manifest(&text));
        assert!(result.is_ok(), "case {case} of seed {seed} panicked on:\n{text}");
    }
}

#[test]
fn odd_cron_expressions_never_panic() {
    for expression in [
        "ß * * * *",
        "* * * * ß",
        "🦀 * * * *",
        "L W # ? * *",
        "@reboot",
        "@",
        "*/0 * * * *",
        "0-100/7 * * * *",
        "5-1 * * * *",
        "1#6 * * * *",
        "* * 31 2 *",
        "0 0 30 2 *",
        "60 * * * * *",
        ", * * * *",
        "- * * * *",
        "/ * * * *",
    ] {
        let result = std::panic::catch_unwind(|| {
            if let Ok(schedule) = CronSchedule::new(expression, Some("Europe/Berlin")) {
                let start =
                    chrono::DateTime::parse_from_rfc3339("2024-03-31T00:00:00Z").unwrap().with_timezone(&chrono::Utc);
                schedule.next_after(start);
            }
        });
        assert!(result.is_ok(), "panicked on {expression:?}");
    }
}

#[test]
fn odd_scalars_never_panic() {
    for value in ["", "{{", "}}{{", "{{}}", "{{ tasks.a.outputs. }}", "ß", "1.", ".5", "9".repeat(40).as_str()] {
        let manifest = format!(
            "apiVersion: xene.dev/v1\nkind: Workflow\nmetadata: {{name: demo}}\nspec:\n  pipelines:\n    p:\n      \
             timeout: {value:?}\n      executor: {{type: container, image: x, cpu: {value:?}, memory: {value:?}}}\n      \
             tasks:\n        t: {{when: {value:?}, steps: [{{name: s, run: x, timeout: {value:?}}}]}}\n"
        );
        let result = std::panic::catch_unwind(|| parse_manifest(&manifest));
        assert!(result.is_ok(), "panicked on {value:?}");
    }
}

/// libyaml takes time quadratic in the depth of flow collections inside a block mapping, and
/// the YAML reader loads a whole document before its recursion limit applies: 128,000 `[`
/// took 77 s in a release build, a 2 MiB manifest of them would have held a server's worker
/// for about an hour. Such text is refused at the first collection past 128 levels.
#[test]
fn deeply_nested_yaml_is_refused_where_it_passes_the_limit() {
    let header = "apiVersion: xene.dev/v1\nkind: Workflow\nmetadata: {name: deep}\nspec: ";
    let room = (xene_model::limits::MAX_MANIFEST_BYTES - header.len() - 2) / 2;
    let text = format!("{header}{}1{}\n", "[".repeat(room), "]".repeat(room));
    let message = parse_manifest(&text).expect_err("too deep").to_string();
    assert!(message.contains("nested more than 128 levels deep at line 4 column 134"), "{message}");
    let blocks: String = (0..200).map(|level| format!("{}- \n", "  ".repeat(level))).collect();
    let message = parse_manifest(&format!("{header}\n{blocks}")).expect_err("too deep").to_string();
    assert!(message.contains("nested more than 128 levels deep at line 132"), "{message}");
    // 128 levels (the document's mapping and 127 lists) are read, as the YAML reader reads
    // them, and then found not to be a workflow.
    let message = parse_manifest(&format!("{header}{}1{}\n", "[".repeat(127), "]".repeat(127))).expect_err("a list");
    assert!(message.to_string().contains("spec: expected a mapping, found a list"), "{message}");
}
