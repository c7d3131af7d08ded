//! The connection layer: the server's own accept loop over hyper's HTTP/1 connections, so that a
//! slow or idle client cannot hold a connection open. `axum::serve` sets no header timeout and
//! no header limits.
//!
//! - The request head (start line and headers) must arrive within
//!   [`HttpLimits::header_timeout`]; the same timer runs while a kept-alive connection waits for
//!   its next request, so idle connections are closed after it too.
//! - At most [`HttpLimits::max_headers`] headers of at most [`HttpLimits::max_header_bytes`] in
//!   all (else 431).
//! - Body and whole-request timeouts are layers of the router (`serve::router`).
//! - Shutdown stops accepting, lets requests in flight finish and closes idle connections.
//! - HTTPS ([`TlsFiles`], rustls): the handshake must finish within the header timeout too.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tower::ServiceExt;

use crate::core::error::SettingError;

/// Limits on what one client may take of the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// To receive a request's head, and the longest a kept-alive connection may sit idle.
    pub header_timeout: Duration,
    /// To receive an upload's whole body; also the longest pause between two of its chunks on
    /// any route.
    pub body_timeout: Duration,
    /// For a whole request, analysis included (408 after it).
    pub request_timeout: Duration,
    pub max_headers: usize,
    /// Start line and headers together.
    pub max_header_bytes: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(60),
            max_headers: 64,
            max_header_bytes: 16 * 1024,
        }
    }
}

/// Reads a request body to its end (at most `max_bytes`, for at most `timeout`) without keeping
/// it. Answering before the body is read closes the connection under a client still sending,
/// and most clients then report a broken connection instead of the answer.
pub async fn discard_body(body: axum::body::Body, max_bytes: usize, timeout: Duration) {
    use http_body_util::BodyExt;
    let mut body = body;
    let mut seen = 0usize;
    let _ = tokio::time::timeout(timeout, async {
        while let Some(Ok(frame)) = body.frame().await {
            seen += frame.data_ref().map_or(0, |d| d.len());
            if seen > max_bytes {
                break;
            }
        }
    })
    .await;
}

/// A certificate chain and its private key, PEM files, for HTTPS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
}

impl TlsFiles {
    /// The rustls server settings (TLS 1.2 and 1.3, ring's ciphers, HTTP/1.1 by ALPN).
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, SettingError> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let bad = |what: &str, e: &dyn std::fmt::Display| {
            SettingError::new("TLS", format!("{what}: {e}"))
        };
        let certs = CertificateDer::pem_file_iter(&self.cert)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| {
                bad(
                    &format!("cannot read the certificate {}", self.cert.display()),
                    &e,
                )
            })?;
        if certs.is_empty() {
            return Err(bad(
                &self.cert.display().to_string(),
                &"no certificate in it",
            ));
        }
        let key = PrivateKeyDer::from_pem_file(&self.key).map_err(|e| {
            bad(
                &format!("cannot read the private key {}", self.key.display()),
                &e,
            )
        })?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| bad("protocol versions", &e))?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| bad("the certificate and key do not fit together", &e))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

/// Serves `app` on `listener` until `shutdown` completes, then drains.
pub async fn run(
    listener: TcpListener,
    app: Router,
    limits: HttpLimits,
    shutdown: impl Future<Output = ()>,
) {
    run_with_tls(listener, app, limits, None, shutdown).await
}

/// [`run`], over TLS when `tls` is given.
pub async fn run_with_tls(
    listener: TcpListener,
    app: Router,
    limits: HttpLimits,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl Future<Output = ()>,
) {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!("accepting a connection failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let (stream, peer) = stream;
        let service =
            TowerToHyperService::new(app.clone().map_request(move |r: Request<Incoming>| {
                let mut r = r.map(axum::body::Body::new);
                // The client's address, for the audit trail and sign-in rate limits.
                r.extensions_mut().insert(axum::extract::ConnectInfo(peer));
                r
            }));
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout)
            .max_headers(limits.max_headers)
            .max_header_size(limits.max_header_bytes)
            .keep_alive(true);
        match &acceptor {
            None => {
                let connection =
                    graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
                tokio::spawn(async move {
                    if let Err(e) = connection.await {
                        tracing::debug!("connection closed: {e}");
                    }
                });
            }
            Some(acceptor) => {
                // The handshake runs in the connection's own task, bounded like a request head,
                // so a slow client holds up no one else.
                let handshake =
                    tokio::time::timeout(limits.header_timeout, acceptor.accept(stream));
                let watcher = graceful.watcher();
                tokio::spawn(async move {
                    let stream = match handshake.await {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => return tracing::debug!("TLS handshake failed: {e}"),
                        Err(_) => return tracing::debug!("TLS handshake timed out"),
                    };
                    let connection =
                        watcher.watch(builder.serve_connection(TokioIo::new(stream), service));
                    if let Err(e) = connection.await {
                        tracing::debug!("connection closed: {e}");
                    }
                });
            }
        }
    }
    drop(listener);
    graceful.shutdown().await;
}
