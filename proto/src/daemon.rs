//! What both daemons (agent and controller) need alike: errors on one line
//! for people and logs, and systemd's readiness and watchdog notifications.

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
