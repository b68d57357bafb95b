//! Any cron expression and time zone a manifest can hold is read or refused, never a panic,
//! and a schedule that is read answers the scheduler's questions (the next firing, the firings
//! missed over a day) without a panic; every firing it names is one it says it fires at.
#![no_main]

use chrono::{DateTime, Duration, Utc};
use libfuzzer_sys::fuzz_target;
use xene_model::CronSchedule;

const ZONES: [Option<&str>; 5] =
    [None, Some("UTC"), Some("Europe/Berlin"), Some("America/Sao_Paulo"), Some("Australia/Lord_Howe")];

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else { return };
    let Some((seconds, rest)) = rest.split_first_chunk::<4>() else { return };
    let Ok(expression) = std::str::from_utf8(rest) else { return };
    let Ok(schedule) = CronSchedule::new(expression, ZONES[usize::from(selector) % ZONES.len()]) else { return };
    // Any time from 1970 to 2106, to the second.
    let Some(start) = DateTime::<Utc>::from_timestamp(i64::from(u32::from_le_bytes(*seconds)), 0) else { return };
    if let Some(next) = schedule.next_after(start) {
        assert!(next > start, "{expression:?}: next firing {next} is not after {start}");
        assert!(schedule.fires_at(next), "{expression:?}: says it fires at {next} but fires_at denies it");
    }
    for missed in schedule.missed(start, start + Duration::days(1), 50) {
        assert!(missed > start && missed <= start + Duration::days(1), "{expression:?}: missed {missed} out of range");
    }
});
