//! The small HTTP/1.1 server behind the health and admin ports of both binaries.
//!
//! Routing is a plain function from (path, query) to a reply, so each binary states
//! its endpoints in one match. Read-header timeout and header size follow upstream
//! (60 s, and hyper's bounded head buffer).
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::debug;

/// One reply.
#[derive(Debug, Clone)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// Content-Type.
    pub content_type: &'static str,
    /// Extra headers (e.g. `Location`).
    pub headers: Vec<(&'static str, String)>,
    /// Body.
    pub body: String,
}

impl Reply {
    /// `text/plain` with a status.
    pub fn text(status: u16, body: impl Into<String>) -> Self {
        Self {
            status,
            content_type: "text/plain; charset=utf-8",
            headers: Vec::new(),
            body: body.into(),
        }
    }
    /// Prometheus text exposition.
    pub fn metrics(body: String) -> Self {
        Self {
            status: 200,
            content_type: "text/plain; version=0.0.4; charset=utf-8",
            headers: Vec::new(),
            body,
        }
    }
    /// JSON.
    pub fn json(body: String) -> Self {
        Self {
            status: 200,
            content_type: "application/json",
            headers: Vec::new(),
            body,
        }
    }
    /// 404.
    pub fn not_found() -> Self {
        Self::text(404, "404 page not found\n")
    }
}

/// What a request asks for: `(path, query, host header)`.
pub type Router = Arc<dyn Fn(&str, &str, &str) -> Reply + Send + Sync>;

fn to_response(r: Reply) -> Response<Full<Bytes>> {
    let mut b = Response::builder()
        .status(StatusCode::from_u16(r.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header(header::CONTENT_TYPE, r.content_type);
    for (k, v) in r.headers {
        b = b.header(k, v);
    }
    b.body(Full::new(Bytes::from(r.body)))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

/// Serves `router` on `listener` until `shutdown`.
pub async fn serve(listener: TcpListener, router: Router, shutdown: CancellationToken) {
    loop {
        let (sock, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    debug!(error = %e, "endpoint accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => return,
        };
        let router = router.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<Incoming>| {
                let router = router.clone();
                async move {
                    let host = req
                        .headers()
                        .get(header::HOST)
                        .and_then(|h| h.to_str().ok())
                        .unwrap_or_default()
                        .to_owned();
                    let reply = router(
                        req.uri().path(),
                        req.uri().query().unwrap_or_default(),
                        &host,
                    );
                    Ok::<_, Infallible>(to_response(reply))
                }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(60))
                .serve_connection(TokioIo::new(sock), svc);
            tokio::select! {
                r = conn => if let Err(e) = r { debug!(%peer, error = %e, "endpoint connection error") },
                _ = shutdown.cancelled() => {}
            }
        });
    }
}
