//! A counting global allocator: live heap bytes and the peak since the last
//! [`measure`], so a target can assert that one input never makes the code
//! under test hold more than a stated bound (linear in the input, plus a
//! constant). Only Rust allocations are seen; aws-lc's own C allocations are
//! not (they are per key or per verification, never per input byte).
//!
//! libFuzzer runs one input at a time on one thread, so plain atomics with
//! relaxed ordering are exact here.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

pub struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(by: usize) {
    let now = LIVE.fetch_add(by, Relaxed) + by;
    PEAK.fetch_max(now, Relaxed);
}

fn shrank(by: usize) {
    LIVE.fetch_sub(by, Relaxed);
}

// SAFETY: every call is forwarded to `System` unchanged; the counters only
// observe the sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        shrank(layout.size());
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            if new_size >= layout.size() {
                grew(new_size - layout.size());
            } else {
                shrank(layout.size() - new_size);
            }
        }
        p
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

/// Heap bytes currently allocated by Rust code.
pub fn live() -> usize {
    LIVE.load(Relaxed)
}

/// Run `f`; return its result and the most heap it held at once beyond
/// what was live when it started.
pub fn measure<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = LIVE.load(Relaxed);
    PEAK.store(base, Relaxed);
    let out = f();
    let peak = PEAK.load(Relaxed).saturating_sub(base);
    (out, peak)
}

/// A documented allocation bound: `per_byte` × input length + `fixed`.
#[derive(Debug, Clone, Copy)]
pub struct Bound {
    pub per_byte: usize,
    pub fixed: usize,
}

impl Bound {
    pub fn limit(self, input_len: usize) -> usize {
        input_len
            .saturating_mul(self.per_byte)
            .saturating_add(self.fixed)
    }

    /// Panic (a libFuzzer crash) when `peak` exceeds the bound.
    #[track_caller]
    pub fn check(self, what: &str, input_len: usize, peak: usize) {
        let limit = self.limit(input_len);
        assert!(
            peak <= limit,
            "{what}: peak heap {peak} B for {input_len} B of input exceeds the bound {limit} B ({self:?})"
        );
    }
}
