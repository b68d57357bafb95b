//! The latest lines of a step past its shipped head (DESIGN §9.7: the tail is kept, the middle
//! dropped behind a marker). Lines are copied into generations of contiguous text, and whole
//! generations are dropped from the front once the rest holds enough, so a step printing a
//! million lines writes its text sequentially into a few reused buffers rather than into
//! 100,000 scattered ones (PERF W9).

use std::collections::VecDeque;

/// One kept line: where its text ends in its generation, its stream, when it was read.
struct Entry {
    end: usize,
    stream: &'static str,
    ts_ms: u64,
}

#[derive(Default)]
struct Generation {
    text: String,
    entries: Vec<Entry>,
}

impl Generation {
    fn lines(&self) -> impl Iterator<Item = (&'static str, &str, u64)> {
        let mut start = 0;
        self.entries.iter().map(move |e| {
            let text = &self.text[start..e.end];
            start = e.end;
            (e.stream, text, e.ts_ms)
        })
    }
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
    /// Lines and bytes held in `generations`.
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

    pub fn push(&mut self, stream: &'static str, text: &str, ts_ms: u64) {
        self.seen += 1;
        let full = self
            .generations
            .back()
            .is_none_or(|g| g.entries.len() >= self.generation_lines || g.text.len() >= self.generation_bytes);
        if full {
            let fresh = self.spare.take().unwrap_or_default();
            self.generations.push_back(fresh);
        }
        if let Some(generation) = self.generations.back_mut() {
            generation.text.push_str(text);
            generation.entries.push(Entry { end: generation.text.len(), stream, ts_ms });
        }
        self.lines += 1;
        self.bytes += text.len();
        // The front generation goes once the others alone hold all that will be kept.
        while let Some(front) = self.generations.front() {
            let (rest_lines, rest_bytes) = (self.lines - front.entries.len(), self.bytes - front.text.len());
            if rest_lines < self.keep_lines && rest_bytes < self.keep_bytes {
                break;
            }
            if let Some(mut gone) = self.generations.pop_front() {
                self.lines -= gone.entries.len();
                self.bytes -= gone.text.len();
                gone.text.clear();
                gone.entries.clear();
                self.spare = Some(gone);
            }
        }
    }

    /// How many of the held lines are kept: walking back from the newest, as many as fit.
    fn kept(&self) -> usize {
        let (mut lines, mut bytes) = (0usize, 0usize);
        for generation in self.generations.iter().rev() {
            for (i, entry) in generation.entries.iter().enumerate().rev() {
                let start = if i == 0 { 0 } else { generation.entries[i - 1].end };
                let len = entry.end - start;
                if lines > 0 && (lines + 1 > self.keep_lines || bytes + len > self.keep_bytes) {
                    return lines;
                }
                lines += 1;
                bytes += len;
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
            for (stream, text, ts_ms) in generation.lines() {
                if skip > 0 {
                    skip -= 1;
                } else {
                    line(stream, text, ts_ms);
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
}
