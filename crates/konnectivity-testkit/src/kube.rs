//! A stand-in kube-apiserver on loopback for tests of what calls the Kubernetes API:
//! each request is answered with what the test's function returns for its body, and a
//! kubeconfig in the test's directory points at it.
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Starts a stand-in API server on loopback (plain HTTP, a thread per connection) that
/// answers every request with `answer(body)`, a status and a JSON body, and writes a
/// kubeconfig for it with the bearer token `token` into `dir`; the kubeconfig's path.
pub fn fake_apiserver(
    dir: &Path,
    token: &str,
    answer: impl Fn(&str) -> (u16, &'static str) + Send + Sync + 'static,
) -> anyhow::Result<PathBuf> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    let addr = l.local_addr()?;
    let answer = Arc::new(answer);
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            let answer = answer.clone();
            std::thread::spawn(move || serve(s, &*answer));
        }
    });
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: http://{addr}\ncontexts:\n- name: c\n  context:\n    cluster: c\n    user: u\ncurrent-context: c\nusers:\n- name: u\n  user:\n    token: {token}\n"
        ),
    )?;
    Ok(kubeconfig)
}

/// Answers the requests of one keep-alive connection until it closes or idles 5 s.
fn serve(mut s: TcpStream, answer: &dyn Fn(&str) -> (u16, &'static str)) {
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    while let Some(body) = read_request(&mut s) {
        let (status, json) = answer(&body);
        let rsp = format!(
            "HTTP/1.1 {status} Answer\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{json}",
            json.len()
        );
        if s.write_all(rsp.as_bytes()).is_err() {
            return;
        }
    }
}

/// Reads one request (its head, then a `Content-Length` body); the body, or `None` when
/// the connection ends or fails first.
fn read_request(s: &mut TcpStream) -> Option<String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    while buf.len() < end + len {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    Some(String::from_utf8_lossy(&buf[end..end + len]).into_owned())
}
