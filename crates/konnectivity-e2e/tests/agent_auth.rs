//! ServiceAccount token authentication of agents through TokenReview, with the real
//! binaries and a recorded-response API server on loopback.
use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use konnectivity_e2e::*;

/// Answers TokenReviews: authenticated as kube-system/konnectivity-agent for the token
/// "good-token", not authenticated otherwise. Counts the reviews.
fn fake_apiserver(dir: &std::path::Path) -> anyhow::Result<(String, Arc<AtomicUsize>)> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    let addr = l.local_addr()?;
    let reviews = Arc::new(AtomicUsize::new(0));
    let count = reviews.clone();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            let count = count.clone();
            std::thread::spawn(move || {
                let mut s = s;
                let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                loop {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    let end = loop {
                        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break p + 4;
                        }
                        match s.read(&mut chunk) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                    let len: usize = head
                        .lines()
                        .find(|l| l.starts_with("content-length:"))
                        .and_then(|l| l[15..].trim().parse().ok())
                        .unwrap_or(0);
                    while buf.len() < end + len {
                        match s.read(&mut chunk) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let body = String::from_utf8_lossy(&buf[end..end + len]).to_string();
                    count.fetch_add(1, Ordering::SeqCst);
                    let ok = body.contains("\"good-token\"");
                    let json = if ok {
                        r#"{"apiVersion":"authentication.k8s.io/v1","kind":"TokenReview","spec":{},"status":{"authenticated":true,"user":{"username":"system:serviceaccount:kube-system:konnectivity-agent"}}}"#
                    } else {
                        r#"{"apiVersion":"authentication.k8s.io/v1","kind":"TokenReview","spec":{},"status":{"authenticated":false}}"#
                    };
                    let rsp = format!(
                        "HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{json}",
                        json.len()
                    );
                    if s.write_all(rsp.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    let kc = dir.join("kubeconfig");
    std::fs::write(
        &kc,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: http://{addr}\ncontexts:\n- name: c\n  context:\n    cluster: c\n    user: u\ncurrent-context: c\nusers:\n- name: u\n  user:\n    token: server\n"
        ),
    )?;
    Ok((kc.display().to_string(), reviews))
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
