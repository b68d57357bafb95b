//! How deep a YAML text nests, found before it is read.
//!
//! `yaml_serde` loads a whole document's events before it deserializes them, and only then
//! stops at its recursion limit; and libyaml, under it, takes time quadratic in the depth of
//! flow collections nested inside a block mapping (measured, release build: 32,000 `[` in a
//! manifest took 2.3 s, 128,000 took 77 s, so the 2 MiB a manifest may be would hold a server's
//! worker for about an hour). This walks the same parser's events and stops at the first
//! collection deeper than the limit, so such a text is refused in the time it takes to reach
//! that depth. It is the project's only `unsafe` code outside build scripts: `libyaml-rs`
//! (which `yaml_serde` already uses, at the same version) is libyaml translated from C, with
//! C's API.

use std::mem::MaybeUninit;

use libyaml_rs as sys;

/// The deepest nesting `yaml_serde` reads: a document deeper than this would be refused with
/// "recursion limit exceeded" anyway, after it was loaded whole.
pub(super) const MAX_YAML_NESTING: usize = 128;

/// Where a collection starts, counted from 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Position {
    pub line: u64,
    pub column: u64,
}

/// Frees a parser's buffers when dropped.
struct Initialized(*mut sys::yaml_parser_t);

impl Drop for Initialized {
    fn drop(&mut self) {
        // SAFETY: the parser was initialized (`yaml_parser_initialize` succeeded) and is
        // deleted once, here; its box outlives this guard.
        unsafe { sys::yaml_parser_delete(self.0) }
    }
}

/// The start of the first collection of `text` that is nested deeper than `limit`, or `None`
/// when none is (or when the text is not YAML: reading it says what is wrong, and where).
pub(super) fn deeper_than(text: &str, limit: usize) -> Option<Position> {
    // Boxed: the parser keeps a pointer to itself once it has its input, so it must not move.
    let mut parser: Box<MaybeUninit<sys::yaml_parser_t>> = Box::new(MaybeUninit::uninit());
    let raw = parser.as_mut_ptr();
    // SAFETY: `raw` points to memory for one parser, which `yaml_parser_initialize` fills in.
    if unsafe { sys::yaml_parser_initialize(raw) }.fail {
        return None;
    }
    let guard = Initialized(raw);
    // SAFETY: the parser is initialized and has no input yet; `text` is borrowed for the whole
    // of this function, longer than the parser, which `guard` deletes when it returns.
    unsafe {
        sys::yaml_parser_set_encoding(raw, sys::YAML_UTF8_ENCODING);
        sys::yaml_parser_set_input_string(raw, text.as_ptr(), text.len() as u64);
    }
    let mut depth = 0usize;
    let found = loop {
        let mut event = MaybeUninit::<sys::yaml_event_t>::uninit();
        // SAFETY: an initialized parser with its input, and memory for one event, which is
        // filled in when the call succeeds and then deleted below before the next one.
        if unsafe { sys::yaml_parser_parse(raw, event.as_mut_ptr()) }.fail {
            break None;
        }
        // SAFETY: the call succeeded, so the event is initialized; its two fields are copied
        // out before it is deleted, once.
        let (kind, mark) = unsafe {
            let event = event.as_mut_ptr();
            let read = ((*event).type_, (*event).start_mark);
            sys::yaml_event_delete(event);
            read
        };
        match kind {
            sys::YAML_SEQUENCE_START_EVENT | sys::YAML_MAPPING_START_EVENT => {
                depth += 1;
                if depth > limit {
                    break Some(Position { line: mark.line + 1, column: mark.column + 1 });
                }
            }
            sys::YAML_SEQUENCE_END_EVENT | sys::YAML_MAPPING_END_EVENT => depth = depth.saturating_sub(1),
            sys::YAML_STREAM_END_EVENT => break None,
            _ => {}
        }
    };
    drop(guard);
    drop(parser);
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_first_collection_past_the_limit_in_flow_and_block_style() {
        assert_eq!(deeper_than("a: [[1]]\n", 3), None);
        assert_eq!(deeper_than("a: [[1]]\n", 2), Some(Position { line: 1, column: 5 }));
        let block = "a:\n  b:\n    - c: 1\n";
        assert_eq!(deeper_than(block, 4), None);
        assert_eq!(deeper_than(block, 3), Some(Position { line: 3, column: 7 }));
        // Every document of a stream; brackets in strings, comments and block scalars are text.
        let text = "x: 1\n---\ny: '[[[['\nz: |\n  [[[[\n# [[[[\nw: {v: [1]}\n";
        assert_eq!(deeper_than(text, 3), None);
        assert_eq!(deeper_than(text, 2), Some(Position { line: 7, column: 8 }));
        assert_eq!(deeper_than("a: [\n", 0), Some(Position { line: 1, column: 1 }));
        assert_eq!(deeper_than("a: [\n", 2), None, "a syntax error is left to the reading");
    }
}
