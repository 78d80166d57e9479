//! The embedded Kafka-protocol broker: librdkafka's mock cluster, served on a stable address.
//!
//! For trying herald on one machine without installing Kafka; not for production (it keeps
//! records in memory and forgets them on exit). The mock cluster binds a random port, so a small
//! TCP relay listens on the configured address and the cluster advertises that address in its
//! metadata: every client connects through the relay, whatever port the mock really has.

// librdkafka's C API through rdkafka-sys: rdkafka's safe `MockCluster` cannot advertise another
// address than the one it binds, nor drop the 3 s delay before a consumer group forms.
#![allow(unsafe_code)]

use std::ffi::{CStr, CString};
use std::net::SocketAddr;
use std::sync::mpsc as std_mpsc;
use std::thread::JoinHandle;

use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseProducer, Producer};
use rdkafka_sys as rdsys;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::debug;

/// A running embedded broker. Dropping it stops the broker.
pub struct EmbeddedBroker {
    address: SocketAddr,
    /// Commands for the broker's thread; dropping it stops the broker.
    control: Option<std_mpsc::Sender<Control>>,
    thread: Option<JoinHandle<()>>,
    relay_cancel: CancellationToken,
}

impl EmbeddedBroker {
    /// Starts the broker with `topics` created (each with `partitions`), reachable on `listen`
    /// (port 0 picks a free one).
    pub async fn start(listen: SocketAddr, topics: &[String], partitions: i32) -> anyhow::Result<Self> {
        let listener =
            TcpListener::bind(listen).await.map_err(|e| anyhow::anyhow!("kafka.embedded.listen: cannot listen on {listen}: {e}"))?;
        let address = listener.local_addr()?;
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let (control_tx, control_rx) = std_mpsc::channel();
        let topics = topics.to_vec();
        // The mock cluster is not Send: it lives and dies on its own thread.
        let thread = std::thread::Builder::new().name("herald-embedded-kafka".into()).spawn(move || {
            let result = MockBroker::new(address, &topics, partitions);
            match result {
                Ok(broker) => {
                    let _ = ready_tx.send(Ok(broker.inner_address));
                    while let Ok(control) = control_rx.recv() {
                        match control {
                            Control::SetUp(up) => broker.set_up(up),
                            Control::RefuseProduce(n) => broker.refuse_produce(n),
                        }
                    }
                    drop(broker);
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
            }
        })?;
        let inner = ready_rx.await.map_err(|_| anyhow::anyhow!("embedded broker thread died"))??;
        let relay_cancel = CancellationToken::new();
        tokio::spawn(relay(listener, inner, relay_cancel.clone()));
        Ok(Self { address, control: Some(control_tx), thread: Some(thread), relay_cancel })
    }

    /// Takes the broker down (connections refused and closed) or brings it back, as a broker
    /// restart would; for fault tests.
    pub fn set_up(&self, up: bool) {
        if let Some(c) = &self.control {
            let _ = c.send(Control::SetUp(up));
        }
    }

    /// Refuses the next `n` produce requests, whatever their topic, as a broker does a topic the
    /// client may not write to (a permanent error, not retried by the client); for fault tests.
    pub fn refuse_produce(&self, n: usize) {
        if let Some(c) = &self.control {
            let _ = c.send(Control::RefuseProduce(n));
        }
    }

    /// The address clients bootstrap from.
    pub fn address(&self) -> SocketAddr {
        self.address
    }
}

impl Drop for EmbeddedBroker {
    fn drop(&mut self) {
        self.relay_cancel.cancel();
        drop(self.control.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

enum Control {
    SetUp(bool),
    RefuseProduce(usize),
}

/// Owns the librdkafka handle that owns the mock cluster.
struct MockBroker {
    _handle: BaseProducer,
    cluster: *mut rdsys::rd_kafka_mock_cluster_t,
    inner_address: SocketAddr,
}

impl MockBroker {
    fn new(advertised: SocketAddr, topics: &[String], partitions: i32) -> anyhow::Result<Self> {
        let handle: BaseProducer = ClientConfig::new().set("test.mock.num.brokers", "1").set("log_level", "3").create()?;
        // SAFETY: the pointer belongs to `handle`, which outlives every use below and is only
        // used from this thread.
        unsafe {
            let cluster = rdsys::rd_kafka_handle_mock_cluster(handle.client().native_ptr());
            anyhow::ensure!(!cluster.is_null(), "librdkafka did not create a mock cluster");
            let inner = CStr::from_ptr(rdsys::rd_kafka_mock_cluster_bootstraps(cluster)).to_str()?.to_owned();
            let inner_address: SocketAddr = inner.parse().map_err(|e| anyhow::anyhow!("mock cluster address {inner:?}: {e}"))?;
            // Consumer groups form at once instead of after the 3 s default delay.
            rdsys::rd_kafka_mock_group_initial_rebalance_delay_ms(cluster, 0);
            for topic in topics {
                let name = CString::new(topic.as_str())?;
                let err = rdsys::rd_kafka_mock_topic_create(cluster, name.as_ptr(), partitions, 1);
                anyhow::ensure!(err == rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR, "cannot create topic {topic}: {err:?}");
            }
            let host = CString::new(advertised.ip().to_string())?;
            rdsys::rd_kafka_mock_broker_set_host_port(cluster, 1, host.as_ptr(), i32::from(advertised.port()));
            Ok(Self { _handle: handle, cluster, inner_address })
        }
    }
}

impl MockBroker {
    fn refuse_produce(&self, n: usize) {
        const PRODUCE: i16 = 0; // the Kafka protocol's ApiKey of Produce
        let errors = vec![rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED; n];
        // SAFETY: `cluster` belongs to `_handle`, alive as long as `self`, on this thread; the
        // array outlives the call, which copies it.
        unsafe { rdsys::rd_kafka_mock_push_request_errors_array(self.cluster, PRODUCE, n, errors.as_ptr()) };
    }

    fn set_up(&self, up: bool) {
        // SAFETY: `cluster` belongs to `_handle`, alive as long as `self`, on this thread.
        unsafe {
            if up {
                rdsys::rd_kafka_mock_broker_set_up(self.cluster, 1);
            } else {
                rdsys::rd_kafka_mock_broker_set_down(self.cluster, 1);
            }
        }
    }
}

async fn relay(listener: TcpListener, inner: SocketAddr, cancel: CancellationToken) {
    loop {
        let (mut client, peer) = tokio::select! {
            _ = cancel.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    debug!(error = %e, "Embedded broker relay: accept failed.");
                    continue;
                }
            },
        };
        let cancel = cancel.clone();
        tokio::spawn(async move {
            let Ok(mut broker) = TcpStream::connect(inner).await else { return };
            let _ = client.set_nodelay(true);
            let _ = broker.set_nodelay(true);
            tokio::select! {
                _ = cancel.cancelled() => {}
                r = tokio::io::copy_bidirectional(&mut client, &mut broker) => debug!(%peer, result = ?r.map(|_| ()), "Embedded broker relay connection closed."),
            }
        });
    }
}
