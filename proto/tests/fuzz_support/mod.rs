//! What every fuzz test shares (each crate's fuzz tests include this file with `#[path]`):
//! the case count, mutations of real inputs, and a record of the largest allocation made.
//!
//! Case count: `MAGNETAR_FUZZ_CASES` sets the cases of every fuzz property (CI leaves it unset
//! and each property runs its modest default; the long run sets 1000000). Properties whose
//! cases do I/O (files, gRPC, HTTP) divide it by their own factor, stated where they do.
//!
//! Mutations are those of coverage-guided fuzzers, on the bytes of a real input: bit flips,
//! byte sets, inserts, deletes, truncation, duplicated runs, and length fields rewritten with
//! interesting values or nudged by a few (a big-endian u32 anywhere, as every size in these
//! formats is one).

#![allow(dead_code)]

use proptest::prelude::*;
use proptest::sample::Index;

/// The environment variable that sets the number of cases.
pub const CASES_VAR: &str = "MAGNETAR_FUZZ_CASES";

/// Cases for a property: `MAGNETAR_FUZZ_CASES / divisor` (at least 1) when set, else `default`.
pub fn cases(default: u32, divisor: u32) -> u32 {
    match std::env::var(CASES_VAR).ok().and_then(|value| value.trim().parse::<u32>().ok()) {
        Some(cases) => (cases / divisor.max(1)).max(1),
        None => default,
    }
}

/// proptest's configuration for a fuzz property: failures are kept in the
/// `*.proptest-regressions` file beside the test and replayed first on every run.
pub fn config(default: u32, divisor: u32) -> ProptestConfig {
    ProptestConfig { cases: cases(default, divisor), max_shrink_iters: 2048, ..ProptestConfig::default() }
}

/// One change to an input.
#[derive(Debug, Clone)]
pub enum Mutation {
    Flip {
        at: Index,
        bit: u8,
    },
    Set {
        at: Index,
        value: u8,
    },
    Insert {
        at: Index,
        bytes: Vec<u8>,
    },
    Delete {
        at: Index,
        len: usize,
    },
    Truncate {
        at: Index,
    },
    /// A run of the input copied to another place.
    Duplicate {
        from: Index,
        len: usize,
        to: Index,
    },
    /// A big-endian u32 written over the input.
    Word {
        at: Index,
        value: u32,
    },
    /// The big-endian u32 at a place, made a little larger or smaller.
    Nudge {
        at: Index,
        delta: i8,
    },
}

/// Values that break length checks: zero, one, powers of two and their neighbours, the sign
/// bit, all ones.
pub fn interesting_u32() -> impl Strategy<Value = u32> {
    prop_oneof![
        3 => prop::sample::select(vec![
            0u32, 1, 2, 3, 4, 7, 8, 15, 16, 0x7f, 0x80, 0xff, 0x100, 0x3fff, 0x4000, 0x7fff, 0x8000, 0xffff,
            0x1_0000, 0x10_0000, 0x50_0000, 0x7fff_fffe, 0x7fff_ffff, 0x8000_0000, 0x8000_0001, 0xffff_fffe,
            0xffff_ffff,
        ]),
        1 => any::<u32>(),
    ]
}

pub fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => (any::<Index>(), 0u8..8).prop_map(|(at, bit)| Mutation::Flip { at, bit }),
        2 => (any::<Index>(), any::<u8>()).prop_map(|(at, value)| Mutation::Set { at, value }),
        2 => (any::<Index>(), prop::collection::vec(any::<u8>(), 1..16)).prop_map(|(at, bytes)| Mutation::Insert { at, bytes }),
        2 => (any::<Index>(), 1usize..16).prop_map(|(at, len)| Mutation::Delete { at, len }),
        1 => any::<Index>().prop_map(|at| Mutation::Truncate { at }),
        1 => (any::<Index>(), 1usize..32, any::<Index>()).prop_map(|(from, len, to)| Mutation::Duplicate { from, len, to }),
        3 => (any::<Index>(), interesting_u32()).prop_map(|(at, value)| Mutation::Word { at, value }),
        3 => (any::<Index>(), any::<i8>()).prop_map(|(at, delta)| Mutation::Nudge { at, delta }),
    ]
}

/// `input` with the mutations applied in order.
pub fn apply(input: &[u8], mutations: &[Mutation]) -> Vec<u8> {
    let mut bytes = input.to_vec();
    for mutation in mutations {
        let len = bytes.len();
        match mutation {
            Mutation::Flip { at, bit } if len > 0 => bytes[at.index(len)] ^= 1 << bit,
            Mutation::Set { at, value } if len > 0 => bytes[at.index(len)] = *value,
            Mutation::Insert { at, bytes: inserted } => {
                let at = at.index(len + 1);
                bytes.splice(at..at, inserted.iter().copied());
            }
            Mutation::Delete { at, len: count } if len > 0 => {
                let at = at.index(len);
                bytes.drain(at..(at + count).min(len));
            }
            Mutation::Truncate { at } => bytes.truncate(at.index(len + 1)),
            Mutation::Duplicate { from, len: count, to } if len > 0 => {
                let from = from.index(len);
                let run = bytes[from..(from + count).min(len)].to_vec();
                let to = to.index(len + 1);
                bytes.splice(to..to, run);
            }
            Mutation::Word { at, value } if len >= 4 => {
                let at = at.index(len - 3);
                bytes[at..at + 4].copy_from_slice(&value.to_be_bytes());
            }
            Mutation::Nudge { at, delta } if len >= 4 => {
                let at = at.index(len - 3);
                let word = u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
                let nudged = word.wrapping_add_signed(i32::from(*delta));
                bytes[at..at + 4].copy_from_slice(&nudged.to_be_bytes());
            }
            _ => {}
        }
    }
    bytes
}

/// One of `seeds`, changed by one to eight mutations.
pub fn mutated(seeds: Vec<Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    (prop::sample::select(seeds), prop::collection::vec(mutation(), 1..8))
        .prop_map(|(seed, mutations)| apply(&seed, &mutations))
}

/// Inputs for a parser: mostly mutated seeds, some fully random bytes.
pub fn inputs(seeds: Vec<Vec<u8>>, max_random: usize) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => mutated(seeds),
        1 => prop::collection::vec(any::<u8>(), 0..max_random),
    ]
}

/// The size of the largest single allocation (or reallocation) the current thread makes,
/// measured by this test binary's global allocator. Work handed to other threads is not seen.
pub mod alloc {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    thread_local! {
        static ARMED: Cell<bool> = const { Cell::new(false) };
        static LARGEST: Cell<usize> = const { Cell::new(0) };
    }

    /// The system allocator, noting request sizes while armed.
    pub struct Tracking;

    fn note(size: usize) {
        // `try_with`: never fails on these const, drop-free cells, and never allocates.
        let armed = ARMED.try_with(Cell::get).unwrap_or(false);
        if armed {
            let _ = LARGEST.try_with(|largest| largest.set(largest.get().max(size)));
        }
    }

    // A pass-through to the system allocator that only records sizes.
    #[allow(unsafe_code)]
    unsafe impl GlobalAlloc for Tracking {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            note(layout.size());
            // SAFETY: the caller's contract is passed on unchanged.
            unsafe { System.alloc(layout) }
        }

        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            note(layout.size());
            // SAFETY: as above.
            unsafe { System.alloc_zeroed(layout) }
        }

        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            note(new_size);
            // SAFETY: as above.
            unsafe { System.realloc(ptr, layout, new_size) }
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            // SAFETY: as above.
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    #[global_allocator]
    static GLOBAL: Tracking = Tracking;

    /// Runs `work` and returns its result with the largest allocation it made on this thread.
    pub fn largest_allocation<R>(work: impl FnOnce() -> R) -> (R, usize) {
        LARGEST.set(0);
        ARMED.set(true);
        let result = work();
        ARMED.set(false);
        (result, LARGEST.get())
    }
}

/// A settings file of `(key, value)` lines, a key `section.name` under its `[section]`, as
/// TOML wants them (the bookie and broker settings fuzzers write their files with it).
pub fn toml_text(entries: &[(&str, String)]) -> String {
    let mut sections = std::collections::BTreeMap::<&str, Vec<String>>::new();
    for (key, value) in entries {
        let (section, name) = key.split_once('.').unwrap_or(("", key));
        sections.entry(section).or_default().push(format!("{name} = {value}"));
    }
    let mut text = String::new();
    for (section, lines) in sections {
        if !section.is_empty() {
            text.push_str(&format!("[{section}]\n"));
        }
        for line in lines {
            text.push_str(&line);
            text.push('\n');
        }
    }
    text
}
