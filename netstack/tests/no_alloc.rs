//! Proof that forwarding allocates nothing: the datapath bench's own cases (VXLAN encap
//! and decap, sleeve seal and open, DNAT, SNAT and LB on 10 000 established flows), each
//! forwarding 100 000 frames (sleeve: 10 000 sealed, 8 192 opened) through `Netstack::poll` after its
//! warm-up, with the heap
//! watched over every timed stretch. The bench file is included as it is, so the test
//! and the figures in docs/PERFORMANCE.md come from the same paths.
//!
//! The heap is watched by its high-water mark (`peak_alloc`): reset when a stretch
//! begins, it must not have risen above what was held then when the stretch ends, so
//! any allocation on the path (even one freed at once) fails the test. One test only:
//! the allocator is global, a second test thread would be counted too.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use peak_alloc::PeakAlloc;

#[global_allocator]
static HEAP: PeakAlloc = PeakAlloc;

#[path = "../examples/datapath_bench.rs"]
#[allow(dead_code)]
mod bench;

/// Heap bytes held when the current stretch began.
static HELD: AtomicUsize = AtomicUsize::new(0);
/// Stretches watched, and the cases that allocated in one (with the bytes above).
static STRETCHES: AtomicUsize = AtomicUsize::new(0);
static ALLOCATED: Mutex<Vec<(String, usize)>> = Mutex::new(Vec::new());

fn watch(case: &str, begins: bool) {
    if begins {
        HELD.store(HEAP.current_usage(), Ordering::SeqCst);
        HEAP.reset_peak_usage();
        return;
    }
    let above = HEAP
        .peak_usage()
        .saturating_sub(HELD.load(Ordering::SeqCst));
    STRETCHES.fetch_add(1, Ordering::SeqCst);
    if above > 0 {
        ALLOCATED.lock().unwrap().push((case.to_string(), above));
    }
}

#[test]
fn steady_state_forwarding_of_every_kind_allocates_nothing() {
    bench::STEADY.set(watch).unwrap();
    let frames = 100_000;
    bench::bench_vxlan(frames);
    // Sealing is generic code compiled at this test's opt-level 0 (~0.3 ms a 1400-byte
    // frame): the bench forwards a quarter of this, 10 000 frames sealed, 12 288 opened
    // in three chunks, the last two watched.
    bench::bench_sleeve(40_000);
    bench::bench_router(frames, 10_000, "10k");
    assert!(
        STRETCHES.load(Ordering::SeqCst) >= 10,
        "every case was watched: {} stretches",
        STRETCHES.load(Ordering::SeqCst)
    );
    let allocated = ALLOCATED.lock().unwrap();
    assert!(
        allocated.is_empty(),
        "heap use on the forwarding path: {allocated:?}"
    );
}
