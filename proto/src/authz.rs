//! The authorization layer both daemons put in front of every gRPC call:
//! the caller's certificate is checked against the TLS configuration loaded
//! now (CA, CRL, expiry: a revocation loaded by SIGHUP reaches connections
//! opened before it), then the daemon's role table decides, before any
//! handler runs. Every state-changing call and every refusal is logged with
//! the caller, the remote address and the method.

use std::pin::Pin;
use std::task::{Context, Poll};

use tonic::Status;

use crate::identity::Principal;
use crate::tls::{PeerInfo, ServerTls};

/// What a daemon's role table says of a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Allowed; `changes_state` says whether it is logged as a change.
    Allowed {
        changes_state: bool,
    },
    Denied,
}

/// A daemon's role table: who may call which method (a gRPC path).
pub type Table = fn(&Principal, &str) -> Verdict;

/// The layer: `table` decides; `place` ends the refusal's sentence ("on
/// this agent", or empty).
#[derive(Clone)]
pub struct AuthzLayer {
    tls: ServerTls,
    table: Table,
    place: &'static str,
}

impl AuthzLayer {
    pub fn new(tls: ServerTls, table: Table, place: &'static str) -> Self {
        AuthzLayer { tls, table, place }
    }
}

impl<S> tower::Layer<S> for AuthzLayer {
    type Service = Authz<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Authz {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Authz<S> {
    inner: S,
    layer: AuthzLayer,
}

impl AuthzLayer {
    fn decide(&self, peer: Option<&PeerInfo>, path: &str) -> Result<(), Status> {
        let Some(p) = peer else {
            return Err(Status::unauthenticated(
                "no client certificate identity on this connection",
            ));
        };
        if let Err(e) = self.tls.check_peer(p) {
            return Err(Status::unauthenticated(e.to_string()));
        }
        let id = p.identity();
        match (self.table)(id.principal(), path) {
            Verdict::Allowed { changes_state } => {
                if changes_state {
                    tracing::info!(
                        caller = %id.uri(),
                        remote = %p.remote_addr(),
                        method = %path,
                        "state-changing call"
                    );
                }
                Ok(())
            }
            Verdict::Denied => {
                let place = if self.place.is_empty() {
                    String::new()
                } else {
                    format!(" {}", self.place)
                };
                Err(Status::permission_denied(format!(
                    "{} may not call {path}{place}; ask an admin for a certificate with the right role",
                    id.uri()
                )))
            }
        }
    }
}

impl<S, B> tower::Service<http::Request<B>> for Authz<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future =
        Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let peer = req.extensions().get::<PeerInfo>().cloned();
        let path = req.uri().path().to_owned();
        match self.layer.decide(peer.as_ref(), &path) {
            Ok(()) => Box::pin(self.inner.call(req)),
            Err(status) => {
                tracing::info!(
                    caller = ?peer.as_ref().map(|p| p.identity().uri()),
                    remote = ?peer.as_ref().map(|p| p.remote_addr()),
                    method = %path,
                    reason = %status.message(),
                    "refused"
                );
                Box::pin(async move { Ok(status.into_http()) })
            }
        }
    }
}
