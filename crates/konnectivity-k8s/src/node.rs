//! The agent's own Node object (`--node-name`): its pod CIDRs (`spec.podCIDRs`, else
//! `spec.podCIDR`), read once at start-up and then followed with a watch on that one
//! Node, so an agent on a kubenet-style node can announce `cidr=` identifiers for the
//! pods only it can reach, and re-announce them when the Node is re-registered.
//!
//! One watch per agent (a field selector on `metadata.name`), not a poll: thousands of
//! agents polling would load the API server. A watch that ends or fails is re-established
//! from a fresh GET after a bounded, growing pause (1 s doubling to 30 s).
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::api::{WatchEvent, WatchParams};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::{Client, K8sError};

/// The first pause after a failed GET or a watch that ended with an error.
const RETRY_FIRST: Duration = Duration::from_secs(1);
/// The longest pause between attempts.
const RETRY_CAP: Duration = Duration::from_secs(30);
/// How long one watch request lasts before the API server ends it (it is re-issued).
const WATCH_SECONDS: u32 = 290;

/// A Node's pod CIDRs: `spec.podCIDRs` (dual-stack), else the single `spec.podCIDR`;
/// empty when neither is set (not yet allocated, or not a kubenet-style cluster).
pub fn pod_cidrs(node: &Node) -> Vec<String> {
    let Some(spec) = &node.spec else {
        return Vec::new();
    };
    match (&spec.pod_cidrs, &spec.pod_cidr) {
        (Some(list), _) if !list.is_empty() => list.clone(),
        (_, Some(one)) if !one.is_empty() => vec![one.clone()],
        _ => Vec::new(),
    }
}

/// Follows one Node's pod CIDRs.
#[derive(Clone)]
pub struct NodeCidrs {
    api: Api<Node>,
    name: String,
}

debug_fields!(NodeCidrs { name } finish_non_exhaustive);

impl NodeCidrs {
    /// The Node named `name` (cluster-scoped; the caller needs `get` and `watch` on
    /// `nodes`).
    pub fn new(client: Client, name: &str) -> Self {
        NodeCidrs {
            api: Api::all(client),
            name: name.to_owned(),
        }
    }

    /// Its pod CIDRs now, and the resource version they were read at.
    pub async fn get(&self) -> Result<(Vec<String>, String), K8sError> {
        let node = self.api.get(&self.name).await?;
        let version = node.metadata.resource_version.clone().unwrap_or_default();
        Ok((pod_cidrs(&node), version))
    }

    /// Calls `on_change` with the pod CIDRs after every GET and every watch event
    /// about the Node (the caller ignores repeats), until `stop`.
    pub async fn follow(&self, on_change: impl Fn(Vec<String>), stop: CancellationToken) {
        let mut pause = RETRY_FIRST;
        loop {
            let ended = tokio::select! {
                r = self.get_and_watch(&on_change, &mut pause) => r,
                _ = stop.cancelled() => return,
            };
            match ended {
                // The API server ended the watch (its timeout): watch again at once.
                Ok(()) => {
                    pause = RETRY_FIRST;
                    continue;
                }
                Err(e) => {
                    warn!(node = %self.name, error = %e, retry_in = ?pause, "following the Node's pod CIDRs failed")
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = stop.cancelled() => return,
            }
            pause = (pause * 2).min(RETRY_CAP);
        }
    }

    /// One GET (a Node that does not exist has no pod CIDRs), then one watch until it
    /// ends. The watch starts at resource version "0" (the API server's current state,
    /// replayed as ADDED), not at the object's own version: that one is older than the
    /// watch cache after an API server restart, which answers 410 Gone. A watch event
    /// resets `pause`: failures while the API server was warming up do not slow the
    /// recovery from a later one, and an error on every watch still backs off.
    async fn get_and_watch(
        &self,
        on_change: &impl Fn(Vec<String>),
        pause: &mut Duration,
    ) -> Result<(), K8sError> {
        match self.get().await {
            Ok((cidrs, _)) => on_change(cidrs),
            Err(K8sError::Api(kube::Error::Api(s))) if s.code == 404 => {
                debug!(node = %self.name, "no such Node (yet): no pod CIDRs");
                on_change(Vec::new());
            }
            Err(e) => return Err(e),
        }
        let params = WatchParams::default()
            .fields(&format!("metadata.name={}", self.name))
            .timeout(WATCH_SECONDS);
        let mut events = self.api.watch(&params, "0").await?.boxed();
        while let Some(event) = events.next().await {
            match event? {
                WatchEvent::Added(n) | WatchEvent::Modified(n) => {
                    *pause = RETRY_FIRST;
                    on_change(pod_cidrs(&n))
                }
                WatchEvent::Deleted(_) => {
                    *pause = RETRY_FIRST;
                    on_change(Vec::new())
                }
                WatchEvent::Bookmark(_) => *pause = RETRY_FIRST,
                // 410 Gone (version too old) and the like: start over from a GET.
                WatchEvent::Error(e) => {
                    debug!(node = %self.name, error = %e, "watch error; reading the Node again");
                    return Err(K8sError::Api(kube::Error::Api(e)));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(json: &str) -> Node {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn pod_cidrs_prefer_the_dual_stack_list_and_fall_back_to_the_single_field() {
        let n = node(
            r#"{"metadata":{"name":"n"},"spec":{"podCIDR":"10.244.1.0/24","podCIDRs":["10.244.1.0/24","fd00:1::/64"]}}"#,
        );
        assert_eq!(pod_cidrs(&n), ["10.244.1.0/24", "fd00:1::/64"]);
        let n = node(r#"{"metadata":{"name":"n"},"spec":{"podCIDR":"10.244.2.0/24"}}"#);
        assert_eq!(pod_cidrs(&n), ["10.244.2.0/24"]);
        let n = node(r#"{"metadata":{"name":"n"},"spec":{}}"#);
        assert!(pod_cidrs(&n).is_empty());
        let n = node(r#"{"metadata":{"name":"n"}}"#);
        assert!(pod_cidrs(&n).is_empty());
    }

    /// Runs `follow` until it reported `n` times (at most 2 s), then stops it; what it
    /// reported.
    async fn follow_until(cidrs: NodeCidrs, n: usize) -> Vec<Vec<String>> {
        let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        let task = {
            let got = got.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                cidrs
                    .follow(move |c| got.lock().unwrap().push(c), stop)
                    .await
            })
        };
        for _ in 0..200 {
            if got.lock().unwrap().len() >= n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        stop.cancel();
        task.await.unwrap();
        got.lock().unwrap().clone()
    }

    #[tokio::test]
    async fn a_node_that_does_not_exist_has_no_pod_cidrs() {
        let dir = tempfile::tempdir().unwrap();
        let missing = r#"{"kind":"Status","apiVersion":"v1","status":"Failure","message":"nodes \"gone\" not found","reason":"NotFound","code":404}"#;
        let (client, _) = crate::fake::client(
            vec![(404, missing.into()), (200, String::new())],
            dir.path(),
        )
        .await;
        let cidrs = NodeCidrs::new(client, "gone");
        let got = follow_until(cidrs, 1).await;
        assert_eq!(got.first(), Some(&Vec::new()));
    }

    #[tokio::test]
    async fn follow_reports_the_cidrs_of_the_get_then_of_each_watch_event() {
        let dir = tempfile::tempdir().unwrap();
        let get = r#"{"apiVersion":"v1","kind":"Node","metadata":{"name":"node-2","resourceVersion":"41"},"spec":{"podCIDR":"10.244.2.0/24"}}"#;
        let watch = concat!(
            r#"{"type":"MODIFIED","object":{"apiVersion":"v1","kind":"Node","metadata":{"name":"node-2","resourceVersion":"42"},"spec":{"podCIDR":"10.244.7.0/24","podCIDRs":["10.244.7.0/24"]}}}"#,
            "\n"
        );
        let (client, seen) =
            crate::fake::client(vec![(200, get.into()), (200, watch.into())], dir.path()).await;
        let cidrs = NodeCidrs::new(client, "node-2");
        let got = follow_until(cidrs, 2).await;
        assert_eq!(got[0], ["10.244.2.0/24"], "{got:?}");
        assert_eq!(got[1], ["10.244.7.0/24"], "{got:?}");
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen[0].1, "/api/v1/nodes/node-2");
        assert!(
            seen[1].1.starts_with("/api/v1/nodes?")
                && seen[1].1.contains("watch=true")
                && seen[1].1.contains("resourceVersion=0")
                && seen[1].1.contains("fieldSelector=metadata.name%3Dnode-2"),
            "{:?}",
            seen[1]
        );
    }
}
