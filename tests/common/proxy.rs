//! A load balancer without affinity, as a Kubernetes Service without `sessionAffinity` is: each
//! TCP connection goes to the next instance in turn, whatever request it carries.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

pub struct RoundRobin {
    pub addr: SocketAddr,
    /// Connections handed to each instance, in the order given.
    pub per_instance: Arc<Vec<AtomicUsize>>,
    accept: JoinHandle<()>,
}

impl RoundRobin {
    pub async fn start(instances: Vec<SocketAddr>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let per_instance: Arc<Vec<AtomicUsize>> = Arc::new(instances.iter().map(|_| AtomicUsize::new(0)).collect());
        let counts = per_instance.clone();
        let accept = tokio::spawn(async move {
            let mut next = 0usize;
            while let Ok((mut client, _)) = listener.accept().await {
                let i = next % instances.len();
                next += 1;
                counts[i].fetch_add(1, Ordering::Relaxed);
                let instance = instances[i];
                tokio::spawn(async move {
                    if let Ok(mut upstream) = TcpStream::connect(instance).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                    }
                });
            }
        });
        RoundRobin { addr, per_instance, accept }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Connections each instance was given.
    pub fn counts(&self) -> Vec<usize> {
        self.per_instance.iter().map(|c| c.load(Ordering::Relaxed)).collect()
    }
}

impl Drop for RoundRobin {
    fn drop(&mut self) {
        self.accept.abort();
    }
}
