//! The Kubernetes API as konnectivity-rs uses it (through kube-rs).
//!
//! - [`connect`]: a client from `--kubeconfig`, or the in-cluster configuration;
//! - [`auth`]: ServiceAccount token authentication of agents via TokenReview, with a
//!   short-lived cache of successful reviews (a reconnect storm of thousands of agents
//!   must not throttle the API server — upstream #237);
//! - [`lease`]: the server's Lease heartbeat and garbage collector, and the agent's
//!   count of valid server leases (spec §6.1/§6.2);
//! - [`node`]: the agent's own Node's pod CIDRs, followed with a watch (`--node-name`).
#![deny(missing_docs)]

/// `Debug` for a type holding a Kubernetes API handle: its name and the fields named
/// (the handle and callbacks are left out), ended by `finish` or `finish_non_exhaustive`.
macro_rules! debug_fields {
    ($ty:ident { $($field:ident),+ } $finish:ident) => {
        impl std::fmt::Debug for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($ty))
                    $(.field(stringify!($field), &self.$field))+
                    .$finish()
            }
        }
    };
}

pub mod auth;
pub mod lease;
pub mod node;

pub use kube::Client;

/// Errors talking to the Kubernetes API.
#[derive(Debug, thiserror::Error)]
pub enum K8sError {
    /// The kubeconfig could not be read or used.
    #[error("loading kubeconfig {path:?}: {reason}")]
    Kubeconfig {
        /// The path (empty: in-cluster).
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// An API call failed.
    #[error("{0}")]
    Api(#[from] kube::Error),
}

/// A client from `kubeconfig` (a path), or the in-cluster configuration when empty.
pub async fn connect(kubeconfig: &str) -> Result<Client, K8sError> {
    let err = |reason: String| K8sError::Kubeconfig {
        path: kubeconfig.to_owned(),
        reason,
    };
    let config = if kubeconfig.is_empty() {
        kube::Config::incluster().map_err(|e| err(e.to_string()))?
    } else {
        let kc = kube::config::Kubeconfig::read_from(kubeconfig).map_err(|e| err(e.to_string()))?;
        kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
            .await
            .map_err(|e| err(e.to_string()))?
    };
    Client::try_from(config).map_err(|e| err(e.to_string()))
}

#[cfg(test)]
pub(crate) mod fake {
    //! A recorded-response API server on loopback for unit tests: answers each request
    //! with the next canned (status, JSON body) and records what it was asked.
    use std::sync::{Arc, Mutex};

    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// One recorded request: method, path with query, body.
    pub type Seen = Arc<Mutex<Vec<(String, String, String)>>>;

    /// Starts the fake; returns a kubeconfig path for it and the request log.
    pub async fn api(responses: Vec<(u16, String)>, dir: &std::path::Path) -> (String, Seen) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let seen: Seen = Arc::default();
        let log = seen.clone();
        let responses = Arc::new(Mutex::new(responses.into_iter()));
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                let responses = responses.clone();
                let log = log.clone();
                tokio::spawn(async move {
                    let (rd, mut wr) = s.into_split();
                    let mut rd = tokio::io::BufReader::new(rd);
                    loop {
                        // The request line and the headers, through the empty line.
                        let mut head = String::new();
                        while !head.ends_with("\r\n\r\n") {
                            match rd.read_line(&mut head).await {
                                Ok(0) | Err(_) => return,
                                Ok(_) => {}
                            }
                        }
                        let len: usize = head
                            .lines()
                            .find(|l| l.to_ascii_lowercase().starts_with("content-length:"))
                            .and_then(|l| l.split(':').nth(1))
                            .and_then(|v| v.trim().parse().ok())
                            .unwrap_or(0);
                        let mut body = vec![0u8; len];
                        if rd.read_exact(&mut body).await.is_err() {
                            return;
                        }
                        let body = String::from_utf8_lossy(&body).to_string();
                        let mut first = head.lines().next().unwrap_or("").split_whitespace();
                        let method = first.next().unwrap_or("").to_owned();
                        let path = first.next().unwrap_or("").to_owned();
                        log.lock().unwrap().push((method, path, body));
                        let (status, json) = responses
                            .lock()
                            .unwrap()
                            .next()
                            .unwrap_or((500, "{}".into()));
                        let rsp = format!(
                            "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{json}",
                            json.len()
                        );
                        if wr.write_all(rsp.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        // JSON is YAML: the kubeconfig reader takes it as it is.
        let config = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "c", "cluster": {"server": format!("http://{addr}")}}],
            "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
            "current-context": "c",
            "users": [{"name": "u", "user": {"token": "test"}}],
        });
        let kc = dir.join("kubeconfig");
        std::fs::write(&kc, config.to_string()).unwrap();
        (kc.display().to_string(), seen)
    }

    /// [`api`] and a client of it.
    pub async fn client(
        responses: Vec<(u16, String)>,
        dir: &std::path::Path,
    ) -> (kube::Client, Seen) {
        let (kc, seen) = api(responses, dir).await;
        (crate::connect(&kc).await.unwrap(), seen)
    }

    /// Asserts that `text` (a recorded path or body) contains `part`.
    #[track_caller]
    pub fn assert_has(text: &str, part: &str) {
        assert!(text.contains(part), "{part:?} in {text}");
    }
}
