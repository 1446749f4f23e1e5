//! What both daemons (agent and controller) need alike: errors on one line
//! for people and logs, systemd's readiness and watchdog notifications, and
//! one backoff with jitter for every retry loop.

use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

/// The daemons' log: to stderr (journald adds the time and the unit),
/// without colours, filtered by `FLEET_LOG` (default `info`).
#[cfg(feature = "daemon")]
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("FLEET_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
}

/// Resolves at the first SIGTERM (systemd's stop) or SIGINT (Ctrl-C), and
/// says which.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM"),
        _ = int.recv() => tracing::info!("SIGINT"),
    }
}

/// The error and its causes on one line, each cause once.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        let text = inner.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        src = inner.source();
    }
    s
}

/// Tells systemd about the daemon's state under `Type=notify` (`READY=1`,
/// `WATCHDOG=1`); does nothing without `$NOTIFY_SOCKET`.
pub fn sd_notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let Ok(sock) = std::os::unix::net::UnixDatagram::unbound() else {
        return;
    };
    let bytes = path.as_encoded_bytes();
    let res = if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(name)
            .and_then(|a| sock.send_to_addr(state.as_bytes(), &a))
    } else {
        sock.send_to(state.as_bytes(), std::path::Path::new(&path))
    };
    if let Err(e) = res {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}

/// What SIGHUP does to a daemon's TLS: reads its config file again (when
/// it was started from one) and reloads the server's and, if any, the
/// client's TLS from that file's `[tls]` table as it is now, so a `crl`
/// added since the start (as `fleetctl pki revoke` says to) or a moved
/// certificate takes effect without a restart. `read` parses the file and
/// returns its `[tls]` table. On any error the configuration in use stays,
/// and the log says why.
pub fn reload_tls<E: std::error::Error>(
    config: Option<&std::path::Path>,
    read: impl FnOnce(&std::path::Path) -> Result<crate::tls::TlsFiles, E>,
    server: &crate::tls::ServerTls,
    client: Option<&crate::tls::ClientTls>,
) {
    use crate::tls::TlsSource;
    let files = match config {
        Some(path) => match read(path) {
            Ok(files) => files,
            Err(e) => {
                tracing::error!(
                    config = %path.display(),
                    error = %error_chain(&e),
                    "SIGHUP: cannot read the config file again; keeping the TLS configuration in use"
                );
                return;
            }
        },
        None => match server.source() {
            TlsSource::Files(files) => files,
            TlsSource::Pem(_) => {
                if let Err(e) = server.reload() {
                    tracing::error!(error = %error_chain(&e), "TLS reload failed; keeping the configuration in use");
                }
                return;
            }
        },
    };
    let from = config
        .map(|p| format!("[tls] of {}", p.display()))
        .unwrap_or_else(|| "the files named at start".into());
    let crl = files
        .crl
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "none".into());
    match server.reload_from(files.clone()) {
        Ok(identity) => tracing::info!(
            %identity,
            ca = %files.ca.display(),
            cert = %files.cert.display(),
            key = %files.key.display(),
            %crl,
            "reloaded TLS from {from}"
        ),
        Err(e) => {
            tracing::error!(
                error = %error_chain(&e),
                "TLS reload from {from} failed; keeping the configuration in use (fix the files and send SIGHUP again)"
            );
            return;
        }
    }
    if let Some(client) = client {
        if let Err(e) = client.reload_from(files.clone()) {
            tracing::error!(
                error = %error_chain(&e),
                "client TLS reload from {from} failed; keeping the client certificate in use"
            );
        }
    }
    if files.crl.is_none() {
        tracing::warn!(
            "no CRL configured ([tls] crl is not set): revoked certificates are still accepted; \
             copy the crl.pem `fleetctl pki revoke` wrote, set crl under [tls] and send SIGHUP again"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn chains_causes_once() {
        let e = Outer(std::io::Error::other("inner"));
        assert_eq!(error_chain(&e), "outer: inner");
    }

    #[test]
    fn notify_sends_the_state_to_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let sock = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        std::env::set_var("NOTIFY_SOCKET", &path);
        sd_notify("READY=1");
        std::env::remove_var("NOTIFY_SOCKET");
        let mut buf = [0u8; 16];
        let n = sock.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
    }
}

/// Capped exponential backoff with "equal jitter": the n-th wait is half of
/// `min(first * 2^n, max)` plus a random part of the other half, so boards
/// started together spread their retries and the waits still grow.
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    pub fn new(first: Duration, max: Duration) -> Self {
        Backoff {
            first,
            max: max.max(first),
            failures: 0,
        }
    }

    /// The wait before the next attempt; `unit` in [0, 1] picks where in
    /// the jittered half it falls.
    pub fn next(&mut self, unit: f64) -> Duration {
        let step = self
            .first
            .saturating_mul(1u32 << self.failures.min(20))
            .min(self.max);
        self.failures = self.failures.saturating_add(1);
        let half = step / 2;
        half + half.mul_f64(unit.clamp(0.0, 1.0))
    }
}

/// A number in [0, 1) that differs between calls and between processes,
/// from std's randomly keyed hasher: enough to spread retries, no RNG crate.
pub fn jitter_unit() -> f64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    h.write_u128(now);
    h.write_u32(std::process::id());
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// How long a daemon waits, after its shutdown signal, for open calls and
/// streams to finish before it closes them. A client holding a stream open
/// (the controller's `WatchNode`, a `fleetctl events -f`) would otherwise
/// keep the daemon up until systemd's stop timeout kills it, and a board
/// whose agent restarts would look silent for that long.
pub const DRAIN: Duration = Duration::from_secs(2);

/// Splits `shutdown` in two: a future to hand the server as its graceful
/// shutdown signal, and one that resolves `period` after that signal, when
/// the server should stop waiting for open streams.
pub fn drained(
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    period: Duration,
) -> (
    impl std::future::Future<Output = ()> + Send + 'static,
    impl std::future::Future<Output = ()> + Send + 'static,
) {
    let (tx, mut rx) = tokio::sync::watch::channel(false);
    let signal = async move {
        shutdown.await;
        let _ = tx.send(true);
    };
    let deadline = async move {
        if rx.wait_for(|fired| *fired).await.is_ok() {
            tokio::time::sleep(period).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    (signal, deadline)
}

#[cfg(test)]
mod drain_tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_drain_deadline_follows_the_signal_by_its_period() {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let (signal, deadline) = drained(
            async move {
                let _ = rx.await;
            },
            Duration::from_secs(2),
        );
        let signal = tokio::spawn(signal);
        let started = tokio::time::Instant::now();
        let deadline = tokio::spawn(deadline);
        // Nothing happens before the shutdown signal, however long.
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(!deadline.is_finished());
        tx.send(()).unwrap();
        signal.await.unwrap();
        deadline.await.unwrap();
        assert_eq!(started.elapsed(), Duration::from_secs(62));
    }
}

/// What a scrape of the metrics endpoint answers: the Prometheus text, or
/// why it cannot be made (answered 500).
pub type MetricsText = Result<String, String>;

/// Serves Prometheus metrics over HTTP/1.1 on `listener`: `GET /metrics`
/// answers what `render` makes, any other path 404, any other method 405.
/// Runs until the task is dropped.
pub async fn serve_metrics<F>(listener: tokio::net::TcpListener, render: F) -> std::io::Result<()>
where
    F: Fn() -> MetricsText + Send + Sync + 'static,
{
    use http::{header, Method, Response, StatusCode};
    use http_body_util::Full;

    tracing::info!(bound = %listener.local_addr()?, "serving Prometheus metrics at /metrics");
    let render = std::sync::Arc::new(render);
    loop {
        let (stream, _) = listener.accept().await?;
        let render = render.clone();
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let render = render.clone();
                    async move {
                        let reply = |status: StatusCode, text: String| {
                            Response::builder()
                                .status(status)
                                .header(header::CONTENT_TYPE, "text/plain; version=0.0.4")
                                .body(Full::new(bytes::Bytes::from(text)))
                        };
                        if req.uri().path() != "/metrics" {
                            return reply(
                                StatusCode::NOT_FOUND,
                                "not found: the metrics are at /metrics\n".to_owned(),
                            );
                        }
                        if req.method() != Method::GET && req.method() != Method::HEAD {
                            return reply(
                                StatusCode::METHOD_NOT_ALLOWED,
                                "only GET /metrics\n".to_owned(),
                            );
                        }
                        match render() {
                            Ok(text) => reply(StatusCode::OK, text),
                            Err(why) => {
                                tracing::warn!(error = %why, "metrics scrape failed");
                                reply(StatusCode::INTERNAL_SERVER_ERROR, format!("{why}\n"))
                            }
                        }
                    }
                });
            let io = hyper_util::rt::TokioIo::new(stream);
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, service)
                .await
            {
                tracing::debug!(error = %e, "metrics connection ended");
            }
        });
    }
}

#[cfg(test)]
mod metrics_tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(addr: std::net::SocketAddr, request: &str) -> String {
        let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
        conn.write_all(request.as_bytes()).await.unwrap();
        let mut text = String::new();
        conn.read_to_string(&mut text).await.unwrap();
        text
    }

    #[tokio::test]
    async fn metrics_answer_at_their_path_only() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(serve_metrics(listener, || Ok("up 1\n".to_owned())));
        let ok = get(
            addr,
            "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(ok.starts_with("HTTP/1.1 200 OK"), "{ok}");
        assert!(ok.contains("text/plain; version=0.0.4"), "{ok}");
        assert!(ok.ends_with("up 1\n"), "{ok}");
        let missing = get(
            addr,
            "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
        let post = get(
            addr,
            "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(post.starts_with("HTTP/1.1 405"), "{post}");
        server.abort();
    }

    #[tokio::test]
    async fn a_failed_render_is_a_500_that_says_why() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(serve_metrics(listener, || {
            Err("cannot read the store".to_owned())
        }));
        let text = get(
            addr,
            "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(text.starts_with("HTTP/1.1 500"), "{text}");
        assert!(text.ends_with("cannot read the store\n"), "{text}");
        server.abort();
    }
}
