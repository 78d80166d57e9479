//! The send path alone, on 1 and then 2 threads: frames written per second through the real
//! queue and flush code (`Session::send`, the flushers, `writev`) to WebSocket sessions on
//! loopback, with no load generator in the way. 2,000 sessions are opened by plain TCP clients
//! that then never read (each session's frames are few and small, so the kernel's buffers hold
//! them all); on a runtime of T worker threads (so T flushers), T sender tasks each send one
//! frame to each of their own share of the sessions, and the round ends when all are written,
//! so that every write carries one frame at any thread count. Prints medians of 9 runs per
//! thread count, 1 and 2 interleaved, and the ratio (issue #25's target: at least 1.8x from 1 to
//! 2 threads); then the same writes made with write(2) by plain threads, without the server, as the
//! ceiling this machine's kernel puts on that ratio.
//!
//! Run: `cargo bench -p herald-socketio --bench send_path`

#[path = "../tests/common/loopback.rs"]
mod loopback;

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use loopback::Collect;
use socketio::Frame;
use socketio::engine::{self, Session};

const SESSIONS: usize = 2_000;
/// Frames each session gets per run: 200 frames of 40 bytes, 8 KB, well inside the buffers.
const ROUNDS: usize = 200;
const RUNS: usize = 9;

/// Frames written per second by `threads` senders (and flushers), one run.
fn run(threads: usize) -> f64 {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(threads).enable_all().build().unwrap();
    runtime.block_on(async move {
        let options = engine::Options {
            ping_interval: Duration::from_secs(300),
            ping_timeout: Duration::from_secs(300),
            max_queue: 4 * ROUNDS,
            // One flusher per thread: the send path's own scaling (herald's default is one per
            // two threads, so that writing overlaps with the work that sends).
            flushers: Some(threads),
            ..Default::default()
        };
        let loopback = loopback::sessions(options, SESSIONS).await;
        let (engine, sessions) = (&loopback.engine, &loopback.sessions);
        let frame = Frame::text(|b| b.extend_from_slice(br#"42["notification",{"n":1234567890}]"#));
        let shares: Vec<Arc<[Arc<Session<Collect>>]>> = sessions.chunks(SESSIONS / threads).map(Arc::from).collect();
        let base = engine.stats().writes().1;
        let started = Instant::now();
        // Each sender sends one frame to each of its sessions, then waits for the round's
        // frames (every sender's) to be written before the next, so each write carries one
        // frame whatever the thread count: what is measured is the sends and the writes, not
        // how many frames a write can gather. A waiting sender yields to its thread's flusher.
        let senders: Vec<_> = shares
            .iter()
            .map(|share| {
                // Each sender its own notification, as different users get different ones.
                let (share, frame, engine) = (share.clone(), Frame::text(|b| b.extend_from_slice(frame.packet())), engine.clone());
                tokio::spawn(async move {
                    for round in 1..=ROUNDS as u64 {
                        for s in share.iter() {
                            s.send(&frame).expect("room in the queue");
                        }
                        let (target, deadline) = (base + round * SESSIONS as u64, Instant::now() + Duration::from_secs(30));
                        while engine.stats().writes().1 < target {
                            assert!(Instant::now() < deadline, "every frame written");
                            // Reading the counters the flushers write, seldom: each read pulls
                            // their cache lines from the other cores.
                            for _ in 0..16 {
                                tokio::task::yield_now().await;
                            }
                        }
                    }
                })
            })
            .collect();
        for s in senders {
            s.await.unwrap();
        }
        let elapsed = started.elapsed().as_secs_f64();
        engine.close_all().await;
        drop(loopback);
        (SESSIONS * ROUNDS) as f64 / elapsed
    })
}

/// The same writes without herald: `threads` threads each writing one 40-byte frame to each of
/// their share of 2,000 loopback sockets, round after round. What the machine's kernel allows.
fn raw(threads: usize) -> f64 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let accepting = std::thread::spawn(move || (0..SESSIONS).map(|_| listener.accept().unwrap().0).collect::<Vec<_>>());
    let clients: Vec<_> = (0..SESSIONS).map(|_| std::net::TcpStream::connect(addr).unwrap()).collect();
    let servers = accepting.join().unwrap();
    let frame = [b'x'; 40];
    let started = Instant::now();
    std::thread::scope(|scope| {
        for share in servers.chunks(SESSIONS / threads) {
            scope.spawn(move || {
                for _ in 0..ROUNDS {
                    for mut s in share {
                        s.write_all(&frame).unwrap();
                    }
                }
            });
        }
    });
    let rate = (SESSIONS * ROUNDS) as f64 / started.elapsed().as_secs_f64();
    drop(clients);
    rate
}

fn main() {
    println!("{SESSIONS} WebSocket sessions on loopback, {ROUNDS} frames each per run, {RUNS} runs of each, interleaved");
    let mut rates: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    for _ in 0..RUNS {
        // Interleaved, so a slow spell of a shared machine falls on both.
        for (i, threads) in [1, 2].into_iter().enumerate() {
            rates[i].push(run(threads));
        }
    }
    let mut medians = Vec::new();
    for (i, threads) in [1, 2].into_iter().enumerate() {
        let mut r = rates[i].clone();
        r.sort_by(f64::total_cmp);
        println!("{threads} thread(s): {:.0} frames written/s (median; {:.0}-{:.0})", r[RUNS / 2], r[0], r[RUNS - 1]);
        medians.push(r[RUNS / 2]);
    }
    let mut raw_rates: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    for _ in 0..RUNS {
        for (i, threads) in [1, 2].into_iter().enumerate() {
            raw_rates[i].push(raw(threads));
        }
    }
    for r in &mut raw_rates {
        r.sort_by(f64::total_cmp);
    }
    println!(
        "the same writes without herald (write(2) per frame): {:.0} and {:.0} frames/s, {:.2}x: what this machine's kernel allows",
        raw_rates[0][RUNS / 2],
        raw_rates[1][RUNS / 2],
        raw_rates[1][RUNS / 2] / raw_rates[0][RUNS / 2]
    );
    let mut ratios: Vec<f64> = rates[1].iter().zip(&rates[0]).map(|(two, one)| two / one).collect();
    ratios.sort_by(f64::total_cmp);
    println!(
        "2 threads / 1 thread: {:.2}x (medians); each run's pair: median {:.2}x ({:.2}-{:.2})",
        medians[1] / medians[0],
        ratios[RUNS / 2],
        ratios[0],
        ratios[RUNS - 1]
    );
}
