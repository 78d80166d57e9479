//! Routing throughput on one core: records/second through the shipped example script
//! (JSON -> Rhai -> JSON included) and through the default rule. Prints medians of 5 runs.
//!
//! Run: `cargo bench --bench route`

use std::path::Path;
use std::time::Instant;

use herald::config::Config;
use herald::route::{Record, Router};

const RECORDS: usize = 200_000;
const RUNS: usize = 5;

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = Config::load(&root.join("config.yaml")).expect("shipped config");
    let scripted = Router::new(&config, None).expect("shipped scripts compile");
    let yaml = "auth: {jwt: {secret: s}}\nkafka: {topics: [user-notifications]}";
    let default_rule = Router::new(&Config::from_yaml(yaml, root.into(), &|_| None).unwrap(), None).unwrap();

    let values: Vec<String> = (0..1000)
        .map(|i| {
            format!(
                r#"{{"userId":"user-{i}","type":"order.shipped","_trace":"abc{i}","internal":{{"shard":3}},"body":{{"orderId":{i},"items":[{{"sku":"A-1","qty":2}},{{"sku":"B-7","qty":1}}],"carrier":"DHL","eta":"2026-11-27"}}}}"#
            )
        })
        .collect();
    println!("routing {RECORDS} records of {} bytes each, {RUNS} runs, one thread", values[0].len());
    for (name, router) in [("script routes/user-notifications.rhai", &scripted), ("default rule (/userId)", &default_rule)] {
        let mut rates = Vec::new();
        for _ in 0..RUNS {
            let mut out = Vec::with_capacity(512);
            let started = Instant::now();
            for i in 0..RECORDS {
                let value = values[i % values.len()].as_bytes();
                let record = Record {
                    topic: "user-notifications",
                    partition: 0,
                    offset: i as i64,
                    key: None,
                    value: Some(value),
                    timestamp_ms: Some(0),
                    headers: &[],
                };
                router.route(&record, &mut out).expect("routes");
                if out.len() == 512 {
                    out.clear();
                }
            }
            rates.push(RECORDS as f64 / started.elapsed().as_secs_f64());
        }
        rates.sort_by(f64::total_cmp);
        println!("{name:<40} median {:>9.0} records/s  (min {:.0}, max {:.0})", rates[RUNS / 2], rates[0], rates[RUNS - 1]);
    }
}
