//! The strict JSON parser of token segments (agent/src/jwt/json.rs).
//!
//! Properties:
//! - it accepts exactly the JSON objects serde_json accepts that have no
//!   duplicate key at any level (an independent count of the document's
//!   object entries against serde_json's de-duplicated map), and then yields
//!   the same value;
//! - the token parser uses it for the JOSE header: `HeaderBadJson` exactly
//!   when it rejects a (non-empty) header;
//! - heap held ≤ 192 × input + 64 KiB (docs/fuzzing.md).
#![no_main]

use std::fmt;

use jwtgate::jwt::{parse, JwtError};
use jwtgate_fuzz::alloc::{measure, Bound};
use jwtgate_fuzz::fixtures::b64;
use libfuzzer_sys::fuzz_target;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

const BOUND: Bound = Bound {
    per_byte: 192,
    fixed: 64 * 1024,
};

fuzz_target!(|data: &[u8]| {
    let (strict, peak) = measure(|| jwtgate::fuzzing::strict_json_object(data));
    BOUND.check("strict JSON", data.len(), peak);

    let loose: Option<Value> = serde_json::from_slice(data).ok();
    match (&strict, &loose) {
        (Some(m), Some(Value::Object(l))) => assert_eq!(m, l, "strict and serde_json disagree"),
        (Some(_), _) => panic!("strict parser accepted what serde_json rejects as an object"),
        (None, Some(Value::Object(l))) => {
            let written = count_entries(data).expect("serde_json accepted it");
            let kept = entries(&Value::Object(l.clone()));
            assert!(
                written > kept,
                "rejected an object without duplicate keys ({written} entries)"
            );
        }
        (None, _) => {}
    }

    // The JOSE header goes through the same parser (an empty segment is a
    // format error before any JSON is read).
    if data.is_empty() {
        return;
    }
    let token = format!("{}.e30.c2ln", b64(data));
    let header_bad_json = matches!(parse(&token), Err(JwtError::HeaderBadJson));
    assert_eq!(header_bad_json, strict.is_none(), "token header disagrees");
});

/// Object entries in a parsed value (after serde_json kept one per key).
fn entries(v: &Value) -> usize {
    match v {
        Value::Object(m) => m.len() + m.values().map(entries).sum::<usize>(),
        Value::Array(a) => a.iter().map(entries).sum(),
        _ => 0,
    }
}

/// Object entries as written in the document, duplicates included.
fn count_entries(data: &[u8]) -> Option<usize> {
    let mut n = 0;
    let mut de = serde_json::Deserializer::from_slice(data);
    Counter(&mut n).deserialize(&mut de).ok()?;
    de.end().ok()?;
    Some(n)
}

struct Counter<'n>(&'n mut usize);

impl<'de> DeserializeSeed<'de> for Counter<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Counter<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("JSON")
    }
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(Counter(&mut *self.0))?.is_some() {}
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while map.next_key::<de::IgnoredAny>()?.is_some() {
            *self.0 += 1;
            map.next_value_seed(Counter(&mut *self.0))?;
        }
        Ok(())
    }
}
