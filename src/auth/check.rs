//! The user-check endpoint: asks an HTTP service whether a token's user may connect. Answers
//! are cached per token (keyed by its SHA-256, never the token itself) for a configured time.
//! 2xx admits, 401/403 refuses, anything else (timeout, connection error, 5xx) fails closed.

use std::time::Instant;

use dashmap::DashMap;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use tracing::warn;

use super::identity::{AuthError, groups_from_json, user_id_from_json};
use crate::config::CheckConfig;
use crate::metrics::Metrics;

/// Cache entries kept before expired ones are swept.
const CACHE_SWEEP_AT: usize = 10_000;

#[derive(Clone)]
enum Answer {
    Allowed(Checked),
    Denied,
}

/// What an admitting answer named.
#[derive(Debug, Clone, Default)]
pub struct Checked {
    /// The user id, if `user_id_pointer` is configured.
    pub user: Option<String>,
    /// The groups at `groups_pointer` (none if not configured or absent from the answer).
    pub groups: Vec<String>,
}

pub struct UserCheck {
    client: reqwest::Client,
    config: CheckConfig,
    method: reqwest::Method,
    cache: DashMap<[u8; 32], (Instant, Answer)>,
    metrics: Arc<Metrics>,
}

impl UserCheck {
    pub fn new(config: &CheckConfig, metrics: Arc<Metrics>) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder().timeout(config.timeout).connect_timeout(config.timeout).build()?;
        let method = if config.method == "POST" { reqwest::Method::POST } else { reqwest::Method::GET };
        Ok(Self { client, config: config.clone(), method, cache: DashMap::new(), metrics })
    }

    /// What the endpoint named, when it admits the token.
    pub async fn check(&self, token: &str) -> Result<Checked, AuthError> {
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(entry) = self.cache.get(&key)
            && entry.0 > Instant::now()
        {
            self.count("cached");
            return answer(entry.1.clone());
        }
        let fresh = self.ask(token).await?;
        if !self.config.cache_ttl.is_zero() {
            if self.cache.len() >= CACHE_SWEEP_AT {
                let now = Instant::now();
                self.cache.retain(|_, (expires, _)| *expires > now);
            }
            self.cache.insert(key, (Instant::now() + self.config.cache_ttl, fresh.clone()));
        }
        answer(fresh)
    }

    async fn ask(&self, token: &str) -> Result<Answer, AuthError> {
        let value = if self.config.scheme.is_empty() { token.to_owned() } else { format!("{} {token}", self.config.scheme) };
        let response =
            match self.client.request(self.method.clone(), &self.config.url).header(self.config.header.as_str(), value).send().await {
                Ok(r) => r,
                Err(e) => {
                    self.count("unavailable");
                    warn!(error = %without_url(&e), "User check endpoint unreachable; refusing the connection.");
                    return Err(AuthError::Unavailable);
                }
            };
        let status = response.status();
        if status.is_success() {
            if self.config.user_id_pointer.is_none() && self.config.groups_pointer.is_none() {
                self.count("allowed");
                return Ok(Answer::Allowed(Checked::default()));
            }
            let body: Value = response.json().await.map_err(|_| {
                self.count("unavailable");
                AuthError::Unavailable
            })?;
            let user = match &self.config.user_id_pointer {
                None => None,
                Some(pointer) => match body.pointer(pointer).and_then(user_id_from_json) {
                    Some(u) => Some(u),
                    None => {
                        self.count("denied");
                        return Ok(Answer::Denied);
                    }
                },
            };
            let groups = match self.config.groups_pointer.as_deref().and_then(|p| body.pointer(p)) {
                None | Some(Value::Null) => Vec::new(),
                Some(value) => groups_from_json(value).unwrap_or_else(|| {
                    warn!("The user check answered groups that are not a list of names; the socket gets none.");
                    Vec::new()
                }),
            };
            self.count("allowed");
            Ok(Answer::Allowed(Checked { user, groups }))
        } else if status.is_server_error() {
            self.count("unavailable");
            warn!(status = status.as_u16(), "User check endpoint failed; refusing the connection.");
            Err(AuthError::Unavailable)
        } else {
            self.count("denied");
            Ok(Answer::Denied)
        }
    }

    fn count(&self, result: &'static str) {
        self.metrics.auth_check(result);
    }
}

fn answer(a: Answer) -> Result<Checked, AuthError> {
    match a {
        Answer::Allowed(checked) => Ok(checked),
        Answer::Denied => Err(AuthError::Unauthorized),
    }
}

/// reqwest errors print the URL, which may carry credentials; keep only the cause.
fn without_url(e: &reqwest::Error) -> &'static str {
    if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else {
        "request failed"
    }
}
