//! Structured-input helpers: a value is either one of a few known-good
//! choices (so the fuzzer reaches the interesting branches quickly) or
//! anything at all.

use arbitrary::Arbitrary;

/// A string from a pool, or raw fuzzer text.
#[derive(Arbitrary, Debug, Clone)]
pub enum Text {
    Known(u8),
    Raw(String),
}

impl Text {
    pub fn get<'a>(&'a self, pool: &[&'a str]) -> &'a str {
        match self {
            Text::Known(i) if !pool.is_empty() => pool[*i as usize % pool.len()],
            Text::Known(_) => "",
            Text::Raw(s) => s,
        }
    }
}

/// `pool[i % len]`.
pub fn nth<T: Copy>(pool: &[T], i: u8) -> T {
    pool[i as usize % pool.len()]
}
