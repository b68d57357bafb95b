//! Splitting a step's output bytes into lines, for both executors: on `\n`, without a
//! trailing `\r`, holding a partial line until it is complete or [`MAX_LINE`] long. Complete
//! lines are handed out borrowed from the bytes read, so a step printing a million lines costs
//! a scan, not a million copies (PERF W9); the log shipper copies only what it keeps.

/// Where an executor sends a step's output, line by line.
pub trait StepOutput {
    /// One line of `stream` (`stdout`, `stderr`, or `xene` for the executor's own messages),
    /// read at `ts_ms` (milliseconds since the Unix epoch).
    fn line(&mut self, stream: &'static str, text: &str, ts_ms: u64);

    /// A run of whole lines of `stream` read at `ts_ms`, as [`LineBuffer::push_to`] hands them
    /// over: each line ends with `\n`, none is longer than [`MAX_LINE`] nor holds a `\r`. A
    /// sink that keeps such runs whole saves work per line (PERF W9); by default each line
    /// goes to [`Self::line`].
    fn lines(&mut self, stream: &'static str, run: &str, ts_ms: u64) {
        for text in run.split_terminator('\n') {
            self.line(stream, text, ts_ms);
        }
    }

    /// A message of the executor's own, now.
    fn note(&mut self, text: &str) {
        self.line("xene", text, now_ms());
    }

    /// When lines held back to be sent together must leave even if no more come; `None` when
    /// nothing is held. Executors wait for it beside the step's output and call [`Self::flush`].
    fn due(&self) -> Option<tokio::time::Instant> {
        None
    }

    /// Sends what is held.
    fn flush(&mut self) {}

    /// Texts that must not be split between two pieces of a long line (secret values, which
    /// the sink masks piece by piece): see [`LineBuffer::for_sink`].
    fn unsplittable(&self) -> &[String] {
        &[]
    }
}

/// A closure takes every line and holds nothing back.
impl<F: FnMut(&'static str, &str, u64)> StepOutput for F {
    fn line(&mut self, stream: &'static str, text: &str, ts_ms: u64) {
        self(stream, text, ts_ms)
    }
}

/// Sleeps until `due`, or forever when it is `None`: the branch an executor's loop waits on to
/// flush its [`StepOutput`].
pub async fn until_due(due: Option<tokio::time::Instant>) {
    match due {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// A line longer than this is passed on in pieces, so one endless line cannot exhaust memory
/// and a chunk of lines always fits the store's 1 MiB value limit (even text that JSON escapes
/// to six times its size, beside a nearly full chunk).
pub const MAX_LINE: usize = 64 * 1024;

#[derive(Default)]
pub struct LineBuffer {
    partial: Vec<u8>,
    /// Texts a piece must not end inside ([`StepOutput::unsplittable`]).
    unsplittable: Vec<String>,
}

impl LineBuffer {
    /// A buffer for `sink`'s output: a long line is cut into pieces so that none of the sink's
    /// [`StepOutput::unsplittable`] texts of up to a quarter of a piece is split between pieces
    /// (DESIGN §9.7: a secret split across writes is still masked).
    pub fn for_sink(sink: &impl StepOutput) -> Self {
        LineBuffer { partial: Vec::new(), unsplittable: sink.unsplittable().to_vec() }
    }

    /// Emits every line `bytes` completes, and pieces of [`MAX_LINE`] of a longer one.
    pub fn push(&mut self, mut bytes: &[u8], mut emit: impl FnMut(&str)) {
        while let Some(newline) = memchr::memchr(b'\n', bytes) {
            let (line, rest) = (&bytes[..newline], &bytes[newline + 1..]);
            if self.partial.is_empty() && line.len() <= MAX_LINE {
                emit_text(line, &mut emit);
            } else {
                self.partial.extend_from_slice(line);
                self.cut_pieces(&mut emit);
                emit_text(&self.partial, &mut emit);
                self.partial.clear();
            }
            bytes = rest;
        }
        self.partial.extend_from_slice(bytes);
        self.cut_pieces(&mut emit);
    }

    /// Like [`Self::push`], to `sink` as lines of `stream` read at `ts_ms`: whole lines come
    /// in runs of at most [`MAX_LINE`] bytes ([`StepOutput::lines`]), checked once a run for
    /// UTF-8 and `\r`, instead of one by one. A run that fails a check, a partial line and a
    /// line longer than a run go through [`Self::push`].
    pub fn push_to(&mut self, mut bytes: &[u8], stream: &'static str, ts_ms: u64, sink: &mut impl StepOutput) {
        if !self.partial.is_empty() {
            let Some(newline) = memchr::memchr(b'\n', bytes) else {
                self.push(bytes, |text| sink.line(stream, text, ts_ms));
                return;
            };
            self.push(&bytes[..=newline], |text| sink.line(stream, text, ts_ms));
            bytes = &bytes[newline + 1..];
        }
        while !bytes.is_empty() {
            let window = &bytes[..bytes.len().min(MAX_LINE)];
            let Some(last) = memchr::memrchr(b'\n', window) else {
                // No newline within a run's length: the rest of a line too long for a run,
                // or a partial line.
                self.push(bytes, |text| sink.line(stream, text, ts_ms));
                return;
            };
            let run = &window[..=last];
            match std::str::from_utf8(run) {
                Ok(text) if memchr::memchr(b'\r', run).is_none() => sink.lines(stream, text, ts_ms),
                _ => self.push(run, |text| sink.line(stream, text, ts_ms)),
            }
            bytes = &bytes[last + 1..];
        }
    }

    /// Emits pieces of at most [`MAX_LINE`] while more than that is held.
    fn cut_pieces(&mut self, emit: &mut impl FnMut(&str)) {
        while self.partial.len() > MAX_LINE {
            // Cut before a UTF-8 continuation byte so that no character is split.
            let mut cut = MAX_LINE;
            while cut > MAX_LINE - 4 && self.partial.get(cut).is_some_and(|b| b & 0xC0 == 0x80) {
                cut -= 1;
            }
            cut = self.before_unsplittable(cut);
            emit_text(&self.partial[..cut], emit);
            self.partial.drain(..cut);
        }
    }

    /// `cut`, or earlier so that the piece does not end with the start of one of the
    /// unsplittable texts (which then starts the next piece, and fits in it whole). Texts longer
    /// than a quarter of a piece are not guarded, and the cut moves back at most half a piece,
    /// so output always moves on.
    fn before_unsplittable(&self, cut: usize) -> usize {
        let mut safe = cut;
        // Moving the cut back for one text may put it inside another: again until it stays.
        loop {
            let piece = &self.partial[..safe];
            let mut earlier = safe;
            for text in &self.unsplittable {
                let text = text.as_bytes();
                if text.len() < 2 || text.len() > MAX_LINE / 4 {
                    continue;
                }
                // The longest start of `text` the piece ends with, short of all of it.
                if let Some(k) = (1..text.len()).rev().find(|&k| piece.ends_with(&text[..k])) {
                    earlier = earlier.min(safe - k);
                }
            }
            if earlier == safe || cut - earlier > MAX_LINE / 2 {
                break;
            }
            safe = earlier;
        }
        // Back to a character boundary (the texts start on one; `safe` is at most `cut`).
        while safe > 0 && safe < cut && self.partial[safe] & 0xC0 == 0x80 {
            safe -= 1;
        }
        safe
    }

    /// The last line, if the output did not end with a newline.
    pub fn finish(&mut self, mut emit: impl FnMut(&str)) {
        if !self.partial.is_empty() {
            emit_text(&std::mem::take(&mut self.partial), &mut emit);
        }
    }
}

fn emit_text(mut line: &[u8], emit: &mut impl FnMut(&str)) {
    if let [rest @ .., b'\r'] = line {
        line = rest;
    }
    match std::str::from_utf8(line) {
        Ok(text) => emit(text),
        Err(_) => emit(&String::from_utf8_lossy(line)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(chunks: &[&[u8]]) -> Vec<String> {
        let mut buffer = LineBuffer::default();
        let mut out = Vec::new();
        for chunk in chunks {
            buffer.push(chunk, |l| out.push(l.to_string()));
        }
        buffer.finish(|l| out.push(l.to_string()));
        out
    }

    #[test]
    fn lines_are_split_on_newlines_across_chunks() {
        assert_eq!(lines(&[b"a\nb", b"c\r\n", b"\n", b"tail"]), ["a", "bc", "", "tail"]);
        assert_eq!(lines(&[b"one\n"]), ["one"]);
        assert_eq!(lines(&[b"x\ny\nz\n", b"w"]), ["x", "y", "z", "w"]);
        assert_eq!(lines(&[b"bad \xff byte\n"]), ["bad \u{fffd} byte"]);
        assert!(lines(&[b""]).is_empty());
    }

    /// A secret where a long line is cut goes whole into the next piece, where the shipper
    /// masks it; text that only looks like its start is cut as usual.
    #[test]
    fn a_long_line_is_not_cut_inside_an_unsplittable_text() {
        struct Guarded(Vec<String>);
        impl StepOutput for Guarded {
            fn line(&mut self, _: &'static str, _: &str, _: u64) {}
            fn unsplittable(&self) -> &[String] {
                &self.0
            }
        }
        let secret = "s3cret-välue";
        let buffer = LineBuffer::for_sink(&Guarded(vec![secret.into()]));
        for at in [MAX_LINE - 5, MAX_LINE - 1, MAX_LINE, MAX_LINE - secret.len()] {
            let mut text = vec![b'x'; at];
            text.extend_from_slice(secret.as_bytes());
            text.extend_from_slice(&vec![b'y'; MAX_LINE]);
            text.push(b'\n');
            let mut guarded = LineBuffer { partial: Vec::new(), unsplittable: buffer.unsplittable.clone() };
            let mut out = Vec::new();
            guarded.push(&text, |piece| out.push(piece.to_string()));
            assert!(
                out.iter().any(|piece| piece.contains(secret)),
                "secret at {at} split: {:?}",
                out.iter().map(String::len).collect::<Vec<_>>()
            );
            assert_eq!(out.concat().len(), text.len() - 1, "nothing lost or doubled");
        }
        // Moving the cut back for one secret must not put it inside another.
        let chained = LineBuffer { partial: Vec::new(), unsplittable: vec!["hunter2".into(), "2fa-code".into()] };
        let mut text = vec![b'x'; MAX_LINE - 8];
        text.extend_from_slice(b"hunter2fa-code and more\n");
        let mut guarded = LineBuffer { partial: Vec::new(), unsplittable: chained.unsplittable };
        let mut out = Vec::new();
        guarded.push(&text, |piece| out.push(piece.to_string()));
        assert!(
            out.iter().any(|piece| piece.contains("hunter2")),
            "{:?}",
            out.iter().map(String::len).collect::<Vec<_>>()
        );
        assert_eq!(out.concat().len(), text.len() - 1);
        // Only a start of it at the cut: the piece ends before that start, and the rest follows.
        let mut text = vec![b'x'; MAX_LINE - 3];
        text.extend_from_slice(b"s3cXYZ\n");
        let mut guarded = LineBuffer { partial: Vec::new(), unsplittable: buffer.unsplittable.clone() };
        let mut out = Vec::new();
        guarded.push(&text, |piece| out.push(piece.to_string()));
        assert_eq!(out.iter().map(String::len).collect::<Vec<_>>(), [MAX_LINE - 3, 6]);
    }

    #[test]
    fn endless_lines_come_in_pieces_without_splitting_characters() {
        let mut text = vec![b'x'; MAX_LINE - 1];
        text.extend_from_slice("é".as_bytes());
        let out = lines(&[&text, b"rest\n"]);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].len(), MAX_LINE - 1);
        assert_eq!(out[1], "érest");
    }

    #[test]
    fn a_long_line_read_at_once_comes_in_pieces_and_an_exact_one_whole() {
        let mut text = vec![b'x'; 2 * MAX_LINE + 10];
        text.extend_from_slice(b"\nnext\n");
        let lengths: Vec<usize> = lines(&[&text]).iter().map(String::len).collect();
        assert_eq!(lengths, [MAX_LINE, MAX_LINE, 10, 4]);
        let mut head = vec![b'y'; 100];
        head.extend_from_slice(&vec![b'y'; 2 * MAX_LINE]);
        let lengths: Vec<usize> = lines(&[&head[..100], &head[100..], b"z\n"]).iter().map(String::len).collect();
        assert_eq!(lengths, [MAX_LINE, MAX_LINE, 101], "pieces across reads, the rest with its end");
        let exact = vec![b'w'; MAX_LINE];
        assert_eq!(lines(&[&exact, b"\n", b"after\n"]).len(), 2, "a line of exactly MAX_LINE, then the next");
    }

    /// Records what a sink is handed: runs as runs, lines as lines.
    #[derive(Default)]
    struct Recorder {
        runs: usize,
        lines: Vec<(&'static str, String, u64)>,
    }

    impl StepOutput for Recorder {
        fn line(&mut self, stream: &'static str, text: &str, ts_ms: u64) {
            self.lines.push((stream, text.to_string(), ts_ms));
        }

        fn lines(&mut self, stream: &'static str, run: &str, ts_ms: u64) {
            self.runs += 1;
            assert!(run.ends_with('\n') && !run.contains('\r') && run.len() <= MAX_LINE, "a run as promised");
            for text in run.split_terminator('\n') {
                self.line(stream, text, ts_ms);
            }
        }
    }

    #[test]
    fn runs_of_lines_split_as_line_by_line_does_whatever_the_reads() {
        let mut text = Vec::new();
        for i in 0..100_000 {
            match i {
                100 | 60_000 => text.extend_from_slice(b"crlf line\r\n"),
                30_000 => text.extend_from_slice(b"bad \xff byte\n"),
                50_000 | 80_000 => text.extend_from_slice(&vec![b'L'; MAX_LINE * 2 + 7]),
                50_001 => text.extend_from_slice(&vec![b'x'; MAX_LINE]),
                _ => text.extend_from_slice(format!("line {i}\n").as_bytes()),
            }
        }
        text.extend_from_slice(b"no newline at the end");
        let expected = lines(&[&text]);
        for read in [1, 7, 4096, 65_536, 256 * 1024, text.len()] {
            let mut buffer = LineBuffer::default();
            let mut sink = Recorder::default();
            for block in text.chunks(read) {
                buffer.push_to(block, "stdout", 5, &mut sink);
            }
            buffer.finish(|l| sink.line("stdout", l, 5));
            let got: Vec<String> = sink.lines.iter().map(|(_, t, _)| t.clone()).collect();
            assert_eq!(got.len(), expected.len(), "reads of {read} bytes");
            assert!(got == expected, "reads of {read} bytes: the lines differ");
            assert!(sink.lines.iter().all(|(s, _, ts)| *s == "stdout" && *ts == 5));
            if read >= 4096 {
                let (runs, lines) = (sink.runs, sink.lines.len());
                assert!(runs > 0 && runs < lines / 10, "reads of {read} bytes: {runs} runs for {lines} lines");
            }
        }
    }
}
