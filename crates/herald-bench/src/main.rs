//! herald-bench: drives running herald instances from outside, as real clients do, and reports
//! memory per idle connection, end-to-end latency, throughput, CPU per notification and losses.
//!
//! `herald-bench broker` runs a standalone Kafka-protocol broker (herald's embedded one, in a
//! process of its own so its CPU is not charged to herald); `herald-bench run` spawns `worker`
//! processes that hold the Socket.IO connections, produces records at fixed rates, and prints a
//! report (and appends it as one JSON line to `--json`). See docs/benchmarks.md.

// Unsafe code only in `stats`, for the system calls std does not wrap (it says which).
#![deny(unsafe_code)]

mod deflate_ws;
mod fanout;
mod fleet;
mod polling;
mod records;
mod run;
mod seen;
mod share;
mod stats;
mod worker;

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "herald-bench", about = "Load generator for herald: connections, latency, throughput, CPU, memory")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a standalone Kafka-protocol broker (librdkafka's mock cluster) until killed or
    /// --max-secs pass.
    Broker {
        #[arg(long, default_value = "127.0.0.1:9092")]
        listen: SocketAddr,
        /// Topics to create: the per-user one, and those of the fan-out runs.
        #[arg(long, value_delimiter = ',', default_value = "herald-bench,herald-bench-broadcast,herald-bench-group")]
        topics: Vec<String>,
        #[arg(long, default_value_t = 4)]
        partitions: i32,
        #[arg(long, default_value_t = 3600)]
        max_secs: u64,
    },
    /// Connect, measure, produce, collect, report.
    Run(run::RunArgs),
    /// Broadcasts or group records across instances: time to the first and the last socket.
    Fanout(fanout::FanoutArgs),
    /// Internal: a client process spawned by `run`.
    Worker(worker::WorkerArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Worker(args) => {
            // Two threads: the worker must not need more than its share of the two cores.
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
            rt.block_on(worker::run(args))
        }
        Command::Broker { listen, topics, partitions, max_secs } => {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
            rt.block_on(async move {
                let broker = herald::source::embedded::EmbeddedBroker::start(listen, &topics, partitions).await?;
                println!("broker listening on {}", broker.address());
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = terminated() => {}
                    _ = tokio::time::sleep(Duration::from_secs(max_secs)) => {}
                }
                drop(broker);
                Ok(())
            })
        }
        Command::Run(args) => {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
            rt.block_on(run::run(args))
        }
        Command::Fanout(args) => {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
            rt.block_on(fanout::run(args))
        }
    }
}

async fn terminated() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut s) => {
            s.recv().await;
        }
        Err(_) => std::future::pending().await,
    }
}
