//! Joining the controller: once the listener is bound, the agent tells the
//! controller where it listens (`Join`), over mutual TLS with its own agent
//! certificate, expecting `spiffe://<fleet>/controller` at the other end.
//!
//! The controller takes the node's name from the certificate, never from the
//! request, and adds the node or updates its address: joining is idempotent,
//! so the agent joins on every start. It retries with capped exponential
//! backoff and jitter until the controller answers; serving and experiments
//! never wait for it, and a failure is logged with its cause, never fatal.

use std::fmt;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use fleet_proto::tls::{ClientTls, Expect, TlsError};
use fleet_proto::v1;
use fleet_proto::v1::controller_client::ControllerClient;

use crate::config::{HostPort, JoinSettings};
use crate::node::Node;
use fleet_proto::daemon::error_chain;

/// The wait after the first failed attempt; it doubles up to
/// `controller.retry_max_s`.
pub const FIRST_RETRY: Duration = Duration::from_secs(1);
/// How long one attempt (connect and call) may take.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(20);

pub use fleet_proto::daemon::{jitter_unit, Backoff};

/// Runs `attempt` (given its number, from 1) until it succeeds, waiting
/// `backoff` between failures; each failure is logged with its cause and the
/// wait. Runs on tokio's clock.
pub async fn until_ok<T, E, F, Fut>(
    mut backoff: Backoff,
    mut jitter: impl FnMut() -> f64,
    mut attempt: F,
) -> (T, u32)
where
    E: std::error::Error,
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut n = 1;
    loop {
        match attempt(n).await {
            Ok(v) => return (v, n),
            Err(e) => {
                let wait = backoff.next(jitter());
                tracing::warn!(
                    attempt = n,
                    retry_in = ?wait,
                    "{}; retrying",
                    error_chain(&e)
                );
                tokio::time::sleep(wait).await;
                n += 1;
            }
        }
    }
}

/// The address the controller is told to dial.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Advertise {
    /// `controller.advertise`, or the `listen` address when it names one.
    Fixed(String),
    /// `listen` is 0.0.0.0 or `::`: this board's address on the route to
    /// the controller, with the bound port. Found again on every attempt (the
    /// network may not be up yet at boot).
    Route { port: u16 },
}

impl Advertise {
    /// What to advertise for the configured `advertise` and the bound
    /// listener (whose port is the real one when `listen` asked for 0).
    pub fn new(configured: Option<&HostPort>, bound: SocketAddr) -> Self {
        match configured {
            Some(a) => Advertise::Fixed(a.with_default_port(bound.port())),
            None if bound.ip().is_unspecified() => Advertise::Route { port: bound.port() },
            None => Advertise::Fixed(bound.to_string()),
        }
    }

    async fn resolve(&self, controller: &str) -> Result<String, JoinError> {
        match self {
            Advertise::Fixed(a) => Ok(a.clone()),
            Advertise::Route { port } => {
                let ip = route_source(controller)
                    .await
                    .map_err(|source| JoinError::Route {
                        controller: controller.to_owned(),
                        source,
                    })?;
                Ok(SocketAddr::new(ip, *port).to_string())
            }
        }
    }
}

impl fmt::Display for Advertise {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Advertise::Fixed(a) => f.write_str(a),
            Advertise::Route { port } => {
                write!(f, "<address on the route to the controller>:{port}")
            }
        }
    }
}

/// The local address the kernel would send from to reach `controller`
/// (`host:port`): a UDP socket "connected" to it sends nothing.
pub async fn route_source(controller: &str) -> std::io::Result<IpAddr> {
    let target = tokio::net::lookup_host(controller)
        .await?
        .next()
        .ok_or_else(|| std::io::Error::other(format!("{controller} resolves to no address")))?;
    let any: SocketAddr = if target.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = tokio::net::UdpSocket::bind(any).await?;
    socket.connect(target).await?;
    Ok(socket.local_addr()?.ip())
}

/// Why one attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("cannot find this board's address on the route to the controller at {controller} (set controller.advertise)")]
    Route {
        controller: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot reach the controller at {controller}")]
    Connect {
        controller: String,
        #[source]
        source: TlsError,
    },
    #[error(
        "the controller at {controller} refused to let this board join ({code:?}: {message}){hint}"
    )]
    Refused {
        controller: String,
        code: tonic::Code,
        message: String,
        hint: &'static str,
    },
    #[error("the controller at {controller} did not answer within {timeout:?}")]
    Timeout {
        controller: String,
        timeout: Duration,
    },
}

fn hint(code: tonic::Code) -> &'static str {
    match code {
        tonic::Code::PermissionDenied | tonic::Code::Unauthenticated => {
            "; is tls.cert an agent certificate of this fleet (fleetctl pki issue agent NODE)?"
        }
        tonic::Code::InvalidArgument => {
            "; check controller.advertise, or listen when advertise is not set"
        }
        tonic::Code::Unimplemented => "; the controller is older than this agent",
        _ => "",
    }
}

/// One board's join: whom, as whom, and what to announce.
pub struct Joiner {
    pub settings: JoinSettings,
    pub advertise: Advertise,
    pub tls: ClientTls,
    pub node: Arc<Node>,
}

impl Joiner {
    async fn attempt(&self) -> Result<(String, v1::JoinResponse), JoinError> {
        let controller = &self.settings.controller;
        let address = self.advertise.resolve(controller).await?;
        let info = crate::grpc::node_wire::info(&self.node.info().await);
        let timeout = |_| JoinError::Timeout {
            controller: controller.clone(),
            timeout: ATTEMPT_TIMEOUT,
        };
        let call = async {
            let channel = self
                .tls
                .connect(controller, Expect::Controller)
                .await
                .map_err(|source| JoinError::Connect {
                    controller: controller.clone(),
                    source,
                })?;
            ControllerClient::new(channel)
                .join(v1::JoinRequest {
                    address: address.clone(),
                    info: Some(info),
                })
                .await
                .map(tonic::Response::into_inner)
                .map_err(|s| JoinError::Refused {
                    controller: controller.clone(),
                    code: s.code(),
                    message: s.message().to_owned(),
                    hint: hint(s.code()),
                })
        };
        let reply = tokio::time::timeout(ATTEMPT_TIMEOUT, call)
            .await
            .map_err(timeout)??;
        Ok((address, reply))
    }

    /// Joins, retrying until the controller answers, and logs the outcome.
    pub async fn run(self) {
        tracing::info!(
            controller = %self.settings.controller,
            from = self.settings.source,
            advertise = %self.advertise,
            "joining the controller"
        );
        let backoff = Backoff::new(FIRST_RETRY, self.settings.retry_max);
        let ((address, reply), attempts) = until_ok(backoff, jitter_unit, |_| self.attempt()).await;
        let node = reply.node.as_ref().map(|n| n.name.as_str()).unwrap_or("");
        tracing::info!(
            controller = %self.settings.controller,
            node,
            address = %address,
            attempts,
            "joined the controller"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Instant;

    #[test]
    fn backoff_doubles_to_its_cap_with_jitter_in_the_upper_half() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(10));
        let lows: Vec<_> = (0..6).map(|_| b.next(0.0)).collect();
        let ms = |v: &[Duration]| v.iter().map(|d| d.as_millis()).collect::<Vec<_>>();
        assert_eq!(ms(&lows), [500, 1000, 2000, 4000, 5000, 5000]);
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(10));
        let highs: Vec<_> = (0..6).map(|_| b.next(1.0)).collect();
        assert_eq!(ms(&highs), [1000, 2000, 4000, 8000, 10000, 10000]);
        // Many failures neither overflow nor pass the cap.
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
        for _ in 0..200 {
            assert!(b.next(0.7) <= Duration::from_secs(30));
        }
    }

    #[test]
    fn jitter_stays_in_range_and_varies() {
        let v: Vec<f64> = (0..100).map(|_| jitter_unit()).collect();
        assert!(v.iter().all(|u| (0.0..1.0).contains(u)));
        let mut distinct = v.clone();
        distinct.sort_by(f64::total_cmp);
        distinct.dedup();
        assert!(distinct.len() > 90, "{v:?}");
    }

    #[derive(Debug, thiserror::Error)]
    #[error("controller down")]
    struct Down;

    #[tokio::test(start_paused = true)]
    async fn retries_until_the_controller_answers() {
        let started = Instant::now();
        let mut seen = Vec::new();
        let (value, attempts) = until_ok(
            Backoff::new(Duration::from_secs(1), Duration::from_secs(4)),
            || 1.0,
            |n| {
                seen.push(Instant::now() - started);
                async move {
                    if n < 5 {
                        Err(Down)
                    } else {
                        Ok("joined")
                    }
                }
            },
        )
        .await;
        assert_eq!((value, attempts), ("joined", 5));
        // 1 + 2 + 4 + 4 seconds between the five attempts.
        let secs: Vec<u64> = seen.iter().map(|d| d.as_secs()).collect();
        assert_eq!(secs, [0, 1, 3, 7, 11]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_first_success_does_not_wait() {
        let started = Instant::now();
        let (v, n) = until_ok(
            Backoff::new(FIRST_RETRY, Duration::from_secs(30)),
            jitter_unit,
            |_| async { Ok::<_, Down>(7) },
        )
        .await;
        assert_eq!((v, n), (7, 1));
        assert_eq!(Instant::now(), started);
    }

    #[test]
    fn what_is_advertised() {
        let bound: SocketAddr = "10.1.2.3:7443".parse().unwrap();
        assert_eq!(
            Advertise::new(None, bound),
            Advertise::Fixed("10.1.2.3:7443".into())
        );
        let any: SocketAddr = "0.0.0.0:7443".parse().unwrap();
        assert_eq!(Advertise::new(None, any), Advertise::Route { port: 7443 });
        let any6: SocketAddr = "[::]:7000".parse().unwrap();
        assert_eq!(Advertise::new(None, any6), Advertise::Route { port: 7000 });
        let named = HostPort::parse("jetson-03.lab").unwrap();
        assert_eq!(
            Advertise::new(Some(&named), any),
            Advertise::Fixed("jetson-03.lab:7443".into())
        );
        let forwarded = HostPort::parse("gw.lab:17443").unwrap();
        assert_eq!(
            Advertise::new(Some(&forwarded), bound),
            Advertise::Fixed("gw.lab:17443".into())
        );
        let v6: SocketAddr = "[fd00::5]:7443".parse().unwrap();
        assert_eq!(
            Advertise::new(None, v6),
            Advertise::Fixed("[fd00::5]:7443".into())
        );
    }

    #[tokio::test]
    async fn the_route_to_a_loopback_controller_starts_on_loopback() {
        let ip = route_source("127.0.0.1:7444").await.unwrap();
        assert!(ip.is_loopback(), "{ip}");
        let a = Advertise::Route { port: 7443 };
        assert_eq!(a.resolve("127.0.0.1:7444").await.unwrap(), "127.0.0.1:7443");
        let e = a.resolve("no-such-host.invalid:7444").await.unwrap_err();
        let text = error_chain(&e);
        assert!(text.contains("controller.advertise"), "{text}");
    }
}
