//! The one adapter between tonic's router and our two streaming RPCs.
//!
//! `AgentService.Connect` and `ProxyService.Proxy` are served as plain HTTP/2 request
//! and response bodies (`konnectivity_tunnel::grpc`) instead of through generated
//! codecs. tonic still routes by service name; [`Rpc`] checks the method path, runs the
//! handler and turns its error into a trailers-only gRPC status.
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tonic::Status;

/// The response every handler produces.
pub type HttpResponse = http::Response<tonic::body::Body>;
/// The request every handler receives.
pub type HttpRequest = http::Request<tonic::body::Body>;

pub(crate) type Handled = Pin<Box<dyn Future<Output = Result<HttpResponse, Status>> + Send>>;

/// One streaming RPC.
pub trait StreamingRpc: Clone + Send + Sync + 'static {
    /// The service name tonic routes on (`AgentService`, `ProxyService`).
    const SERVICE: &'static str;
    /// The only method path served (`/AgentService/Connect`, …).
    const PATH: &'static str;
    /// Handles one call.
    fn handle(&self, req: HttpRequest) -> Handled;
}

/// A [`StreamingRpc`] as a tower service for tonic's router.
#[derive(Debug, Clone)]
pub struct Rpc<T>(pub T);

impl<T: StreamingRpc> tonic::server::NamedService for Rpc<T> {
    const NAME: &'static str = T::SERVICE;
}

impl<T: StreamingRpc> tower::Service<HttpRequest> for Rpc<T> {
    type Response = HttpResponse;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<HttpResponse, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: HttpRequest) -> Self::Future {
        if req.uri().path() != T::PATH {
            return Box::pin(async { Ok(Status::unimplemented("").into_http()) });
        }
        let handled = self.0.handle(req);
        Box::pin(async move { Ok(handled.await.unwrap_or_else(|s| s.into_http())) })
    }
}
