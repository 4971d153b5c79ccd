//! Server leases (spec §6.1, §6.2): each proxy-server keeps a Lease named
//! `konnectivity-proxy-server-<server-id>` renewed every 15 s with a 30 s duration and
//! garbage-collects expired ones; agents count the valid leases to learn how many
//! servers exist.
use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Api;
use kube::api::{DeleteParams, ListParams, PostParams, Preconditions};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::Client;

/// Lease duration written by servers.
pub const LEASE_DURATION_SECONDS: i32 = 30;
/// How often a server renews its lease and collects expired ones.
pub const RENEW_INTERVAL: Duration = Duration::from_secs(15);

/// The lease name of a server.
pub fn lease_name(server_id: &str) -> String {
    format!("konnectivity-proxy-server-{server_id}")
}

/// Whether a lease is still valid at `now`: (renewTime, else acquireTime) +
/// leaseDurationSeconds > now. A lease with no time at all is expired.
pub fn is_valid(lease: &Lease, now: Timestamp) -> bool {
    let Some(spec) = &lease.spec else {
        return false;
    };
    let Some(t) = spec.renew_time.as_ref().or(spec.acquire_time.as_ref()) else {
        return false;
    };
    let dur = SignedDuration::from_secs(i64::from(spec.lease_duration_seconds.unwrap_or(0)));
    t.0.checked_add(dur).is_ok_and(|end| end > now)
}

/// Formats labels as a selector `k1=v1,k2=v2` (sorted, as upstream).
pub fn selector(labels: &BTreeMap<String, String>) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// The server side: heartbeat and garbage collection.
#[derive(Clone)]
pub struct LeaseController {
    api: Api<Lease>,
    server_id: String,
    labels: BTreeMap<String, String>,
    events: Option<std::sync::Arc<dyn LeaseEvents>>,
}

debug_fields!(LeaseController { server_id } finish);

impl LeaseController {
    /// A controller for `server_id`'s lease in `namespace`, labelled with `labels`.
    pub fn new(
        client: Client,
        namespace: &str,
        server_id: &str,
        labels: BTreeMap<String, String>,
    ) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            server_id: server_id.to_owned(),
            labels,
            events: None,
        }
    }

    fn desired(&self, existing: Option<Lease>) -> Lease {
        let mut lease = existing.unwrap_or_default();
        lease.metadata.name = Some(lease_name(&self.server_id));
        lease.metadata.labels = Some(self.labels.clone());
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        spec.holder_identity = Some(self.server_id.clone());
        spec.lease_duration_seconds = Some(LEASE_DURATION_SECONDS);
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        lease
    }

    /// Creates or renews the lease once.
    pub async fn renew(&self) -> Result<(), kube::Error> {
        let name = lease_name(&self.server_id);
        match self.api.get_opt(&name).await? {
            None => {
                let mut l = self.desired(None);
                l.metadata = ObjectMeta {
                    name: Some(name),
                    labels: Some(self.labels.clone()),
                    ..Default::default()
                };
                self.api.create(&PostParams::default(), &l).await?;
            }
            Some(existing) => {
                let l = self.desired(Some(existing));
                self.api.replace(&name, &PostParams::default(), &l).await?;
            }
        }
        Ok(())
    }

    /// Reports the controller's API calls to `events` (the server's metrics).
    pub fn with_events(mut self, events: std::sync::Arc<dyn LeaseEvents>) -> Self {
        self.events = Some(events);
        self
    }

    /// Deletes expired leases carrying our labels. Returns how many were deleted.
    pub async fn collect_garbage(&self) -> Result<usize, kube::Error> {
        let started = std::time::Instant::now();
        let listed = self
            .api
            .list(&ListParams::default().labels(&selector(&self.labels)))
            .await;
        if let Some(ev) = &self.events {
            ev.listed(answered(&listed), started.elapsed());
        }
        let list = listed?;
        let now = Timestamp::now();
        let mut culled = 0;
        for l in list.items {
            if is_valid(&l, now) {
                continue;
            }
            let Some(name) = l.metadata.name.clone() else {
                continue;
            };
            let dp = DeleteParams {
                preconditions: Some(Preconditions {
                    resource_version: l.metadata.resource_version.clone(),
                    uid: None,
                }),
                ..Default::default()
            };
            let started = std::time::Instant::now();
            let deleted = self.api.delete(&name, &dp).await;
            if let Some(ev) = &self.events {
                ev.deleted(answered(&deleted), started.elapsed());
                if deleted.is_ok() {
                    ev.culled();
                }
            }
            match deleted {
                Ok(_) => culled += 1,
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => warn!(lease = %name, error = %e, "deleting an expired lease failed"),
            }
        }
        Ok(culled)
    }

    /// Renews and collects every [`RENEW_INTERVAL`] until `stop`, then deletes our lease.
    pub async fn run(self, stop: CancellationToken) {
        loop {
            if let Err(e) = self.renew().await {
                warn!(error = %e, "renewing the server lease failed");
            }
            match self.collect_garbage().await {
                Ok(n) if n > 0 => info!(culled = n, "deleted expired server leases"),
                Ok(_) => {}
                Err(e) => warn!(error = %e, "listing server leases failed"),
            }
            tokio::select! {
                _ = tokio::time::sleep(RENEW_INTERVAL) => {}
                _ = stop.cancelled() => break,
            }
        }
        let name = lease_name(&self.server_id);
        match self.api.delete(&name, &DeleteParams::default()).await {
            Ok(_) => debug!(lease = %name, "deleted our lease"),
            Err(e) => warn!(lease = %name, error = %e, "deleting our lease on shutdown failed"),
        }
    }
}

/// What the lease controller's API calls answered, for the server's metrics
/// (`lease_list_*`, `lease_delete_*`, `culled_leases_count`). A status is the HTTP code
/// and the `Status` reason (`200, ""` on success); `None` when the call failed before
/// the API server answered, which upstream does not count.
pub trait LeaseEvents: Send + Sync {
    /// A garbage-collection list call.
    fn listed(&self, status: Option<(u16, String)>, took: Duration);
    /// A delete of an expired lease.
    fn deleted(&self, status: Option<(u16, String)>, took: Duration);
    /// An expired lease was deleted.
    fn culled(&self);
}

/// The status of an API call for [`LeaseEvents`].
fn answered<T>(r: &Result<T, kube::Error>) -> Option<(u16, String)> {
    match r {
        Ok(_) => Some((200, String::new())),
        Err(kube::Error::Api(s)) => Some((s.code, s.reason.clone())),
        Err(_) => None,
    }
}

/// The agent side: counts valid leases matching a label selector.
#[derive(Clone)]
pub struct LeaseCounter {
    api: Api<Lease>,
    selector: String,
}

debug_fields!(LeaseCounter { selector } finish);

impl LeaseCounter {
    /// Counts leases in `namespace` matching `selector` (Kubernetes selector syntax).
    pub fn new(client: Client, namespace: &str, selector: &str) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            selector: selector.to_owned(),
        }
    }

    /// The number of valid leases now.
    pub async fn count(&self) -> Result<usize, kube::Error> {
        self.count_with_status().await.0
    }

    /// [`Self::count`], plus what the list call answered for metrics: the HTTP status
    /// code and the `Status` reason (`200, ""` on success), or `None` when the call
    /// failed before the API server answered (connection, TLS, timeout).
    pub async fn count_with_status(&self) -> (Result<usize, kube::Error>, Option<(u16, String)>) {
        let r = self.list_valid().await;
        let status = answered(&r);
        (r, status)
    }

    async fn list_valid(&self) -> Result<usize, kube::Error> {
        let lp = if self.selector.is_empty() {
            ListParams::default()
        } else {
            ListParams::default().labels(&self.selector)
        };
        let list = self.api.list(&lp).await?;
        let now = Timestamp::now();
        Ok(list.items.iter().filter(|l| is_valid(l, now)).count())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake;

    fn lease_json(name: &str, renew: Option<Timestamp>, acquire: Option<Timestamp>) -> String {
        let t = |t: Option<Timestamp>| {
            t.map(|t| format!("\"{}\"", t.strftime("%Y-%m-%dT%H:%M:%S%.6fZ")))
                .unwrap_or("null".into())
        };
        format!(
            r#"{{"metadata":{{"name":"{name}","namespace":"kube-system","resourceVersion":"7","labels":{{"k8s-app":"konnectivity-server"}}}},"spec":{{"holderIdentity":"x","leaseDurationSeconds":30,"renewTime":{},"acquireTime":{}}}}}"#,
            t(renew),
            t(acquire)
        )
    }

    /// A lease last renewed `ago` seconds ago.
    fn renewed(name: &str, ago: i64) -> String {
        let at = Timestamp::now() - SignedDuration::from_secs(ago);
        lease_json(name, Some(at), None)
    }

    /// A LeaseList response holding `items` (each from [`lease_json`]).
    fn lease_list(items: &[String]) -> String {
        format!(
            r#"{{"apiVersion":"coordination.k8s.io/v1","kind":"LeaseList","metadata":{{}},"items":[{}]}}"#,
            items.join(",")
        )
    }

    #[test]
    fn lease_validity_follows_renew_then_acquire_time() {
        let now = Timestamp::now();
        let parse = |s: String| serde_json::from_str::<Lease>(&s).unwrap();
        let fresh = now - SignedDuration::from_secs(5);
        let old = now - SignedDuration::from_secs(60);
        assert!(
            is_valid(&parse(lease_json("a", None, Some(fresh))), now),
            "acquired-only fresh"
        );
        assert!(
            is_valid(&parse(lease_json("a", Some(fresh), None)), now),
            "renewed fresh"
        );
        assert!(
            !is_valid(&parse(lease_json("a", None, None)), now),
            "no times"
        );
        assert!(
            !is_valid(&parse(lease_json("a", Some(old), Some(fresh))), now),
            "renew time wins and is old"
        );
    }

    #[tokio::test]
    async fn garbage_collection_deletes_only_expired_leases_with_a_precondition() {
        let dir = tempfile::tempdir().unwrap();
        let list = lease_list(&[
            renewed("konnectivity-proxy-server-live", 0),
            renewed("konnectivity-proxy-server-dead", 300),
        ]);
        let (client, seen) = fake::client(
            vec![
                (200, list),
                (200, r#"{"kind":"Status","status":"Success"}"#.into()),
            ],
            dir.path(),
        )
        .await;
        let labels = BTreeMap::from([("k8s-app".to_owned(), "konnectivity-server".to_owned())]);
        #[derive(Default)]
        struct Seen(std::sync::Mutex<Vec<String>>);
        impl LeaseEvents for Seen {
            fn listed(&self, status: Option<(u16, String)>, _: Duration) {
                self.0.lock().unwrap().push(format!("list {status:?}"));
            }
            fn deleted(&self, status: Option<(u16, String)>, _: Duration) {
                self.0.lock().unwrap().push(format!("delete {status:?}"));
            }
            fn culled(&self) {
                self.0.lock().unwrap().push("culled".into());
            }
        }
        let events = std::sync::Arc::new(Seen::default());
        let c =
            LeaseController::new(client, "kube-system", "me", labels).with_events(events.clone());
        assert_eq!(c.collect_garbage().await.unwrap(), 1);
        assert_eq!(
            *events.0.lock().unwrap(),
            [
                "list Some((200, \"\"))".to_owned(),
                "delete Some((200, \"\"))".to_owned(),
                "culled".to_owned()
            ]
        );
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 2);
        fake::assert_has(&seen[0].1, "labelSelector=k8s-app%3Dkonnectivity-server");
        assert_eq!(seen[1].0, "DELETE");
        fake::assert_has(
            &seen[1].1,
            "/namespaces/kube-system/leases/konnectivity-proxy-server-dead",
        );
        fake::assert_has(&seen[1].2, "\"resourceVersion\":\"7\"");
    }

    #[tokio::test]
    async fn renew_creates_a_missing_lease_with_upstreams_shape() {
        let dir = tempfile::tempdir().unwrap();
        let notfound = r#"{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"NotFound","code":404}"#.to_owned();
        let created = lease_json("konnectivity-proxy-server-me", Some(Timestamp::now()), None);
        let (client, seen) = fake::client(vec![(404, notfound), (201, created)], dir.path()).await;
        let labels = BTreeMap::from([("k8s-app".to_owned(), "konnectivity-server".to_owned())]);
        LeaseController::new(client, "kube-system", "me", labels)
            .renew()
            .await
            .unwrap();
        let seen = seen.lock().unwrap();
        assert_eq!(seen[1].0, "POST");
        let body: serde_json::Value = serde_json::from_str(&seen[1].2).unwrap();
        assert_eq!(body["metadata"]["name"], "konnectivity-proxy-server-me");
        assert_eq!(body["metadata"]["labels"]["k8s-app"], "konnectivity-server");
        assert_eq!(body["spec"]["holderIdentity"], "me");
        assert_eq!(body["spec"]["leaseDurationSeconds"], 30);
        assert!(body["spec"]["renewTime"].is_string());
    }

    #[tokio::test]
    async fn the_agent_counts_only_valid_leases() {
        let dir = tempfile::tempdir().unwrap();
        let list = lease_list(&[
            renewed("a", 0),
            lease_json("b", None, Some(Timestamp::now())),
            renewed("c", 300),
        ]);
        let (client, _) = fake::client(vec![(200, list)], dir.path()).await;
        assert_eq!(
            LeaseCounter::new(client, "kube-system", "k8s-app=konnectivity-server")
                .count()
                .await
                .unwrap(),
            2
        );
    }

    #[tokio::test]
    async fn a_refused_lease_list_reports_the_api_status_for_metrics() {
        let dir = tempfile::tempdir().unwrap();
        let now = Timestamp::now();
        let list = lease_list(&[lease_json("a", Some(now), None)]);
        let forbidden = r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"leases.coordination.k8s.io is forbidden","reason":"Forbidden","code":403}"#;
        let (client, _) =
            fake::client(vec![(200, list), (403, forbidden.into())], dir.path()).await;
        let c = LeaseCounter::new(client, "kube-system", "k8s-app=konnectivity-server");
        let (n, status) = c.count_with_status().await;
        assert_eq!(n.unwrap(), 1);
        assert_eq!(status, Some((200, String::new())));
        let (n, status) = c.count_with_status().await;
        assert!(n.is_err());
        assert_eq!(status, Some((403, "Forbidden".to_owned())));
    }
}
