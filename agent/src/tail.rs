//! The latest lines of a step past its shipped head (DESIGN §9.7: the tail is kept, the middle
//! dropped behind a marker). Lines are copied into generations of contiguous text, and whole
//! generations are dropped from the front once the rest holds enough, so a step printing a
//! million lines writes its text sequentially into a few reused buffers rather than into
//! 100,000 scattered ones (PERF W9). A run of lines read together ([`Tail::push_lines`]) is
//! kept as one entry and split into lines only for the few that are handed out.

use std::collections::VecDeque;

/// One kept line, or a run of `lines` lines joined by `\n`: where its text ends in its
/// generation, its stream, when it was read.
struct Entry {
    end: usize,
    lines: usize,
    stream: &'static str,
    ts_ms: u64,
}

impl Entry {
    /// Bytes of text of its lines (`text`), without the newlines between them.
    fn text_bytes(&self, text: &str) -> usize {
        text.len() - (self.lines - 1)
    }
}

#[derive(Default)]
struct Generation {
    text: String,
    entries: Vec<Entry>,
    /// Lines and bytes of text in `entries`.
    lines: usize,
    bytes: usize,
}

impl Generation {
    /// Its entries with their text, oldest first.
    fn entries(&self) -> impl DoubleEndedIterator<Item = (&Entry, &str)> {
        self.entries.iter().enumerate().map(move |(i, e)| {
            let start = if i == 0 { 0 } else { self.entries[i - 1].end };
            (e, &self.text[start..e.end])
        })
    }
}

/// The lines of an entry's text: a lone line whole (it may hold a newline of its own, as the
/// executor's messages can), a run split on its newlines.
fn split<'t>(entry: &Entry, text: &'t str) -> impl DoubleEndedIterator<Item = &'t str> + use<'t> {
    let (whole, run) = if entry.lines == 1 { (Some(text), None) } else { (None, Some(text.split('\n'))) };
    whole.into_iter().chain(run.into_iter().flatten())
}

/// Keeps the longest run of latest lines that has at most `keep_lines` lines and
/// `keep_bytes` bytes of text (at least the last line).
pub struct Tail {
    keep_lines: usize,
    keep_bytes: usize,
    generation_lines: usize,
    generation_bytes: usize,
    generations: VecDeque<Generation>,
    spare: Option<Generation>,
    /// Lines and bytes of text held in `generations`.
    lines: usize,
    bytes: usize,
    /// Lines pushed in all.
    seen: u64,
}

impl Tail {
    pub fn new(keep_lines: usize, keep_bytes: usize) -> Self {
        let (keep_lines, keep_bytes) = (keep_lines.max(1), keep_bytes.max(1));
        Tail {
            keep_lines,
            keep_bytes,
            generation_lines: (keep_lines / 8).max(1),
            generation_bytes: (keep_bytes / 8).max(1),
            generations: VecDeque::new(),
            spare: None,
            lines: 0,
            bytes: 0,
            seen: 0,
        }
    }

    /// Keeps one line.
    pub fn push(&mut self, stream: &'static str, text: &str, ts_ms: u64) {
        self.add(stream, text, 1, text.len(), ts_ms);
    }

    /// Keeps a run of whole lines, each ending with `\n` (what
    /// [`crate::lines::StepOutput::lines`] is given; a last line without one counts too).
    pub fn push_lines(&mut self, stream: &'static str, run: &str, ts_ms: u64) {
        if run.is_empty() {
            return;
        }
        let run = run.strip_suffix('\n').unwrap_or(run);
        let lines = memchr::memchr_iter(b'\n', run.as_bytes()).count() + 1;
        self.add(stream, run, lines, run.len() - (lines - 1), ts_ms);
    }

    fn add(&mut self, stream: &'static str, text: &str, lines: usize, text_bytes: usize, ts_ms: u64) {
        self.seen += lines as u64;
        let full = self
            .generations
            .back()
            .is_none_or(|g| g.lines >= self.generation_lines || g.text.len() >= self.generation_bytes);
        if full {
            let fresh = self.spare.take().unwrap_or_default();
            self.generations.push_back(fresh);
        }
        if let Some(generation) = self.generations.back_mut() {
            generation.text.push_str(text);
            generation.entries.push(Entry { end: generation.text.len(), lines, stream, ts_ms });
            generation.lines += lines;
            generation.bytes += text_bytes;
        }
        self.lines += lines;
        self.bytes += text_bytes;
        // The front generation goes once the others alone hold all that will be kept.
        while let Some(front) = self.generations.front() {
            let (rest_lines, rest_bytes) = (self.lines - front.lines, self.bytes - front.bytes);
            if rest_lines < self.keep_lines && rest_bytes < self.keep_bytes {
                break;
            }
            if let Some(mut gone) = self.generations.pop_front() {
                self.lines -= gone.lines;
                self.bytes -= gone.bytes;
                gone.text.clear();
                gone.entries.clear();
                (gone.lines, gone.bytes) = (0, 0);
                self.spare = Some(gone);
            }
        }
    }

    /// How many of the held lines are kept: walking back from the newest, as many as fit.
    fn kept(&self) -> usize {
        let (mut lines, mut bytes) = (0usize, 0usize);
        for generation in self.generations.iter().rev() {
            for (entry, text) in generation.entries().rev() {
                let len = entry.text_bytes(text);
                if lines + entry.lines <= self.keep_lines && bytes + len <= self.keep_bytes {
                    lines += entry.lines;
                    bytes += len;
                    continue;
                }
                for line in split(entry, text).rev() {
                    if lines > 0 && (lines + 1 > self.keep_lines || bytes + line.len() > self.keep_bytes) {
                        return lines;
                    }
                    lines += 1;
                    bytes += line.len();
                }
            }
        }
        lines
    }

    /// Of the lines pushed, how many [`Self::drain`] will not hand out, and how many it will.
    pub fn counts(&self) -> (u64, u64) {
        let kept = self.kept() as u64;
        (self.seen - kept, kept)
    }

    /// Hands out the kept lines, oldest first, and empties the tail.
    pub fn drain(&mut self, mut line: impl FnMut(&'static str, &str, u64)) {
        let mut skip = self.lines - self.kept();
        for generation in self.generations.drain(..) {
            for (entry, text) in generation.entries() {
                if skip >= entry.lines {
                    skip -= entry.lines;
                    continue;
                }
                for text in split(entry, text) {
                    if skip > 0 {
                        skip -= 1;
                    } else {
                        line(entry.stream, text, entry.ts_ms);
                    }
                }
            }
        }
        self.lines = 0;
        self.bytes = 0;
        self.seen = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drained(tail: &mut Tail) -> (u64, Vec<String>) {
        let (dropped, kept) = tail.counts();
        let mut lines = Vec::new();
        tail.drain(|_, text, _| lines.push(text.to_string()));
        assert_eq!(lines.len() as u64, kept);
        (dropped, lines)
    }

    #[test]
    fn the_last_lines_are_kept_up_to_the_line_cap() {
        let mut tail = Tail::new(100, 1 << 20);
        for i in 0..1_234 {
            tail.push("stdout", &format!("line {i}"), i);
        }
        let (dropped, lines) = drained(&mut tail);
        assert_eq!(dropped, 1_134);
        let expected: Vec<String> = (1_134..1_234).map(|i| format!("line {i}")).collect();
        assert_eq!(lines, expected);
        assert!(tail.generations.is_empty(), "drained");
    }

    #[test]
    fn the_byte_cap_keeps_fewer_longer_lines_but_always_the_last() {
        let mut tail = Tail::new(1_000, 100);
        for i in 0..50 {
            tail.push("stderr", &format!("{i:09}"), 0); // 9 bytes each
        }
        let (dropped, lines) = drained(&mut tail);
        assert_eq!(lines.len(), 11, "11 × 9 bytes fit in 100");
        assert_eq!(dropped, 39);
        assert_eq!(lines.last().map(String::as_str), Some("000000049"));
        let mut tail = Tail::new(1_000, 100);
        tail.push("stdout", "short", 0);
        tail.push("stdout", &"x".repeat(500), 0);
        let (dropped, lines) = drained(&mut tail);
        assert_eq!((dropped, lines.len()), (1, 1), "a line longer than the cap is still kept alone");
    }

    #[test]
    fn streams_and_timestamps_travel_with_their_lines_and_memory_stays_bounded() {
        let mut tail = Tail::new(1_000, 1 << 20);
        for i in 0..100_000u64 {
            let stream = if i % 3 == 0 { "stderr" } else { "stdout" };
            tail.push(stream, &i.to_string(), i);
            assert!(tail.lines <= 1_000 + 125, "held {} lines", tail.lines);
        }
        let mut seen = Vec::new();
        tail.drain(|stream, text, ts| seen.push((stream, text.to_string(), ts)));
        assert_eq!(seen.len(), 1_000);
        assert!(seen.iter().all(|(stream, text, ts)| {
            text == &ts.to_string() && *stream == if ts % 3 == 0 { "stderr" } else { "stdout" }
        }));
        assert_eq!(seen.first().map(|l| l.2), Some(99_000));
    }
    /// Lines pushed as runs and one by one, mixed: the same lines are kept and dropped as if
    /// all had come one by one, under a line cap and under a byte cap.
    #[test]
    fn runs_are_kept_and_cut_like_single_lines() {
        for (keep_lines, keep_bytes) in [(100, 1 << 20), (1_000, 1_000), (3, 1 << 20), (50, 64)] {
            let (mut runs, mut single) = (Tail::new(keep_lines, keep_bytes), Tail::new(keep_lines, keep_bytes));
            let mut n = 0u64;
            for round in 0..400u64 {
                let count = (round % 13) as usize;
                let mut run = String::new();
                for _ in 0..count {
                    let text = format!("r{round} l{n}");
                    run.push_str(&text);
                    run.push('\n');
                    single.push("stdout", &text, round);
                    n += 1;
                }
                runs.push_lines("stdout", &run, round);
                let text = format!("lone {n}");
                runs.push("stderr", &text, round);
                single.push("stderr", &text, round);
                n += 1;
            }
            assert_eq!(runs.counts(), single.counts(), "caps {keep_lines} lines, {keep_bytes} bytes");
            let (mut got, mut want) = (Vec::new(), Vec::new());
            runs.drain(|stream, text, ts| got.push((stream, text.to_string(), ts)));
            single.drain(|stream, text, ts| want.push((stream, text.to_string(), ts)));
            assert_eq!(got, want, "caps {keep_lines} lines, {keep_bytes} bytes");
            assert!(!got.is_empty());
        }
    }

    #[test]
    fn a_run_bigger_than_the_cap_keeps_its_last_lines_and_memory_stays_bounded() {
        let mut tail = Tail::new(10, 1 << 20);
        let run: String = (0..1_000).map(|i| format!("{i}\n")).collect();
        for _ in 0..100 {
            tail.push_lines("stdout", &run, 1);
            assert!(tail.lines <= 10 + 1_000 + 1_000, "held {} lines", tail.lines);
        }
        let (dropped, lines) = drained(&mut tail);
        assert_eq!(dropped, 99_990);
        let expected: Vec<String> = (990..1_000).map(|i| i.to_string()).collect();
        assert_eq!(lines, expected);
    }

    #[test]
    fn empty_lines_count_and_a_run_without_its_last_newline_loses_nothing() {
        let mut tail = Tail::new(100, 1 << 20);
        tail.push_lines("stdout", "", 0);
        tail.push_lines("stdout", "\n\n", 0);
        tail.push_lines("stdout", "a\nb", 0);
        let (dropped, lines) = drained(&mut tail);
        assert_eq!((dropped, lines), (0, vec![String::new(), String::new(), "a".into(), "b".into()]));
    }
}
