//! Routing throughput on one core: records/second through the shipped example script
//! (JSON -> Rhai -> JSON included) and through the default rule, plus the fixed cost of a
//! script call (a script that returns `()`, with and without a value to convert), so the
//! script's own share is visible. Then the shipped script again, in batches of 500 split across
//! the routing threads (`routes.threads`: one per core), as the Kafka source routes a batch.
//! Prints medians of 5 runs.
//!
//! Run: `cargo bench --bench route`

use std::path::Path;
use std::time::Instant;

use herald::config::Config;
use herald::route::script::{Limits, Script, engine};
use herald::route::{Record, Router};

const RECORDS: usize = 200_000;
const RUNS: usize = 5;

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = Config::load(&root.join("config.yaml")).expect("shipped config");
    let scripted = Router::new(&config, herald::metrics::Metrics::detached()).expect("shipped scripts compile");
    let yaml = "auth: {jwt: {secret: s}}\nkafka: {topics: [user-notifications]}";
    let default_rule =
        Router::new(&Config::from_yaml(yaml, root.into(), &|_| None).unwrap(), herald::metrics::Metrics::detached()).unwrap();

    let values: Vec<String> = (0..1000)
        .map(|i| {
            format!(
                r#"{{"userId":"user-{i}","type":"order.shipped","_trace":"abc{i}","internal":{{"shard":3}},"body":{{"orderId":{i},"items":[{{"sku":"A-1","qty":2}},{{"sku":"B-7","qty":1}}],"carrier":"DHL","eta":"2026-11-27"}}}}"#
            )
        })
        .collect();
    println!("routing {RECORDS} records of {} bytes each, {RUNS} runs, on one thread unless said", values[0].len());
    let limits = Limits { max_operations: 1_000_000, timeout: std::time::Duration::from_millis(50) };
    let engine = engine(&limits);
    let empty = Script::compile(&engine, Path::new("empty.rhai"), "fn route(record) { () }".into()).unwrap();
    for (name, with_value) in [("empty script, no value (call overhead)", false), ("empty script (+ JSON -> Rhai of the value)", true)] {
        let rate = median_rate(|i| {
            let record = record(i, with_value.then(|| values[i % values.len()].as_bytes()));
            let _ = std::hint::black_box(empty.call(&engine, &limits, &record).unwrap());
        });
        println!("{name:<44} median {rate:>9.0} records/s");
    }
    for (name, router) in [("script routes/user-notifications.rhai", &scripted), ("default rule (/userId)", &default_rule)] {
        let mut out = Vec::with_capacity(512);
        let rate = median_rate(|i| {
            router.route(&record(i, Some(values[i % values.len()].as_bytes())), &mut out).expect("routes");
            if out.len() == 512 {
                out.clear();
            }
        });
        println!("{name:<44} median {rate:>9.0} records/s");
    }
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    let records: Vec<_> = (0..values.len()).map(|i| record(i, Some(values[i].as_bytes()))).collect();
    assert_eq!(records.len() % BATCH, 0, "whole batches");
    let mut out = Vec::with_capacity(values.len());
    // Start the routing threads before the clock does.
    assert!(scripted.route_batch(&records[..BATCH], &mut out).is_empty());
    // Call i routes a whole batch when it starts one: RECORDS calls still route RECORDS records.
    let rate = median_rate(|i| {
        if i % BATCH == 0 {
            out.clear();
            let start = i % records.len();
            let failed = scripted.route_batch(&records[start..start + BATCH], &mut out);
            assert!(failed.is_empty(), "the bench records all route");
        }
    });
    println!("{:<44} median {rate:>9.0} records/s", format!("same script, batches of {BATCH} on {threads} threads"));
}

const BATCH: usize = 500;

/// The median over RUNS runs of RECORDS calls of `f(i)`, in calls per second.
fn median_rate(mut f: impl FnMut(usize)) -> f64 {
    let mut rates: Vec<f64> = (0..RUNS)
        .map(|_| {
            let started = Instant::now();
            (0..RECORDS).for_each(&mut f);
            RECORDS as f64 / started.elapsed().as_secs_f64()
        })
        .collect();
    rates.sort_by(f64::total_cmp);
    rates[RUNS / 2]
}

fn record(i: usize, value: Option<&[u8]>) -> Record<'_> {
    Record {
        topic: "user-notifications",
        partition: 0,
        offset: i as i64,
        key: None,
        value,
        timestamp_ms: Some(0),
        headers: &[],
        trace: None,
    }
}
