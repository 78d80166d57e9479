//! Wiring: builds every stage from the config, runs them, and shuts them down in order.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::auth::Authenticator;
use crate::bus::Bus;
use crate::config::{Brokers, Config, ConfigError, ConfigErrors};
use crate::gateway::receipts::Receipts;
use crate::gateway::relay::Relay;
use crate::gateway::{self, Admission, Deliverer, Gateway, Lifetimes, Limits, Presence};
use crate::http::{self, HttpState};
use crate::metrics::Metrics;
use crate::route::Router;
use crate::source::embedded::EmbeddedBroker;
use crate::source::kafka::KafkaSource;
use crate::supervise::Supervisor;

/// A running herald instance.
pub struct Running {
    local_addr: SocketAddr,
    kafka_bootstrap: String,
    metrics: Arc<Metrics>,
    gateway: gateway::Server,
    bus: Arc<Bus>,
    grace: Duration,
    /// Unready, still serving, before the graceful shutdown (`server.drain_delay_secs`).
    drain_delay: Duration,
    /// Makes `/readyz` answer 503: the first step of a shutdown.
    draining: CancellationToken,
    /// Stops fetching from Kafka.
    stop_source: CancellationToken,
    /// Gives up on records still waiting for the bus (end of the grace period).
    abort_source: CancellationToken,
    /// Stops the HTTP server and background tasks.
    stop_rest: CancellationToken,
    /// Fired when a component ends on its own: the process should shut down.
    failed: CancellationToken,
    supervisor: Supervisor,
    source: JoinHandle<anyhow::Result<()>>,
    server: JoinHandle<std::io::Result<()>>,
    _broker: Option<EmbeddedBroker>,
}

/// What is built from the config before anything starts, once, for `run`, `check-config` and
/// `route` alike: the metrics first (everything else counts into them), every route script
/// compiled, every key loaded. An error here is a config error: nothing was started.
pub struct Prepared {
    pub config: Config,
    pub metrics: Arc<Metrics>,
    pub router: Arc<Router>,
    pub authenticator: Authenticator,
}

pub fn prepare(config: Config) -> Result<Prepared, ConfigErrors> {
    let topics: Vec<String> = config.kafka.topics.iter().map(|t| t.name.clone()).collect();
    let metrics = Arc::new(Metrics::new(&topics));
    let router = Arc::new(Router::new(&config, metrics.clone())?);
    let authenticator = Authenticator::new(&config, metrics.clone())
        .map_err(|e| ConfigErrors(vec![ConfigError { path: String::new(), message: format!("{e:#}") }]))?;
    for topic in &config.kafka.topics {
        if let Some(script) = &topic.script {
            metrics.register_route(&script.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default());
        }
    }
    Ok(Prepared { config, metrics, router, authenticator })
}

/// Prepares and starts every stage. `listener` overrides `server.listen` (tests bind port 0).
pub async fn start(config: Config, listener: Option<TcpListener>) -> anyhow::Result<Running> {
    start_prepared(prepare(config)?, listener).await
}

/// Starts every stage from what [`prepare`] built.
pub async fn start_prepared(prepared: Prepared, listener: Option<TcpListener>) -> anyhow::Result<Running> {
    let Prepared { config, metrics, router, authenticator } = prepared;
    // The embedded broker also holds the dead-letter topic, so it can be read back.
    let broker_topics: Vec<String> = config.kafka.topics.iter().map(|t| t.name.clone()).chain(config.kafka.output_topics()).collect();
    let listener = match listener {
        Some(l) => l,
        None => TcpListener::bind(config.server.listen)
            .await
            .with_context(|| format!("server.listen: cannot listen on {}", config.server.listen))?,
    };
    let local_addr = listener.local_addr()?;

    let broker = match &config.kafka.brokers {
        Brokers::Embedded => {
            Some(EmbeddedBroker::start(config.kafka.embedded.listen, &broker_topics, config.kafka.embedded.partitions).await?)
        }
        Brokers::List(_) => None,
    };
    let kafka_bootstrap = match (&config.kafka.brokers, &broker) {
        (Brokers::List(list), _) => list.clone(),
        (Brokers::Embedded, Some(b)) => b.address().to_string(),
        (Brokers::Embedded, None) => unreachable!("the embedded broker was started above"),
    };

    let stop_rest = CancellationToken::new();
    // Every background task is started through it: one that ends on its own fails the instance.
    let supervisor = Supervisor::new(stop_rest.clone());
    let presence = Arc::new(Presence::new(metrics.clone()));
    let revocations = Arc::new(crate::gateway::revocation::Revocations::new(config.auth.revocation_ttl));
    // With Redis, a long-polling request may reach any instance: it is relayed to the one
    // holding its session. A poll is answered within a ping interval, so it waits that long.
    let relay = config.redis.as_ref().map(|_| {
        let poll_wait = config.server.ping_interval + config.server.ping_timeout + Duration::from_secs(5);
        Relay::new(&socketio::engine::instance_tag(), poll_wait, config.server.connect_timeout)
    });
    let moves = Arc::new(crate::gateway::Moves::default());
    let deliverer =
        Deliverer::new(presence.clone(), metrics.clone(), config.server.slow_client, revocations.clone(), relay.clone(), moves.clone());
    let bus = Bus::start(&config, relay.as_ref().map(Relay::tag), Arc::new(deliverer), metrics.clone(), &supervisor).await?;
    if let Some(relay) = &relay {
        relay.attach_bus(bus.clone());
    }
    authenticator.start(&supervisor);
    // Files reread while running: the route scripts and the JWT public key.
    let mut reloadables: Vec<Arc<dyn crate::watch::Reloadable>> = vec![router.clone()];
    reloadables.extend(authenticator.reloadables());
    let lifetimes = Lifetimes::<Admission>::start(config.auth.expired_event.clone(), metrics.clone(), &supervisor);
    let admission = Admission {
        authenticator,
        bus: bus.clone(),
        presence,
        metrics: metrics.clone(),
        rejections: metrics.by_label(crate::metrics::AUTH_REJECTIONS),
        lifetimes,
        limits: Limits::new(&config.auth),
        replay: config.replay.clone(),
        refresh_event: config.auth.refresh_event.clone(),
        receipts: config
            .kafka
            .receipts_topic
            .as_deref()
            .map(|t| -> anyhow::Result<Receipts> {
                let producer = crate::source::producer_for(&kafka_bootstrap, &config.kafka.options)
                    .map_err(|e| anyhow::anyhow!("kafka.receipts_topic: cannot create the producer: {e}"))?;
                Ok(Receipts::new(t, &config.server.receipt_event, config.server.receipts_per_sec, producer))
            })
            .transpose()?
            .map(Arc::new),
        revocations: revocations.clone(),
        moves,
    };
    let gateway = Gateway::start(&config.server, &config.auth, admission, relay.as_ref()).server;

    let timing = crate::watch::Timing { debounce: config.routes.reload_debounce, poll: config.routes.reload_poll };
    crate::watch::spawn(reloadables, timing, &supervisor)?;
    let source = KafkaSource::new(&config, &kafka_bootstrap, router, bus.clone(), metrics.clone())?;
    let kafka_health = source.health();

    let publish_api = config.api.key.as_deref().map(|key| {
        Arc::new(http::publish::PublishApi::new(&config.api, key, bus.clone(), &config.server.event, config.auth.revocation_ttl))
    });
    let demo = http::demo::DemoPage::load(&config);
    let draining = CancellationToken::new();
    let state =
        HttpState { metrics: metrics.clone(), kafka: kafka_health, bus: bus.clone(), gateway: gateway.clone(), draining: draining.clone() };
    let app = http::router(state, publish_api, demo).layer(http::cors(&config.auth.allowed_origins));
    let mounts = vec![gateway.mount()];
    let failed = supervisor.failed().clone();
    let server = {
        let (stop, failed, timeout, write_timeout) =
            (stop_rest.clone(), failed.clone(), config.server.connect_timeout, config.server.write_timeout);
        let write_timeouts = metrics.write_timeouts.clone();
        tokio::spawn(async move {
            let result = http::serve(listener, app, mounts, timeout, write_timeout, write_timeouts, stop).await;
            failed.cancel();
            result
        })
    };
    let (stop_source, abort_source) = (CancellationToken::new(), CancellationToken::new());
    let source = {
        let (stop, abort, failed) = (stop_source.clone(), abort_source.clone(), failed.clone());
        tokio::spawn(async move {
            let result = source.run(stop.clone(), abort).await;
            if !stop.is_cancelled() {
                error!("The Kafka source stopped unexpectedly; shutting down.");
                failed.cancel();
            }
            result
        })
    };
    {
        let (metrics, stop) = (metrics.clone(), stop_rest.clone());
        supervisor.spawn("metrics upkeep", async move {
            let mut tick = tokio::time::interval(Metrics::UPKEEP_INTERVAL);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => metrics.upkeep(),
                }
            }
        });
    }
    info!(listen = %local_addr, kafka = %kafka_bootstrap, bus = if config.redis.is_some() { "redis" } else { "in-process" }, "herald started.");
    Ok(Running {
        local_addr,
        kafka_bootstrap,
        metrics,
        gateway,
        bus,
        grace: config.server.shutdown_grace,
        drain_delay: config.server.drain_delay,
        draining,
        stop_source,
        abort_source,
        stop_rest,
        failed,
        supervisor,
        source,
        server,
        _broker: broker,
    })
}

impl Running {
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The Kafka bootstrap list in use (the embedded broker's address in embedded mode).
    pub fn kafka_bootstrap(&self) -> &str {
        &self.kafka_bootstrap
    }

    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// The supervisor of the instance's background tasks: a task spawned through it that ends
    /// before shutdown fails the instance, as herald's own do.
    pub fn supervisor(&self) -> &Supervisor {
        &self.supervisor
    }

    /// Resolves when a component ended on its own.
    pub async fn failed(&self) {
        self.failed.cancelled().await
    }

    /// Phased shutdown: become unready at once (and stay serving for `server.drain_delay_secs`),
    /// then within the grace period stop fetching, let the records in hand reach the bus and
    /// commit their offsets, close the sockets, then stop serving.
    /// An error if a component had stopped on its own (the process then exits 1), else the
    /// source's own result.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        // Read before shutting down, which stops the server and so fires `failed` too.
        let failed_on_its_own = self.failed.is_cancelled();
        self.draining.cancel();
        if !self.drain_delay.is_zero() && !failed_on_its_own {
            info!(drain_delay_secs = self.drain_delay.as_secs(), "Shutting down: not ready; still serving while load balancers notice.");
            tokio::select! {
                _ = tokio::time::sleep(self.drain_delay) => {}
                _ = self.failed.cancelled() => {}
            }
        }
        let deadline = tokio::time::Instant::now() + self.grace;
        info!(grace_secs = self.grace.as_secs(), "Shutting down: no more records are fetched.");
        self.stop_source.cancel();
        let abort = self.abort_source.clone();
        let mut source = self.source;
        let source_result = tokio::select! {
            r = &mut source => r,
            _ = tokio::time::sleep_until(deadline) => {
                warn!("Grace period over with records still waiting for the bus; they stay uncommitted and will be consumed again.");
                abort.cancel();
                source.await
            }
        };
        info!("Closing sockets.");
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now()).max(Duration::from_millis(500));
        if tokio::time::timeout(remaining, self.gateway.close_all()).await.is_err() {
            warn!("Sockets did not all close in time.");
        }
        self.stop_rest.cancel();
        let server_result = tokio::time::timeout(Duration::from_secs(2), self.server).await;
        self.bus.close().await;
        info!("herald stopped.");
        source_result.map_err(|e| anyhow::anyhow!("the Kafka source task panicked: {e}"))??;
        match server_result {
            Ok(Ok(Err(e))) => return Err(anyhow::Error::new(e).context("the HTTP server failed")),
            Ok(Err(e)) => anyhow::bail!("the HTTP server task panicked: {e}"),
            // Served until told to stop, or still closing connections: neither is a failure.
            Ok(Ok(Ok(()))) | Err(_) => {}
        }
        if failed_on_its_own {
            anyhow::bail!("a component stopped on its own (the log above says which)");
        }
        Ok(())
    }
}
