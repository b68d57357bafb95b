//! Any `when` condition is read or refused, and one that is read is evaluated against any
//! outputs, without a panic or a stack overflow: the agent evaluates conditions as it runs a
//! pipeline, and a crash there would fail every run of the agent, not just the one.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xene_model::When;

fuzz_target!(init: xene_fuzz::tolerate_caught_cel_panics(), |data: &[u8]| {
    // The first byte picks the outputs' values, the rest is the condition.
    let Some((&selector, rest)) = data.split_first() else { return };
    let Ok(text) = std::str::from_utf8(rest) else { return };
    let Ok(when) = text.parse::<When>() else { return };
    let value = match selector % 6 {
        0 => None,
        1 => Some("87".to_string()),
        2 => Some("0.75".to_string()),
        3 => Some("true".to_string()),
        4 => Some("main".to_string()),
        _ => Some("-9223372036854775808".to_string()),
    };
    let _ = when.evaluate(|_, _| value.clone());
});
