//! ServiceAccount token authentication of agents through TokenReview, with the real
//! binaries and a recorded-response API server on loopback.
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use konnectivity_e2e::*;

/// Answers TokenReviews: authenticated as kube-system/konnectivity-agent for the token
/// "good-token", not authenticated otherwise. The kubeconfig, and the count of reviews.
fn fake_apiserver(dir: &std::path::Path) -> anyhow::Result<(String, Arc<AtomicUsize>)> {
    let reviews = Arc::new(AtomicUsize::new(0));
    let count = reviews.clone();
    let kubeconfig = konnectivity_testkit::kube::fake_apiserver(dir, "server", move |body| {
        count.fetch_add(1, Ordering::SeqCst);
        let json = if body.contains("\"good-token\"") {
            r#"{"apiVersion":"authentication.k8s.io/v1","kind":"TokenReview","spec":{},"status":{"authenticated":true,"user":{"username":"system:serviceaccount:kube-system:konnectivity-agent"}}}"#
        } else {
            r#"{"apiVersion":"authentication.k8s.io/v1","kind":"TokenReview","spec":{},"status":{"authenticated":false}}"#
        };
        (201, json)
    })?;
    Ok((kubeconfig.display().to_string(), reviews))
}

#[test]
fn agents_authenticate_with_service_account_tokens_and_bad_tokens_are_rejected()
-> anyhow::Result<()> {
    let (dir, pki) = temp_pki(&[])?;
    let (kubeconfig, reviews) = fake_apiserver(dir.path())?;
    // Token auth replaces agent client certificates (upstream forbids both).
    let spec = ServerSpec {
        mode: "grpc",
        uds: Some(dir.path().join("s.sock")),
        bind: "127.0.0.1".into(),
        extra: vec![
            "--cluster-ca-cert=".into(),
            "--agent-namespace=kube-system".into(),
            "--agent-service-account=konnectivity-agent".into(),
            "--authentication-audience=system:konnectivity-server".into(),
            format!("--kubeconfig={kubeconfig}"),
        ],
    };
    let (server, ports) = start_server("server", &pki, &spec, None, dir.path())?;

    // Our agent `name` presenting the service account token `token` (from a file).
    let with_token = |name: &str, token: &str| -> anyhow::Result<(Proc, u16)> {
        let path = dir.path().join(format!("{name}-token"));
        std::fs::write(&path, token)?;
        let flag = format!("--service-account-token-path={}", path.display());
        start_local_agent(
            AgentKind::Ours,
            name,
            &pki,
            ports.agent,
            &[flag],
            dir.path(),
        )
    };
    let (bad_agent, bad_health) = with_token("bad-agent", "stolen-token")?;
    wait_for(
        "a rejection in the server log",
        Duration::from_secs(10),
        || {
            server
                .log_text()
                .contains("rejected agent: authentication failed")
        },
    )?;
    let log = server.log_text();
    assert!(log.contains("service account jwt not valid"), "{log}");
    assert!(
        !log.contains("stolen-token"),
        "the token must never be logged"
    );
    assert_eq!(
        http_get(&format!("127.0.0.1:{}", ports.health), "/readyz")?.0,
        500
    );
    assert_eq!(
        http_get(&format!("127.0.0.1:{bad_health}"), "/readyz")?.0,
        503
    );
    drop(bad_agent);

    let (_agent, _) = with_token("agent", "good-token")?;
    wait_server_ready("127.0.0.1", ports.health)?;
    assert!(reviews.load(Ordering::SeqCst) >= 2);
    Ok(())
}
