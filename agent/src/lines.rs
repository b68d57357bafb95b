//! Splitting a step's output bytes into lines, for both executors: on `\n`, without a
//! trailing `\r`, holding a partial line until it is complete or [`MAX_LINE`] long. Complete
//! lines are handed out borrowed from the bytes read, so a step printing a million lines costs
//! a scan, not a million copies (PERF W9); the log shipper copies only what it keeps.

/// Where an executor sends a step's output, line by line.
pub trait StepOutput {
    /// One line of `stream` (`stdout`, `stderr`, or `xene` for the executor's own messages),
    /// read at `ts_ms` (milliseconds since the Unix epoch).
    fn line(&mut self, stream: &'static str, text: &str, ts_ms: u64);

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
}

impl LineBuffer {
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

    /// Emits pieces of at most [`MAX_LINE`] while more than that is held.
    fn cut_pieces(&mut self, emit: &mut impl FnMut(&str)) {
        while self.partial.len() > MAX_LINE {
            // Cut before a UTF-8 continuation byte so that no character is split.
            let mut cut = MAX_LINE;
            while cut > MAX_LINE - 4 && self.partial.get(cut).is_some_and(|b| b & 0xC0 == 0x80) {
                cut -= 1;
            }
            emit_text(&self.partial[..cut], emit);
            self.partial.drain(..cut);
        }
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
}
