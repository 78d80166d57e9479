//! herald's command line: run the gateway, check a config, mint a test token, produce a record.

#![deny(unsafe_code)]

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use herald::app::Prepared;
use herald::config::{Brokers, Config};
use herald::notification::Audience;
use herald::route::{Record, Router};

/// Exit code for a configuration that does not validate (EX_CONFIG from sysexits.h).
const EXIT_CONFIG: u8 = 78;

#[derive(Parser)]
#[command(
    name = "herald",
    version,
    about = "Real-time notification gateway: Kafka -> route -> Redis Pub/Sub -> Socket.IO",
    after_help = "Exit codes: 0 success (including a graceful shutdown on SIGTERM/SIGINT), 1 a runtime failure, \
                  2 a command-line usage error, 78 an invalid configuration (nothing started, no port bound)."
)]
struct Cli {
    /// Path of the YAML configuration.
    #[arg(long, short, global = true, env = "HERALD_CONFIG", default_value = "config.yaml")]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (the default when no subcommand is given).
    Run,
    /// Validate the configuration and list every problem; exit 0 if it is valid, 78 if not.
    CheckConfig,
    /// Print a signed test token for a user (HS algorithms only; for trying herald).
    Token {
        /// The user id to put in the user id claim.
        #[arg(long)]
        user: String,
        /// Lifetime of the token in seconds.
        #[arg(long, default_value_t = 86_400)]
        ttl_secs: u64,
    },
    /// Dry run: route one record as the running config would, and print the notifications.
    Route {
        /// The topic the record is on (chooses its rule or script).
        #[arg(long)]
        topic: String,
        /// The record key.
        #[arg(long)]
        key: Option<String>,
        /// A file holding the record value, or `-` (the default) for standard input.
        #[arg(default_value = "-")]
        record: String,
    },
    /// Produce one record to Kafka (the configured brokers, or --brokers).
    Produce {
        /// Topic; defaults to the first configured topic.
        #[arg(long)]
        topic: Option<String>,
        /// Record key.
        #[arg(long)]
        key: Option<String>,
        /// Bootstrap servers; defaults to the config (127.0.0.1:9092 for the embedded broker).
        #[arg(long)]
        brokers: Option<String>,
        /// The record value, or `-` (the default) to read it from standard input.
        #[arg(default_value = "-")]
        value: String,
    },
}

/// jemalloc, for herald's code and (unprefixed) for librdkafka's: measured against glibc's
/// allocator, 1.9 instead of 2.2 KiB per idle WebSocket connection and 2.25 instead of 2.85 us
/// of CPU per notification in a 200,000-record burst (frees across threads, between
/// librdkafka's broker thread and the consumer, were glibc's costliest part). docs/benchmarks.md.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Everything is validated before anything starts: the config, then every route script.
    // One preparation for every command, before anything starts: the config, every route
    // script, every key.
    let prepared = match Config::load(&cli.config).and_then(herald::app::prepare) {
        Ok(p) => p,
        Err(errors) => {
            eprint!("herald: {}: {errors}", cli.config.display());
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let result = match cli.command.unwrap_or(Command::Run) {
        Command::CheckConfig => {
            println!("{}: OK", cli.config.display());
            Ok(())
        }
        Command::Token { user, ttl_secs } => token(&prepared.config, &user, ttl_secs).map(|t| println!("{t}")),
        Command::Produce { topic, key, brokers, value } => produce(&prepared.config, topic, key, brokers, value),
        Command::Route { topic, key, record } => dry_run(&prepared.router, &topic, key.as_deref(), &record),
        Command::Run => run(prepared),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("herald: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}

fn run(prepared: Prepared) -> anyhow::Result<()> {
    herald::telemetry::init(&prepared.config.log);
    herald::telemetry::spans::start(&prepared.config.telemetry)?;
    if let Some((before, after)) = herald::process::raise_open_file_limit() {
        tracing::info!(before, after, "Raised the open-file limit (each socket is a file descriptor).");
    }
    let runtime = runtime()?;
    let result = runtime.block_on(async move {
        let embedded_banner = prepared.config.is_embedded().then(|| banner(&prepared.config));
        let running = herald::app::start_prepared(prepared, None).await?;
        if let Some(banner) = embedded_banner {
            println!("{}", banner.replace("{listen}", &running.local_addr().to_string()).replace("{kafka}", running.kafka_bootstrap()));
        }
        tokio::select! {
            _ = shutdown_signal() => {}
            _ = running.failed() => {}
        }
        running.shutdown().await
    });
    // A blocking call stuck on an unreachable cluster must not keep the process alive.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    herald::telemetry::spans::shutdown(std::time::Duration::from_secs(5));
    result
}

/// The start-up text of the embedded mode: what it is for, and how to try it.
fn banner(config: &Config) -> String {
    let topic = &config.kafka.topics[0].name;
    let token = token(config, "u42", 86_400).unwrap_or_else(|e| format!("(cannot mint one: {e})"));
    format!(
        "
================================================================================
 herald {version} is running in EMBEDDED MODE: an in-process Kafka broker and an
 in-process bus. It is for trying herald on one machine, NOT for production:
 records live in memory and vanish on exit. Set kafka.brokers and redis.url.
================================================================================
 Socket.IO + HTTP : http://{{listen}}   (/healthz /readyz /metrics)
 Kafka (embedded) : {{kafka}}   topic: {topic}
 Test token for user u42 (24 h):
   {token}
 {demo}Connect (Node, npm socket.io-client):
   io(\"http://127.0.0.1:{port}\", {{ auth: {{ token: \"<the token>\" }} }}).on(\"{event}\", console.log)
 Produce a notification for u42:
   herald produce '{{\"userId\":\"u42\",\"type\":\"hello\",\"body\":{{\"text\":\"Hi\"}}}}'
   echo '{{\"userId\":\"u42\",\"type\":\"hello\"}}' | kcat -P -b {{kafka}} -t {topic}
================================================================================",
        version = env!("CARGO_PKG_VERSION"),
        port = config.server.listen.port(),
        event = config.server.event,
        demo = match config.demo.enabled {
            Some(_) => format!("Demo page (browser): http://127.0.0.1:{}/demo/#token={token}\n ", config.server.listen.port()),
            None => String::new(),
        },
    )
}

fn token(config: &Config, user: &str, ttl_secs: u64) -> anyhow::Result<String> {
    let jwt = &config.auth.jwt;
    let secret = jwt.secret.as_deref().ok_or_else(|| anyhow::anyhow!("auth.jwt.secret is not set"))?;
    let algorithm = *jwt.algorithms.first().ok_or_else(|| anyhow::anyhow!("auth.jwt.algorithms is empty"))?;
    let now = jsonwebtoken::get_current_timestamp();
    let mut claims = serde_json::Map::new();
    claims.insert(jwt.user_id_claim.clone(), user.into());
    claims.insert("iat".into(), now.into());
    claims.insert("exp".into(), (now + ttl_secs).into());
    if let Some(iss) = jwt.issuers.first() {
        claims.insert("iss".into(), iss.as_str().into());
    }
    if let Some(aud) = jwt.audiences.first() {
        claims.insert("aud".into(), aud.as_str().into());
    }
    Ok(jsonwebtoken::encode(&jsonwebtoken::Header::new(algorithm), &claims, &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()))?)
}

/// Prints one JSON line per notification the record would cause, or the reason it causes none.
fn dry_run(router: &Router, topic: &str, key: Option<&str>, record: &str) -> anyhow::Result<()> {
    let value = if record == "-" {
        let mut v = Vec::new();
        std::io::stdin().read_to_end(&mut v)?;
        v
    } else {
        std::fs::read(record).map_err(|e| anyhow::anyhow!("cannot read {record}: {e}"))?
    };
    let record = Record {
        topic,
        partition: 0,
        offset: 0,
        key: key.map(str::as_bytes),
        value: Some(&value),
        timestamp_ms: Some(herald::clock::unix_ms()),
        headers: &[],
        trace: None,
    };
    let mut out = Vec::new();
    match router.route(&record, &mut out) {
        Ok(()) => {
            for n in out {
                let mut line = match &n.to {
                    Audience::User(user) => serde_json::json!({"user_id": user}),
                    Audience::Group { name, .. } => serde_json::json!({"group": name}),
                    Audience::Broadcast => serde_json::json!({"broadcast": true}),
                };
                line["event"] = serde_json::Value::from(&*n.event);
                line["payload"] = serde_json::to_value(&n.payload).expect("raw JSON is a value");
                println!("{line}");
            }
            Ok(())
        }
        Err(e) if e.reason == herald::route::DropReason::Filtered => {
            eprintln!("no notification: {e}");
            Ok(())
        }
        Err(e) => Err(anyhow::anyhow!("dropped ({}): {e}", herald::metrics::LabelValue::as_label(e.reason))),
    }
}

fn produce(config: &Config, topic: Option<String>, key: Option<String>, brokers: Option<String>, value: String) -> anyhow::Result<()> {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let value = if value == "-" {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s)?;
        s.trim_end().to_owned()
    } else {
        value
    };
    let brokers = brokers.unwrap_or_else(|| match &config.kafka.brokers {
        Brokers::List(list) => list.clone(),
        Brokers::Embedded => config.kafka.embedded.listen.to_string(),
    });
    let topic = topic.unwrap_or_else(|| config.kafka.topics[0].name.clone());
    runtime()?.block_on(async move {
        let producer: FutureProducer =
            rdkafka::ClientConfig::new().set("bootstrap.servers", &brokers).set("message.timeout.ms", "10000").create()?;
        let mut record = FutureRecord::to(&topic).payload(&value);
        if let Some(k) = &key {
            record = record.key(k);
        }
        let delivery = producer
            .send(record, Duration::from_secs(10))
            .await
            .map_err(|(e, _)| anyhow::anyhow!("cannot produce to {topic} on {brokers}: {e}"))?;
        println!("produced to {topic} partition {} offset {}", delivery.partition, delivery.offset);
        Ok(())
    })
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = terminate => {}
    }
}
