//! Any text given to `parse_manifest` (what `xenectl apply` and the server run on a manifest)
//! is read or refused, never a panic; and what it reads survives the ways a workflow travels:
//! written as YAML (`xenectl get -o yaml`) or JSON and read again, and stored as JSON and read
//! back through the serde derives (what the servers do with the stored object).
#![no_main]

use libfuzzer_sys::fuzz_target;
use xene_model::{parse_manifest, to_json, to_yaml, Workflow};

fuzz_target!(init: xene_fuzz::tolerate_caught_cel_panics(), |data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(workflow) = parse_manifest(text) else { return };

    let yaml = to_yaml(&workflow).expect("an accepted workflow encodes as YAML");
    match parse_manifest(&yaml) {
        Ok(again) => assert_eq!(again, workflow, "YAML round trip changed the workflow:\n{yaml}"),
        Err(errors) => panic!("the YAML written for an accepted workflow is refused: {errors}\n{yaml}"),
    }

    let json = to_json(&workflow).expect("an accepted workflow encodes as JSON");
    match parse_manifest(&json) {
        Ok(again) => assert_eq!(again, workflow, "JSON round trip changed the workflow:\n{json}"),
        Err(errors) => panic!("the JSON written for an accepted workflow is refused: {errors}\n{json}"),
    }
    match serde_json::from_str::<Workflow>(&json) {
        Ok(stored) => assert_eq!(stored, workflow, "the stored form reads back different:\n{json}"),
        Err(error) => panic!("the stored form of an accepted workflow does not read back: {error}\n{json}"),
    }
});
