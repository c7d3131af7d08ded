//! Browser-facing protections, applied to every route (issue #17's transport part; accounts,
//! tokens and the audit trail come later):
//!
//! - [`headers`]: a strict Content-Security-Policy (no inline scripts or styles: the pages have
//!   none), `nosniff`, no referrer, no framing;
//! - [`same_origin_writes`]: a state-changing request (anything but GET, HEAD, OPTIONS) that a
//!   browser marks as coming from another site (`Sec-Fetch-Site`; without it, an `Origin` that
//!   is not this server's, `null` included) is refused with 403 before it reaches a handler, so
//!   nothing is stored (CSRF);
//! - [`allowed_host`]: the `Host` header must name this server (loopback names, the bind
//!   address, `--allowed-host`), which defeats DNS rebinding;
//! - [`check_bind`]: with no accounts, the server refuses to listen beyond loopback.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;

use super::api::error;
use crate::core::error::SettingError;

/// Scripts, styles and images from this server only (`blob:` for the upload preview), no
/// plugins, no `<base>`, forms only to this server, never inside a frame.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
    style-src 'self'; img-src 'self' blob:; object-src 'none'; base-uri 'none'; \
    form-action 'self'; frame-ancestors 'none'";

/// The security headers on every response.
pub async fn headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let h = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
    ] {
        h.insert(name, HeaderValue::from_static(value));
    }
    response
}

/// Whether a request may change something (anything but GET, HEAD, OPTIONS).
pub(super) fn is_write(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Why a write is refused as cross-site, if it is.
fn cross_site(request: &Request) -> Option<String> {
    let text = |name| {
        request
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap_or("").to_string())
    };
    // Browsers that send Sec-Fetch-Site are believed: with `Referrer-Policy: no-referrer` they
    // send `Origin: null` even for the app's own forms. Older ones are judged by Origin.
    if let Some(site) = text("sec-fetch-site") {
        return (site != "same-origin" && site != "none")
            .then(|| format!("the browser marked it as {site}"));
    }
    if let Some(origin) = text(header::ORIGIN.as_str()) {
        let host = text(header::HOST.as_str()).unwrap_or_default();
        let same = ["http://", "https://"]
            .iter()
            .any(|scheme| origin.eq_ignore_ascii_case(&format!("{scheme}{host}")));
        if !same {
            return Some(format!("it comes from {origin}"));
        }
    }
    None
}

/// What a refused request's body may cost to read to its end.
#[derive(Debug, Clone, Copy)]
pub struct DiscardLimits {
    pub max_bytes: usize,
    pub timeout: std::time::Duration,
}

/// Refuses state-changing requests from other sites (403, nothing stored). Clients that are not
/// browsers send neither header and pass.
pub async fn same_origin_writes(
    State(limits): State<DiscardLimits>,
    request: Request,
    next: Next,
) -> Response {
    if is_write(request.method())
        && let Some(why) = cross_site(&request)
    {
        super::http::discard_body(request.into_body(), limits.max_bytes, limits.timeout).await;
        return error(
            StatusCode::FORBIDDEN,
            format!("Refused: a change requested from another site ({why})."),
        );
    }
    next.run(request).await
}

/// Host names this server answers to.
#[derive(Debug, Clone)]
pub struct AllowedHosts(Arc<Vec<String>>);

impl AllowedHosts {
    /// Loopback names, the bind address (unless it is unspecified) and `extra`.
    pub fn new(bind: SocketAddr, extra: &[String]) -> Self {
        let mut names: Vec<String> = ["localhost", "127.0.0.1", "::1"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        if !bind.ip().is_unspecified() {
            names.push(bind.ip().to_string());
        }
        names.extend(extra.iter().map(|h| h.to_ascii_lowercase()));
        Self(Arc::new(names))
    }

    /// Whether a `Host` header value (name, optional port; IPv6 in brackets) is allowed.
    pub fn allows(&self, host: &str) -> bool {
        let name = match host.strip_prefix('[') {
            Some(v6) => v6.split(']').next().unwrap_or(""),
            None => host.rsplit_once(':').map_or(host, |(name, _)| name),
        };
        let name = name.to_ascii_lowercase();
        self.0.contains(&name)
    }
}

/// Refuses requests whose `Host` is not this server's (400).
pub async fn allowed_host(
    State(hosts): State<AllowedHosts>,
    request: Request,
    next: Next,
) -> Response {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !hosts.allows(host) {
        return error(
            StatusCode::BAD_REQUEST,
            format!(
                "This server does not answer for the host {host:?} (start it with --allowed-host NAME)."
            ),
        );
    }
    next.run(request).await
}

/// Without accounts the server must not be reachable from other machines.
pub fn check_bind(bind: SocketAddr) -> Result<(), SettingError> {
    if bind.ip().is_loopback() {
        Ok(())
    } else {
        Err(SettingError::new(
            "bind address",
            format!(
                "{bind} is reachable from other machines, and this server has no accounts yet, so \
                 anyone there could read and add scans; bind to 127.0.0.1 (behind a reverse proxy \
                 that authenticates, if others need it)"
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_matched_without_their_port() {
        let hosts = AllowedHosts::new("127.0.0.1:8080".parse().unwrap(), &["scans.example".into()]);
        for ok in [
            "127.0.0.1:8080",
            "localhost",
            "[::1]:8080",
            "Scans.Example:443",
        ] {
            assert!(hosts.allows(ok), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:8080",
            "127.0.0.2",
            "",
            "[::2]:80",
        ] {
            assert!(!hosts.allows(bad), "{bad}");
        }
    }

    #[test]
    fn only_loopback_binds_without_accounts() {
        assert!(check_bind("127.0.0.1:8080".parse().unwrap()).is_ok());
        assert!(check_bind("[::1]:8080".parse().unwrap()).is_ok());
        assert!(check_bind("0.0.0.0:8080".parse().unwrap()).is_err());
        assert!(check_bind("[::]:8080".parse().unwrap()).is_err());
    }
}
