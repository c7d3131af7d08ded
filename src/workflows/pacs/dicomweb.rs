//! A DICOMweb client (PS3.18): QIDO-RS to find MR series, WADO-RS to retrieve them, STOW-RS to
//! store results, with HTTP basic or bearer authentication and TLS by rustls. Error messages
//! never carry a URL path, which holds study and series UIDs.

use std::time::Duration;

use bytes::Bytes;
use futures_util::stream;
use reqwest::header::{ACCEPT, CONTENT_TYPE, HeaderValue};

use crate::core::error::PacsError;

/// How to authenticate towards the PACS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PacsAuth {
    None,
    Basic { user: String, password: String },
    Bearer(String),
}

/// One series a QIDO-RS search found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeriesRef {
    pub study_instance_uid: String,
    pub series_instance_uid: String,
    pub modality: String,
}

/// A DICOMweb service at a base URL such as `http://host/dicom-web`.
#[derive(Clone)]
pub struct DicomWeb {
    base: String,
    auth: PacsAuth,
    http: reqwest::Client,
}

/// The first value of a DICOM JSON attribute (PS3.18 F.2) as text.
fn json_text(item: &serde_json::Value, tag: &str) -> Option<String> {
    let v = item.get(tag)?.get("Value")?.get(0)?;
    v.as_str()
        .map(str::to_string)
        .or_else(|| Some(v.to_string()))
}

/// The boundary of a `multipart/related` content type (multer reads the parts, but only takes
/// boundaries from `multipart/form-data`).
fn related_boundary(content_type: &str) -> Option<String> {
    let mut parts = content_type.split(';').map(str::trim);
    if !parts.next()?.eq_ignore_ascii_case("multipart/related") {
        return None;
    }
    parts.find_map(|p| {
        let (k, v) = p.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case("boundary")
            .then(|| v.trim().trim_matches('"').to_string())
    })
}

impl DicomWeb {
    pub fn new(base: &str, auth: PacsAuth, timeout: Duration) -> Result<Self, PacsError> {
        Self::with_ca(base, auth, timeout, None)
    }

    /// Like [`DicomWeb::new`], also trusting the PEM certificates in `ca_pem` (a hospital's
    /// own certificate authority) beside the public roots.
    pub fn with_ca(
        base: &str,
        auth: PacsAuth,
        timeout: Duration,
        ca_pem: Option<&[u8]>,
    ) -> Result<Self, PacsError> {
        let mut builder = reqwest::Client::builder().timeout(timeout).use_rustls_tls();
        if let Some(pem) = ca_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| PacsError::Client(Box::new(e)))?;
            if certs.is_empty() {
                return Err(PacsError::Client(
                    "the CA file holds no PEM certificate".into(),
                ));
            }
            for c in certs {
                builder = builder.add_root_certificate(c);
            }
        }
        let http = builder
            .build()
            .map_err(|e| PacsError::Client(Box::new(e.without_url())))?;
        Ok(Self {
            base: base.trim_end_matches('/').to_string(),
            auth,
            http,
        })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let r = self.http.request(method, format!("{}{path}", self.base));
        match &self.auth {
            PacsAuth::None => r,
            PacsAuth::Basic { user, password } => r.basic_auth(user, Some(password)),
            PacsAuth::Bearer(token) => r.bearer_auth(token),
        }
    }

    async fn send(
        &self,
        what: &'static str,
        r: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, PacsError> {
        let response = r.send().await.map_err(|e| PacsError::Unreachable {
            what,
            source: Box::new(e.without_url()),
        })?;
        let status = response.status();
        if status.is_success() {
            Ok(response)
        } else {
            Err(PacsError::Status {
                what,
                status: status.as_u16(),
            })
        }
    }

    /// QIDO-RS: the MR series of the PACS (of studies on or after `since`, `YYYYMMDD`).
    pub async fn search_mr_series(&self, since: Option<&str>) -> Result<Vec<SeriesRef>, PacsError> {
        let what = "searching the PACS for MR series (QIDO-RS)";
        let mut query = vec![
            ("Modality", "MR".to_string()),
            ("includefield", "0020000D".to_string()),
        ];
        if let Some(d) = since {
            query.push(("StudyDate", format!("{d}-")));
        }
        let r = self
            .request(reqwest::Method::GET, "/series")
            .query(&query)
            .header(ACCEPT, "application/dicom+json");
        let response = self.send(what, r).await?;
        if response.status() == reqwest::StatusCode::NO_CONTENT {
            return Ok(Vec::new());
        }
        let items: Vec<serde_json::Value> = response
            .json()
            .await
            .map_err(|e| PacsError::BadResponse(what, Box::new(e.without_url())))?;
        Ok(items
            .iter()
            .filter_map(|item| {
                Some(SeriesRef {
                    study_instance_uid: json_text(item, "0020000D")?,
                    series_instance_uid: json_text(item, "0020000E")?,
                    modality: json_text(item, "00080060").unwrap_or_default(),
                })
            })
            .collect())
    }

    /// WADO-RS: every instance of a series as Part 10 bytes.
    pub async fn retrieve_series(&self, s: &SeriesRef) -> Result<Vec<Bytes>, PacsError> {
        let what = "retrieving a series (WADO-RS)";
        let r = self
            .request(
                reqwest::Method::GET,
                &format!(
                    "/studies/{}/series/{}",
                    s.study_instance_uid, s.series_instance_uid
                ),
            )
            .header(
                ACCEPT,
                "multipart/related; type=\"application/dicom\"; transfer-syntax=*",
            );
        let response = self.send(what, r).await?;
        let content_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let boundary = related_boundary(&content_type).ok_or_else(|| {
            PacsError::BadResponse(
                what,
                format!("not a multipart/related answer ({content_type:?})").into(),
            )
        })?;
        let body = response
            .bytes()
            .await
            .map_err(|e| PacsError::BadResponse(what, Box::new(e.without_url())))?;
        let mut parts = multer::Multipart::new(
            stream::once(async move { Ok::<Bytes, std::io::Error>(body) }),
            boundary,
        );
        let mut out = Vec::new();
        while let Some(part) = parts
            .next_field()
            .await
            .map_err(|e| PacsError::BadResponse(what, Box::new(e)))?
        {
            out.push(
                part.bytes()
                    .await
                    .map_err(|e| PacsError::BadResponse(what, Box::new(e)))?,
            );
        }
        Ok(out)
    }

    /// STOW-RS: stores Part 10 objects into `study`.
    pub async fn store(&self, study: &str, objects: Vec<Vec<u8>>) -> Result<(), PacsError> {
        let what = "storing the results (STOW-RS)";
        let boundary = format!("oncolens-{:032x}", rand::random::<u128>());
        let mut body = Vec::new();
        for o in objects {
            body.extend_from_slice(
                format!("--{boundary}\r\nContent-Type: application/dicom\r\n\r\n").as_bytes(),
            );
            body.extend(o);
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
        let content_type = HeaderValue::from_str(&format!(
            "multipart/related; type=\"application/dicom\"; boundary={boundary}"
        ))
        .map_err(|e| PacsError::Client(Box::new(e)))?;
        let r = self
            .request(reqwest::Method::POST, &format!("/studies/{study}"))
            .header(CONTENT_TYPE, content_type)
            .header(ACCEPT, "application/dicom+json")
            .body(body);
        self.send(what, r).await.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A DICOMweb stand-in that lists one series to a request with the expected
    /// `Authorization` header and answers 401 to any other.
    async fn stand_in(expected: &'static str) -> String {
        use axum::http::{HeaderMap, StatusCode};
        let app = axum::Router::new().route(
            "/dicom-web/series",
            axum::routing::get(move |headers: HeaderMap| async move {
                let auth = headers
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string();
                if auth == expected {
                    (
                        StatusCode::OK,
                        r#"[{"0020000D":{"vr":"UI","Value":["1.2"]},"0020000E":{"vr":"UI","Value":["1.2.3"]},"00080060":{"vr":"CS","Value":["MR"]}}]"#,
                    )
                } else {
                    (StatusCode::UNAUTHORIZED, "")
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        format!("http://{addr}/dicom-web")
    }

    /// An https DICOMweb stand-in whose certificate a private CA signed; returns its URL and
    /// the CA's PEM.
    async fn tls_stand_in() -> (String, String) {
        use std::sync::Arc;
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
            .unwrap()
            .signed_by(&key, &ca, &ca_key)
            .unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(|_req| async {
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(
                            http_body_util::Full::new(Bytes::from_static(
                                br#"[{"0020000D":{"vr":"UI","Value":["9.8"]},"0020000E":{"vr":"UI","Value":["9.8.7"]}}]"#,
                            )),
                        ))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        (format!("https://{addr}/dicom-web"), ca.pem())
    }

    #[tokio::test]
    async fn https_with_a_private_ca_is_trusted_only_when_given() {
        let (url, ca) = tls_stand_in().await;
        let timeout = Duration::from_secs(10);
        let trusted =
            DicomWeb::with_ca(&url, PacsAuth::None, timeout, Some(ca.as_bytes())).unwrap();
        let found = trusted.search_mr_series(None).await.unwrap();
        assert_eq!(found[0].series_instance_uid, "9.8.7");
        // Without the CA the certificate is unknown: the connection is refused.
        let public_roots_only = DicomWeb::new(&url, PacsAuth::None, timeout).unwrap();
        let e = public_roots_only.search_mr_series(None).await.unwrap_err();
        assert!(matches!(e, PacsError::Unreachable { .. }), "{e}");
        assert!(DicomWeb::with_ca(&url, PacsAuth::None, timeout, Some(b"not pem")).is_err());
    }

    #[tokio::test]
    async fn bearer_and_basic_credentials_reach_the_pacs() {
        let url = stand_in("Bearer t0ken").await;
        let timeout = Duration::from_secs(10);
        let ok = DicomWeb::new(&url, PacsAuth::Bearer("t0ken".into()), timeout).unwrap();
        let found = ok.search_mr_series(None).await.unwrap();
        assert_eq!(found[0].series_instance_uid, "1.2.3");
        assert_eq!(found[0].study_instance_uid, "1.2");
        let wrong = DicomWeb::new(&url, PacsAuth::Bearer("other".into()), timeout).unwrap();
        let e = wrong.search_mr_series(None).await.unwrap_err();
        assert!(matches!(e, PacsError::Status { status: 401, .. }), "{e}");
        // user:secret in base64.
        let url = stand_in("Basic dXNlcjpzZWNyZXQ=").await;
        let basic = PacsAuth::Basic {
            user: "user".into(),
            password: "secret".into(),
        };
        let ok = DicomWeb::new(&url, basic, timeout).unwrap();
        assert_eq!(
            ok.search_mr_series(Some("20260101")).await.unwrap().len(),
            1
        );
        // No URL path in the error: it would carry UIDs.
        let none = DicomWeb::new(&url, PacsAuth::None, timeout).unwrap();
        let e = crate::core::error::sentence(&none.search_mr_series(None).await.unwrap_err());
        assert!(!e.contains("/dicom-web"), "{e}");
    }

    #[test]
    fn boundaries_of_related_answers() {
        assert_eq!(
            related_boundary("multipart/related; type=\"application/dicom\"; boundary=abc-1")
                .as_deref(),
            Some("abc-1")
        );
        assert_eq!(
            related_boundary("Multipart/Related;boundary=\"q r\";type=application/dicom")
                .as_deref(),
            Some("q r")
        );
        assert_eq!(related_boundary("application/dicom+json"), None);
        let item = serde_json::json!({"0020000E": {"vr": "UI", "Value": ["1.2.3"]}});
        assert_eq!(json_text(&item, "0020000E").as_deref(), Some("1.2.3"));
        assert_eq!(json_text(&item, "00080060"), None);
    }
}
