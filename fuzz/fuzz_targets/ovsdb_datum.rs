//! What the node agent parses from ovsdb-server: back-to-back JSON values on the
//! socket, RFC 7047 datums, and monitor updates. A crash here stops the node's switch
//! reconciliation, so every input must end in a value or an error.
//!
//! Invariants: framing yields the same values whatever the read boundaries; a datum
//! that parses survives to_json → from_json unchanged; an update applies or is refused
//! as a whole.
#![no_main]

use std::collections::HashMap;

use libfuzzer_sys::fuzz_target;
use measurelab_ovsdb::fuzzing::{apply_table_updates, Framer};
use measurelab_ovsdb::value::Datum;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Some((&split, stream)) = data.split_first() else {
        return;
    };
    let values = frame(&[stream]);
    let at = usize::from(split).min(stream.len());
    assert_eq!(
        frame(&[&stream[..at], &stream[at..]]),
        values,
        "framing depends on a read boundary at {at}"
    );
    let mut tables = HashMap::new();
    for value in values.iter().flatten() {
        datum_roundtrip(value);
        if let Some(params) = value.get("params").and_then(Value::as_array) {
            params.iter().for_each(datum_roundtrip);
            if let Some(updates) = params.get(1) {
                let before = tables.clone();
                if apply_table_updates(&mut tables, updates).is_err() {
                    assert_eq!(tables, before, "a refused update changed the replica");
                }
            }
        }
    }
});

/// Every value the reads complete, or `None` once the stream broke.
fn frame(reads: &[&[u8]]) -> Option<Vec<Value>> {
    let mut framer = Framer::default();
    let mut values = Vec::new();
    for read in reads {
        framer.push(read);
        values.extend(framer.drain_values().ok()?);
    }
    Some(values)
}

fn datum_roundtrip(value: &Value) {
    if let Ok(datum) = Datum::from_json(value) {
        let again = Datum::from_json(&datum.to_json()).expect("an encoded datum parses");
        assert_eq!(again, datum);
    }
}
