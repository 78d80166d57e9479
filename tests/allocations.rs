//! No allocation per recipient: sending one notification to N sockets allocates as much for
//! N = 1,000 as for N = 100 (nothing, once warm), and walking everyone or a group as much for
//! 10,000 sockets as for 1,000. Counted by this binary's allocator, per
//! thread, around the sends of a broadcast: to WebSocket sessions over loopback through the real
//! queue and flushers, and the presence index's walk over everyone and over a group.

#[path = "../crates/socketio/tests/common/loopback.rs"]
mod loopback;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::Arc;
use std::time::{Duration, Instant};

use herald::gateway::Presence;
use loopback::Collect;
use socketio::Frame;
use socketio::engine::{self, Session};

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

fn count() {
    let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
}

// SAFETY: every call is passed on to the system allocator unchanged; counting touches only a
// thread-local cell, which allocates nothing.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Allocations this thread makes while running `f`.
fn allocations_of(f: impl FnOnce()) -> u64 {
    let before = ALLOCATIONS.with(Cell::get);
    f();
    ALLOCATIONS.with(Cell::get) - before
}

#[test]
fn a_broadcast_to_websocket_sessions_allocates_nothing_per_session() {
    // One thread: the flusher runs only when the test awaits, never during the sends counted.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let options = engine::Options { ping_interval: Duration::from_secs(300), ..Default::default() };
        let loopback::Sessions { engine, sessions, .. } = &loopback::sessions(options, 1000).await;
        let frame = Frame::text(|b| b.extend_from_slice(br#"42["notification",{"n":1}]"#));
        let mut written = engine.stats().writes().1;
        let mut broadcast = async |to: &[Arc<Session<Collect>>]| {
            let made = allocations_of(|| {
                for s in to {
                    s.send(&frame).unwrap();
                }
            });
            // Written before the next: each session's queue is empty again.
            written += to.len() as u64;
            let deadline = Instant::now() + Duration::from_secs(10);
            while engine.stats().writes().1 < written && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            assert_eq!(engine.stats().writes().1, written, "every frame written");
            made
        };
        // Warm: the flusher's two lists (the one senders fill, the one it writes) have room.
        broadcast(sessions).await;
        broadcast(sessions).await;
        let to_100 = broadcast(&sessions[..100]).await;
        let to_1000 = broadcast(sessions).await;
        assert_eq!((to_100, to_1000), (0, 0), "allocations for 100 and for 1,000 sessions");
    });
}

#[test]
fn walking_everyone_or_a_group_allocates_nothing_per_socket() {
    let presence = Presence::<u64>::new(herald::metrics::Metrics::detached());
    let crew: Arc<str> = "crew".into();
    let add = |from: u64, to: u64| {
        for i in from..to {
            let user: Arc<str> = format!("user-{i}").into();
            assert!(presence.try_add(&user, i, None));
            presence.join_groups(&i, std::slice::from_ref(&crew));
        }
    };
    add(0, 1000);
    let mut sum = 0u64;
    let mut walk = |presence: &Presence<u64>| {
        allocations_of(|| {
            presence.each_everyone(|s| sum += s);
            presence.each_in_group("crew", |s| sum += s);
        })
    };
    walk(&presence); // warm: the copy buffers have their room
    let to_1000 = walk(&presence);
    add(1000, 10_000);
    walk(&presence);
    let to_10000 = walk(&presence);
    // A constant few: the index's iterator holds each of its shards' read guards in an `Arc`.
    assert_eq!(to_1000, to_10000, "allocations walking 1,000 and 10,000 sockets");
    assert!(to_1000 <= 16, "{to_1000} allocations");
    assert!(sum > 0);
}
