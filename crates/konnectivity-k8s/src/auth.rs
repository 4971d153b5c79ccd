//! ServiceAccount token authentication of agents (spec §7.2), via TokenReview.
//!
//! Upstream reviews every token on every connection attempt; after a control-plane
//! restart thousands of agents reconnect at once and the reviews throttle the API
//! server (upstream #237). Successful reviews are cached here for a short time, keyed
//! by the SHA-256 of the token (the token itself is never stored or logged). Failed
//! reviews are never cached.
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::Api;
use kube::api::PostParams;
use tokio::time::Instant;

use crate::Client;

/// Who an agent must be.
#[derive(Debug, Clone)]
pub struct Expectation {
    /// `--agent-namespace`.
    pub namespace: String,
    /// `--agent-service-account`.
    pub service_account: String,
    /// `--authentication-audience`.
    pub audience: String,
}

/// Authenticates agents' bearer tokens.
pub struct TokenAuthenticator {
    client: Client,
    want: Expectation,
    ttl: Duration,
    /// Successful reviews: token hash → when the entry expires.
    cache: Mutex<HashMap<[u8; 32], Instant>>,
}

impl std::fmt::Debug for TokenAuthenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenAuthenticator")
            .field("want", &self.want)
            .field("ttl", &self.ttl)
            .finish()
    }
}

fn digest(token: &str) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Bound on cached entries (an attacker with many valid tokens cannot grow it forever).
const MAX_CACHE: usize = 100_000;

impl TokenAuthenticator {
    /// An authenticator; `ttl` zero disables the cache.
    pub fn new(client: Client, want: Expectation, ttl: Duration) -> Self {
        Self {
            client,
            want,
            ttl,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// Checks the `authorization` metadata values of an agent stream. The error text is
    /// upstream's, wrapped as `Failed to validate authentication token, err:<…>`.
    pub async fn authenticate(&self, authorization: &[String]) -> Result<(), String> {
        self.check(authorization)
            .await
            .map_err(|e| format!("Failed to validate authentication token, err:{e}"))
    }

    async fn check(&self, authorization: &[String]) -> Result<(), String> {
        let token = match authorization {
            [] => return Err("Authentication context was not found in metadata".into()),
            [one] => one,
            many => return Err(format!("too many ({}) tokens are received", many.len())),
        };
        let Some(token) = token.strip_prefix("Bearer ") else {
            return Err("received token does not have \"Bearer \" prefix".into());
        };
        let key = digest(token);
        if self.ttl > Duration::ZERO {
            let now = Instant::now();
            let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            match cache.get(&key) {
                Some(exp) if *exp > now => return Ok(()),
                Some(_) => {
                    cache.remove(&key);
                }
                None => {}
            }
        }
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_owned()),
                audiences: Some(vec![self.want.audience.clone()]),
            },
            ..Default::default()
        };
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let got = api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| e.to_string())?;
        let status = got.status.unwrap_or_default();
        if let Some(e) = status.error.filter(|e| !e.is_empty()) {
            return Err(format!("lookup failed: {e}"));
        }
        if status.authenticated != Some(true) {
            return Err("lookup failed: service account jwt not valid".into());
        }
        let username = status.user.and_then(|u| u.username).unwrap_or_default();
        let parts: Vec<&str> = username.split(':').collect();
        if parts.len() != 4 {
            return Err("lookup failed: unexpected username format".into());
        }
        if parts[0] != "system" || parts[1] != "serviceaccount" {
            return Err(format!(
                "lookup failed: {username} is not a service account"
            ));
        }
        if parts[2] != self.want.namespace {
            return Err(format!(
                "lookup failed: incoming request from {:?} namespace. Expected {:?}",
                parts[2], self.want.namespace
            ));
        }
        if parts[3] != self.want.service_account {
            return Err(format!(
                "lookup failed: incoming request from {:?} service account. Expected {:?}",
                parts[3], self.want.service_account
            ));
        }
        if self.ttl > Duration::ZERO {
            let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            if cache.len() >= MAX_CACHE {
                cache.retain(|_, exp| *exp > now);
            }
            if cache.len() < MAX_CACHE {
                cache.insert(key, now + self.ttl);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake;

    fn review(authenticated: bool, user: &str) -> (u16, String) {
        (
            201,
            format!(
                r#"{{"apiVersion":"authentication.k8s.io/v1","kind":"TokenReview","spec":{{}},"status":{{"authenticated":{authenticated},"user":{{"username":"{user}"}}}}}}"#
            ),
        )
    }

    async fn authn(
        responses: Vec<(u16, String)>,
        ttl: Duration,
    ) -> (TokenAuthenticator, fake::Seen, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let (client, seen) = fake::client(responses, dir.path()).await;
        let want = Expectation {
            namespace: "kube-system".into(),
            service_account: "konnectivity-agent".into(),
            audience: "system:konnectivity-server".into(),
        };
        (TokenAuthenticator::new(client, want, ttl), seen, dir)
    }

    #[tokio::test]
    async fn a_valid_token_is_reviewed_once_and_then_served_from_the_cache() {
        let ok = review(true, "system:serviceaccount:kube-system:konnectivity-agent");
        let (a, seen, _d) = authn(vec![ok.clone(), ok], Duration::from_secs(60)).await;
        let hdr = vec!["Bearer tok".to_owned()];
        a.authenticate(&hdr).await.unwrap();
        a.authenticate(&hdr).await.unwrap();
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 1, "the second check must come from the cache");
        assert_eq!(seen[0].0, "POST");
        assert!(
            seen[0]
                .1
                .starts_with("/apis/authentication.k8s.io/v1/tokenreviews"),
            "{}",
            seen[0].1
        );
        fake::assert_has(&seen[0].2, "\"token\":\"tok\"");
        fake::assert_has(&seen[0].2, "system:konnectivity-server");
    }

    #[tokio::test]
    async fn rejections_use_upstreams_messages_and_are_not_cached() {
        let (a, seen, _d) = authn(
            vec![
                review(false, ""),
                review(true, "system:serviceaccount:default:konnectivity-agent"),
                review(true, "system:serviceaccount:kube-system:other"),
                review(true, "alice"),
            ],
            Duration::from_secs(60),
        )
        .await;
        let hdr = vec!["Bearer tok".to_owned()];
        let e = a.authenticate(&hdr).await.unwrap_err();
        assert_eq!(
            e,
            "Failed to validate authentication token, err:lookup failed: service account jwt not valid"
        );
        let e = a.authenticate(&hdr).await.unwrap_err();
        assert!(
            e.ends_with("incoming request from \"default\" namespace. Expected \"kube-system\""),
            "{e}"
        );
        let e = a.authenticate(&hdr).await.unwrap_err();
        assert!(
            e.ends_with(
                "incoming request from \"other\" service account. Expected \"konnectivity-agent\""
            ),
            "{e}"
        );
        let e = a.authenticate(&hdr).await.unwrap_err();
        assert!(
            e.ends_with("lookup failed: unexpected username format"),
            "{e}"
        );
        assert_eq!(seen.lock().unwrap().len(), 4);
        let e = a.authenticate(&[]).await.unwrap_err();
        assert!(e.ends_with("Authentication context was not found in metadata"));
        let e = a.authenticate(&["tok".into()]).await.unwrap_err();
        assert!(e.ends_with("received token does not have \"Bearer \" prefix"));
        let e = a
            .authenticate(&["Bearer a".into(), "Bearer b".into()])
            .await
            .unwrap_err();
        assert!(e.ends_with("too many (2) tokens are received"));
    }
}
