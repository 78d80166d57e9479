//! A JWKS cache: keys by `kid`, refreshed on a timer, re-fetched when a token names an unknown
//! `kid` (key rotation) but at most once per `min_refetch`, so a flood of made-up `kid`s cannot
//! hammer the identity provider.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use jsonwebtoken::DecodingKey;
use jsonwebtoken::jwk::JwkSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::metrics::Metrics;

pub struct Jwks {
    url: String,
    client: reqwest::Client,
    keys: ArcSwap<HashMap<String, Arc<DecodingKey>>>,
    /// When the last fetch started; held while fetching so concurrent misses wait for it.
    last_fetch: tokio::sync::Mutex<Option<Instant>>,
    min_refetch: Duration,
    refresh: Duration,
    metrics: Arc<Metrics>,
}

impl Jwks {
    pub fn new(url: &str, timeout: Duration, min_refetch: Duration, refresh: Duration, metrics: Arc<Metrics>) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder().timeout(timeout).connect_timeout(timeout).build()?;
        Ok(Self {
            url: url.to_owned(),
            client,
            keys: ArcSwap::from_pointee(HashMap::new()),
            last_fetch: tokio::sync::Mutex::new(None),
            min_refetch,
            refresh,
            metrics,
        })
    }

    /// The key for `kid`, fetching the JWKS again if it is unknown and the rate limit allows.
    pub async fn key(&self, kid: &str) -> Option<Arc<DecodingKey>> {
        if let Some(k) = self.keys.load().get(kid) {
            return Some(k.clone());
        }
        let mut last = self.last_fetch.lock().await;
        // Another caller may have fetched while this one waited.
        if let Some(k) = self.keys.load().get(kid) {
            return Some(k.clone());
        }
        if last.is_none_or(|t| t.elapsed() >= self.min_refetch) {
            *last = Some(Instant::now());
            self.fetch().await;
        }
        self.keys.load().get(kid).cloned()
    }

    pub async fn refresh_forever(self: Arc<Self>, cancel: CancellationToken) {
        loop {
            {
                let mut last = self.last_fetch.lock().await;
                *last = Some(Instant::now());
                self.fetch().await;
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(self.refresh) => {}
            }
        }
    }

    async fn fetch(&self) {
        let result = async {
            let set: JwkSet = self.client.get(&self.url).send().await?.error_for_status()?.json().await?;
            Ok::<_, reqwest::Error>(set)
        }
        .await;
        match result {
            Ok(set) => {
                let keys: HashMap<String, Arc<DecodingKey>> = set
                    .keys
                    .iter()
                    .filter_map(|jwk| {
                        let kid = jwk.common.key_id.clone()?;
                        match DecodingKey::from_jwk(jwk) {
                            Ok(k) => Some((kid, Arc::new(k))),
                            Err(e) => {
                                warn!(kid, error = %e, "Ignored a JWKS key herald cannot use.");
                                None
                            }
                        }
                    })
                    .collect();
                info!(keys = keys.len(), "JWKS fetched.");
                self.keys.store(Arc::new(keys));
                self.count(true);
            }
            Err(e) => {
                warn!(error = %e, "JWKS fetch failed; keeping the keys already known.");
                self.count(false);
            }
        }
    }

    fn count(&self, ok: bool) {
        self.metrics.jwks_fetch(ok);
    }
}
