//! Local JWT verification: an explicit algorithm allow-list, one key per algorithm family
//! (so an HS token can never be checked against an RSA public key), and JWKS by `kid`.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use jsonwebtoken::{Algorithm, DecodingKey, Validation, errors::ErrorKind};
use serde_json::{Map, Value};
use tracing::{info, warn};

use super::identity::{AuthError, Identity, groups_from_json, user_id_from_json};
use super::jwks::Jwks;
use crate::config::Config;
use crate::metrics::Metrics;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Hmac,
    Rsa,
    Ec,
    Ed,
    /// An algorithm this build does not know: no key ever matches it.
    Unknown,
}

fn family(alg: Algorithm) -> Family {
    use Algorithm::*;
    match alg {
        HS256 | HS384 | HS512 => Family::Hmac,
        RS256 | RS384 | RS512 | PS256 | PS384 | PS512 => Family::Rsa,
        ES256 | ES384 => Family::Ec,
        EdDSA => Family::Ed,
        _ => Family::Unknown,
    }
}

pub struct JwtVerifier {
    secret: Option<DecodingKey>,
    /// The PEM public key file, reread when it changes.
    public_key: Option<Arc<KeyFile>>,
    jwks: Option<Arc<Jwks>>,
    /// The allow-list; the cryptography checks each token against its own family's part of it.
    algorithms: Vec<Algorithm>,
    /// One validation per family: jsonwebtoken requires every listed algorithm to match the key.
    validations: Vec<(Family, Validation)>,
    user_id_claim: String,
    groups_claim: Option<String>,
}

impl JwtVerifier {
    pub fn new(config: &Config, metrics: Arc<Metrics>) -> anyhow::Result<Self> {
        let jwt = &config.auth.jwt;
        let mut validation = Validation::new(*jwt.algorithms.first().unwrap_or(&Algorithm::HS256));
        validation.algorithms = jwt.algorithms.clone();
        validation.leeway = jwt.leeway_secs;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.required_spec_claims = HashSet::from(["exp".to_owned()]);
        validation.validate_aud = !jwt.audiences.is_empty();
        if !jwt.audiences.is_empty() {
            validation.set_audience(&jwt.audiences);
        }
        if !jwt.issuers.is_empty() {
            validation.set_issuer(&jwt.issuers);
        }
        let public_key = match &jwt.public_key_file {
            None => None,
            Some(file) => Some(Arc::new(KeyFile::load(config.resolve(file), metrics.clone())?)),
        };
        let jwks = jwt
            .jwks_url
            .as_ref()
            .map(|url| Jwks::new(url, jwt.jwks_timeout, jwt.jwks_min_refetch, jwt.jwks_refresh, metrics))
            .transpose()?
            .map(Arc::new);
        let mut validations: Vec<(Family, Validation)> = Vec::new();
        for alg in &jwt.algorithms {
            let f = family(*alg);
            match validations.iter_mut().find(|(vf, _)| *vf == f) {
                Some((_, v)) => v.algorithms.push(*alg),
                None => {
                    let mut v = validation.clone();
                    v.algorithms = vec![*alg];
                    validations.push((f, v));
                }
            }
        }
        Ok(Self {
            secret: jwt.secret.as_ref().map(|s| DecodingKey::from_secret(s.as_bytes())),
            public_key,
            jwks,
            algorithms: jwt.algorithms.clone(),
            validations,
            user_id_claim: jwt.user_id_claim.clone(),
            groups_claim: jwt.groups_claim.clone(),
        })
    }

    pub fn start(&self, supervisor: &crate::supervise::Supervisor) {
        if let Some(jwks) = &self.jwks {
            supervisor.spawn("jwks refresh", jwks.clone().refresh_forever(supervisor.stop_token()));
        }
    }

    pub async fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::InvalidToken)?;
        // The allow-list is checked before any key is chosen: `none` and unlisted algorithms
        // never reach the cryptography.
        if !self.algorithms.contains(&header.alg) {
            return Err(AuthError::InvalidToken);
        }
        let wanted = family(header.alg);
        let validation = self.validations.iter().find(|(f, _)| *f == wanted).map(|(_, v)| v).ok_or(AuthError::InvalidToken)?;
        let (jwks_key, file_key);
        let key = match wanted {
            Family::Hmac => self.secret.as_ref(),
            Family::Unknown => None,
            _ => match (&self.jwks, &header.kid, &self.public_key) {
                (Some(jwks), Some(kid), _) => {
                    jwks_key = jwks.key(kid).await;
                    jwks_key.as_deref()
                }
                (_, _, Some(file)) => {
                    file_key = file.key.load();
                    (file_key.0 == wanted).then_some(&file_key.1)
                }
                _ => None,
            },
        }
        .ok_or(AuthError::InvalidToken)?;
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, key, validation).map_err(|e| match e.kind() {
            ErrorKind::ExpiredSignature => AuthError::TokenExpired,
            _ => AuthError::InvalidToken,
        })?;
        let claims = data.claims;
        let user_id = claims.get(&self.user_id_claim).and_then(user_id_from_json).ok_or(AuthError::InvalidToken)?;
        // A groups claim of the wrong shape is the issuer's mistake: refused, not read as none.
        let groups = match self.groups_claim.as_ref().and_then(|c| claims.get(c)) {
            None => Vec::new(),
            Some(value) => groups_from_json(value).ok_or(AuthError::InvalidToken)?,
        };
        let (expires_at, issued_at) = (claims.get("exp").and_then(Value::as_u64), claims.get("iat").and_then(Value::as_u64));
        Ok(Identity { user_id, expires_at, issued_at, groups })
    }

    /// The key file, for the watcher.
    pub fn key_file(&self) -> Option<Arc<KeyFile>> {
        self.public_key.clone()
    }
}

/// `auth.jwt.public_key_file`: the key in use, swapped when the file holds a new one that
/// parses (a Secret rotated); until then the previous key stays.
pub struct KeyFile {
    path: PathBuf,
    key: ArcSwap<(Family, DecodingKey)>,
    /// The bytes last read (`None`: unreadable then), so a reread that finds the same says
    /// nothing, and a bad file is reported once rather than at every event.
    last_read: Mutex<Option<Vec<u8>>>,
    metrics: Arc<Metrics>,
}

impl KeyFile {
    fn load(path: PathBuf, metrics: Arc<Metrics>) -> anyhow::Result<Self> {
        let pem = std::fs::read(&path).map_err(|e| anyhow::anyhow!("auth.jwt.public_key_file: cannot read {}: {e}", path.display()))?;
        let key = parse_public_key(&pem).ok_or_else(|| {
            anyhow::anyhow!("auth.jwt.public_key_file: {} is not an RSA, EC or Ed25519 public key in PEM", path.display())
        })?;
        Ok(Self { path, key: ArcSwap::from_pointee(key), last_read: Mutex::new(Some(pem)), metrics })
    }

    /// Rereads the file: a new key that parses replaces the one in use.
    pub fn reload(&self) {
        let read = std::fs::read(&self.path);
        let mut last = self.last_read.lock().unwrap_or_else(|e| e.into_inner());
        match read {
            Err(e) => {
                if last.take().is_some() {
                    warn!(file = %self.path.display(), error = %e, "JWT public key file unreadable; the key in use stays.");
                    self.metrics.key_reloads.rejected();
                }
            }
            Ok(pem) if last.as_ref() == Some(&pem) => {}
            Ok(pem) => {
                match parse_public_key(&pem) {
                    Some(key) => {
                        self.key.store(Arc::new(key));
                        info!(file = %self.path.display(), "JWT public key reloaded.");
                        self.metrics.key_reloads.applied();
                    }
                    None => {
                        warn!(file = %self.path.display(), "JWT public key file is not an RSA, EC or Ed25519 public key in PEM; the key in use stays.");
                        self.metrics.key_reloads.rejected();
                    }
                }
                *last = Some(pem);
            }
        }
    }
}

impl crate::watch::Reloadable for KeyFile {
    fn watched_files(&self) -> Vec<PathBuf> {
        vec![self.path.clone()]
    }

    fn reload(&self) {
        KeyFile::reload(self);
    }
}

fn parse_public_key(pem: &[u8]) -> Option<(Family, DecodingKey)> {
    if let Ok(k) = DecodingKey::from_rsa_pem(pem) {
        return Some((Family::Rsa, k));
    }
    if let Ok(k) = DecodingKey::from_ec_pem(pem) {
        return Some((Family::Ec, k));
    }
    DecodingKey::from_ed_pem(pem).ok().map(|k| (Family::Ed, k))
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header, encode};
    use serde_json::json;

    fn verifier(yaml: &str) -> JwtVerifier {
        let config = Config::from_yaml(yaml, env!("CARGO_MANIFEST_DIR").into(), &|_| None).unwrap();
        JwtVerifier::new(&config, Metrics::detached()).unwrap()
    }

    fn now() -> u64 {
        jsonwebtoken::get_current_timestamp()
    }

    fn hs(claims: Value, secret: &[u8]) -> String {
        encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(secret)).unwrap()
    }

    #[tokio::test]
    async fn hmac_tokens_and_claim_rules() {
        let v = verifier("auth: {jwt: {secret: s3cret, leeway_secs: 0, issuers: [me], audiences: [app]}}");
        let ok = json!({"sub": "u42", "exp": now() + 60, "iss": "me", "aud": "app"});
        assert_eq!(v.verify(&hs(ok.clone(), b"s3cret")).await.unwrap().user_id, "u42");
        let with = |k: &str, val: Value| {
            let mut c = ok.clone();
            c[k] = val;
            hs(c, b"s3cret")
        };
        assert_eq!(v.verify(&with("iss", json!("you"))).await, Err(AuthError::InvalidToken));
        assert_eq!(v.verify(&with("aud", json!("other"))).await, Err(AuthError::InvalidToken));
        assert_eq!(v.verify(&with("exp", json!(now() - 10))).await, Err(AuthError::TokenExpired));
        assert_eq!(v.verify(&with("nbf", json!(now() + 600))).await, Err(AuthError::InvalidToken));
        assert_eq!(v.verify(&with("sub", json!(7))).await.unwrap().user_id, "7");
        assert_eq!(v.verify(&with("sub", json!(null))).await, Err(AuthError::InvalidToken));
        assert_eq!(v.verify(&hs(ok, b"wrong")).await, Err(AuthError::InvalidToken));
        assert_eq!(v.verify("garbage").await, Err(AuthError::InvalidToken));
    }

    #[tokio::test]
    async fn an_hs_token_signed_with_the_public_key_is_refused() {
        let pem = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/keys/rsa.pub.pem")).unwrap();
        let forged =
            encode(&Header::new(Algorithm::HS256), &json!({"sub": "u", "exp": now() + 60}), &EncodingKey::from_secret(&pem)).unwrap();
        let rs_only = verifier("auth: {jwt: {algorithms: [RS256], public_key_file: tests/fixtures/keys/rsa.pub.pem}}");
        assert_eq!(rs_only.verify(&forged).await, Err(AuthError::InvalidToken));
        let both = verifier("auth: {jwt: {algorithms: [HS256, RS256], secret: other, public_key_file: tests/fixtures/keys/rsa.pub.pem}}");
        assert_eq!(both.verify(&forged).await, Err(AuthError::InvalidToken));
    }

    #[tokio::test]
    async fn unsigned_tokens_are_refused() {
        let v = verifier("auth: {jwt: {secret: s}}");
        // {"alg":"none","typ":"JWT"} . {"sub":"u","exp":9999999999} . (no signature)
        let none = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJ1IiwiZXhwIjo5OTk5OTk5OTk5fQ.";
        assert_eq!(v.verify(none).await, Err(AuthError::InvalidToken));
    }
}
