//! `oncolens serve`: the web app and JSON API over the library.
//!
//! - Pages (server-rendered HTML, a little JS, no external assets): upload, result with class
//!   probabilities, uncertainty, Grad-CAM overlay and feedback form, history.
//! - API under `/api/v1` (OpenAPI at `/api/v1/openapi.json`); `/healthz`, `/readyz`, `/metrics`.
//! - The model is loaded once. Analyses run off the async runtime on a bounded pool sized to the
//!   cores, behind a bounded queue (503 with `Retry-After` when full), both reduced to fit the
//!   memory budget ([`budget`]); a place in the queue is taken before an upload's body is read.
//!   Bodies are limited, and decoding is bounded in pixels and bytes. Shutdown on Ctrl-C /
//!   SIGTERM lets in-flight requests finish.
//! - Security ([`security`]): strict CSP and the other headers on every response, cross-site
//!   writes refused, a `Host` allow-list, and no listening beyond loopback without accounts.
//! - Connections ([`http`]): header, body and whole-request timeouts, header limits; every
//!   error, the framework's included, is `{"error": "..."}`.
//! - Storage: SQLite by default (`sqlite://oncolens.db`, created and migrated at start).
//!
//! The upload path takes bytes and sniffs their format: PNG, JPEG or DICOM. Several files, a
//! zip or a multi-frame object make a batch (`/api/v1/batches`, `/batches/{id}`): an analysis
//! per slice and a summary per DICOM series. DICOM identifiers never reach the database:
//! slices are stored under their instance numbers and summaries under replaced UIDs.

pub mod access;
mod actor;
mod api;
pub mod budget;
mod engine;
pub mod http;
mod metrics;
mod pages;
pub mod security;
mod signin;
mod threads;
pub use crate::store;
mod view;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use crate::database::Pool;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower_http::timeout::{RequestBodyTimeoutLayer, TimeoutLayer};

use crate::core::error::{Result, ServeError};
use crate::inference::{Explainer, ModelSlot};
use crate::modelfile::ModelSource;
use crate::objects::{Objects, ObjectsLocation};
use crate::security::accounts;
use crate::security::audit_log::{self, Event};
use crate::security::keys::{KeyRing, KeySource};
use crate::security::sessions::SessionPolicy;
use crate::workflows::registry;
pub use api::{ApiError, parse_upload};
pub use budget::ANALYSIS_PEAK_BYTES;
use engine::Rejected;
pub use http::HttpLimits;
pub use metrics::Metrics;

/// Server settings.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub bind: SocketAddr,
    /// `sqlite://PATH` (created if missing) or `sqlite::memory:`.
    pub database: String,
    /// The model to serve.
    pub model: ModelSource,
    /// Largest request body, bytes.
    pub max_body_bytes: usize,
    /// Concurrent analyses (default: the number of cores).
    pub workers: usize,
    /// Analyses allowed to wait for a worker before new ones get 503.
    pub queue: usize,
    /// Test-time augmentation of the class probabilities.
    pub tta: bool,
    /// Class probabilities from the int8 engine (needs the model's int8 calibration).
    pub int8: bool,
    /// Timeouts and header limits per connection and request.
    pub limits: HttpLimits,
    /// Memory the analyses and the uploads waiting for them may take together; workers and
    /// queue are reduced at start until their worst case fits ([`budget`]).
    pub memory_budget_bytes: u64,
    /// Host names the server answers to besides loopback and the bind address.
    pub allowed_hosts: Vec<String>,
    /// The PACS watcher to run beside the server, if any.
    pub pacs: Option<crate::workflows::pacs::WatchOptions>,
    /// The data key's file (default: beside the database).
    pub key_file: Option<std::path::PathBuf>,
    /// The data key itself, base64 (instead of a file).
    pub key: Option<String>,
    /// The object store of scans and heat-maps (`--objects`; default: beside the database).
    pub objects: Option<ObjectsLocation>,
    /// This machine's folder of registered model versions (default: beside the database).
    pub models_dir: Option<std::path::PathBuf>,
    /// Session timeouts.
    pub sessions: SessionPolicy,
    /// Analyses older than this are deleted (checked at start and hourly); `None` keeps them.
    pub retention: Option<std::time::Duration>,
    /// Whether clients reach the server over TLS (a TLS-terminating proxy, or `--tls-cert`):
    /// cookies are then marked `Secure`.
    pub behind_tls: bool,
    /// Serve HTTPS with this certificate and key (cookies are then `Secure`).
    pub tls: Option<http::TlsFiles>,
    /// How often the registry is read for a newly promoted version.
    pub registry_poll: std::time::Duration,
}

impl Default for ServeConfig {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], 8080)),
            database: "sqlite://oncolens.db".into(),
            model: ModelSource::Bundled,
            max_body_bytes: 50 * 1024 * 1024,
            workers: cores,
            queue: 4 * cores,
            tta: false,
            int8: false,
            limits: HttpLimits::default(),
            memory_budget_bytes: budget::DEFAULT_MEMORY_BUDGET,
            allowed_hosts: Vec::new(),
            pacs: None,
            key_file: None,
            key: None,
            objects: None,
            models_dir: None,
            sessions: SessionPolicy::default(),
            retention: None,
            behind_tls: false,
            tls: None,
            registry_poll: std::time::Duration::from_secs(5),
        }
    }
}

/// Shared state of the handlers.
#[derive(Clone)]
pub struct AppState {
    /// The model analyses use; replaced when the registry promotes another version.
    model: Arc<ModelSlot>,
    db: Pool,
    workers: Arc<Semaphore>,
    /// The threads analyses run on (as many as workers).
    analysis_threads: Arc<threads::AnalysisThreads>,
    admitted: Arc<Semaphore>,
    metrics: Arc<Metrics>,
    templates: Arc<minijinja::Environment<'static>>,
    max_body_bytes: usize,
    limits: HttpLimits,
    hosts: security::AllowedHosts,
    /// The PACS the watcher polls (shown on the /pacs page), if one runs.
    pacs_url: Option<String>,
    /// Seals what is stored; signs the audit trail's head.
    keys: Arc<KeyRing>,
    /// Where the scans and heat-maps are (sealed).
    objects: Objects,
    /// Where the registry's versions are, for a version promoted on another replica.
    model_files: registry::ModelFiles,
    sessions: SessionPolicy,
    /// Cookies marked `Secure`.
    tls: bool,
    /// The forms' CSRF token while no account exists (no session to bind one to).
    open_csrf: String,
    /// Failed sign-ins per client address, for rate limiting.
    throttle: Arc<signin::Throttle>,
}

/// The queue is full: try again later.
pub struct Busy;

/// A place in the queue, taken before an upload's body is read, so that the bodies held in
/// memory are bounded by workers + queue.
pub struct Admission {
    permit: OwnedSemaphorePermit,
}

impl AppState {
    pub async fn new(config: &ServeConfig) -> Result<Self> {
        let db = store::open(&config.database).await?;
        let keys = Arc::new(KeyRing::load_or_create(&KeySource::for_database(
            &config.database,
            config.key_file.as_deref(),
            config.key.as_deref(),
        ))?);
        let location = match &config.objects {
            Some(given) => given.clone(),
            None => ObjectsLocation::default_for(&config.database)?,
        };
        let objects = Objects::open(&location).await?;
        tracing::info!("scans and heat-maps are kept in the {location}");
        let model_files = registry::ModelFiles {
            objects: objects.clone(),
            keys: keys.clone(),
            folder: config
                .models_dir
                .clone()
                .unwrap_or_else(|| registry::default_models_dir(&config.database)),
        };
        // The registry's promoted version, else the model the server is started with.
        let model = registry::served_source(&db, Some(&model_files), &config.model).await?;
        if model != config.model {
            tracing::info!("the model registry serves {model:?}");
        }
        let (tta, int8) = (config.tta, config.int8);
        let explainer = tokio::task::spawn_blocking(move || {
            Explainer::open_source(&model).and_then(|e| e.with_tta(tta).with_int8(int8))
        })
        .await
        .map_err(|e| ServeError::ModelLoading(e.into()))??;
        let sealed = store::reseal(&db, &objects, &keys, store::Reseal::Plaintext).await?;
        if sealed > 0 {
            tracing::info!("encrypted {sealed} values stored before encryption at rest");
        }
        store::feedback::backfill_entropy(&db).await?;
        let plan = budget::plan(config)?;
        tracing::info!("{}", plan.describe());
        Ok(Self {
            model: Arc::new(ModelSlot::new(explainer)),
            db,
            workers: Arc::new(Semaphore::new(plan.workers)),
            analysis_threads: Arc::new(threads::AnalysisThreads::new(plan.workers)),
            admitted: Arc::new(Semaphore::new(plan.workers + plan.queue)),
            metrics: Arc::new(Metrics::default()),
            templates: Arc::new(view::templates()),
            max_body_bytes: config.max_body_bytes,
            limits: config.limits,
            hosts: security::AllowedHosts::new(config.bind, &config.allowed_hosts),
            pacs_url: config.pacs.as_ref().map(|p| p.url.clone()),
            keys,
            objects,
            model_files,
            sessions: config.sessions,
            tls: config.behind_tls || config.tls.is_some(),
            open_csrf: crate::security::random_secret(),
            throttle: Arc::new(signin::Throttle::default()),
        })
    }

    /// The model new work uses (each request takes it once and finishes on it).
    pub fn explainer(&self) -> Arc<Explainer> {
        self.model.current()
    }

    /// Whether any account exists (then every route but the public ones needs one).
    async fn accounts_exist(&self) -> bool {
        // A database error counts as "accounts exist": fail closed.
        accounts::any(&self.db).await.unwrap_or(true)
    }

    /// Records an audit event now. A failure to record is logged loudly; the request it
    /// belongs to has already happened.
    async fn audit(&self, event: Event) {
        if let Err(e) = audit_log::record(&self.db, &self.keys, &event, now_unix()).await {
            tracing::error!(
                "audit entry {} {} could not be recorded: {}",
                event.action,
                event.object,
                crate::core::error::sentence(&e)
            );
        }
    }

    /// A place in the queue, or [`Busy`] when it is full.
    fn admit(&self) -> std::result::Result<Admission, Busy> {
        self.admitted
            .clone()
            .try_acquire_owned()
            .map(|permit| Admission { permit })
            .map_err(|_| {
                self.metrics.rejected_busy.fetch_add(1, Ordering::Relaxed);
                Busy
            })
    }

    /// Analyses every slice of an admitted upload on the blocking pool once a worker is free,
    /// with the model current when the work starts (returned with the outcomes: the records
    /// name the model that made them even if another version is promoted meanwhile).
    async fn analyse_files(
        &self,
        admission: Admission,
        files: Vec<(String, Bytes)>,
        single_only: bool,
    ) -> std::result::Result<
        (
            Arc<Explainer>,
            std::result::Result<Vec<engine::SliceOutcome>, engine::Refused>,
        ),
        Busy,
    > {
        self.metrics.queue_depth.fetch_add(1, Ordering::Relaxed);
        let worker = self.workers.clone().acquire_owned().await;
        self.metrics.queue_depth.fetch_sub(1, Ordering::Relaxed);
        let worker = worker.map_err(|_| Busy)?;
        let explainer = self.explainer();
        let used = explainer.clone();
        // A zip may unpack to at most the upload limit (the memory budget counts it).
        let max_unpacked = self.max_body_bytes;
        let started = Instant::now();
        let result = self
            .analysis_threads
            .run(move || {
                let outcome = engine::analyse_upload(&explainer, files, max_unpacked, single_only);
                drop((worker, admission.permit));
                outcome
            })
            .await
            .unwrap_or_else(|threads::Lost| {
                Ok(vec![engine::SliceOutcome {
                    name: "upload".into(),
                    dicom: None,
                    result: Err(Rejected("The analysis failed unexpectedly.".into())),
                }])
            });
        self.metrics
            .observe_inference(started.elapsed().as_secs_f64());
        Ok((used, result))
    }
}

async fn record_metrics(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let started = Instant::now();
    let response = next.run(request).await;
    state.metrics.observe_request(
        &route,
        response.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    response
}

/// All routes.
pub fn router(state: AppState) -> Router {
    let limit = state.max_body_bytes;
    let limits = state.limits;
    let hosts = state.hosts.clone();
    Router::new()
        .route("/login", get(signin::page).post(signin::sign_in))
        .route("/logout", post(signin::sign_out))
        .route("/", get(pages::index).post(pages::upload))
        .route("/analyses/{id}", get(pages::analysis))
        .route(
            "/analyses/{id}/feedback",
            post(pages::feedback).layer(DefaultBodyLimit::max(FORM_BODY_LIMIT)),
        )
        .route(
            "/analyses/{id}/delete",
            post(pages::delete_analysis).layer(DefaultBodyLimit::max(FORM_BODY_LIMIT)),
        )
        .route(
            "/batches/{id}/delete",
            post(pages::delete_batch).layer(DefaultBodyLimit::max(FORM_BODY_LIMIT)),
        )
        .route("/admin/audit", get(pages::audit))
        .route("/admin/feedback", get(pages::feedback_stats))
        .route("/review", get(pages::review))
        .route("/api/v1/review", get(api::review))
        .route("/api/v1/feedback/agreement", get(api::agreement))
        .route("/admin/users", get(pages::users))
        .route("/api/v1/audit", get(api::audit))
        .route("/history", get(pages::history))
        .route("/model", get(pages::model_card))
        .route("/static/app.js", get(pages::app_js))
        .route("/static/style.css", get(pages::style_css))
        .route("/api/v1/analyses", post(api::create).get(api::list))
        .route("/api/v1/analyses/{id}", get(api::fetch).delete(api::delete))
        .route("/api/v1/batches", post(api::create_batch))
        .route(
            "/api/v1/batches/{id}",
            get(api::fetch_batch).delete(api::delete_batch),
        )
        .route("/batches/{id}", get(pages::batch))
        .route("/pacs", get(pages::pacs))
        .route(
            "/pacs/{key}/retry",
            post(pages::pacs_retry).layer(DefaultBodyLimit::max(FORM_BODY_LIMIT)),
        )
        .route("/api/v1/analyses/{id}/image", get(api::image))
        .route("/api/v1/analyses/{id}/heatmap", get(api::heatmap))
        .route(
            "/api/v1/analyses/{id}/feedback",
            post(api::feedback)
                .layer(DefaultBodyLimit::max(JSON_BODY_LIMIT))
                .get(api::list_feedback),
        )
        .route("/api/v1/model", get(api::model))
        .route("/api/v1/openapi.json", get(api::openapi))
        .route("/healthz", get(api::healthz))
        .route("/readyz", get(api::readyz))
        .route("/metrics", get(api::metrics))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            access::enforce,
        ))
        .fallback(api::not_found)
        .layer(DefaultBodyLimit::max(limit))
        .layer(RequestBodyTimeoutLayer::new(limits.body_timeout))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            limits.request_timeout,
        ))
        .layer(middleware::from_fn(api::errors_as_json))
        .layer(middleware::from_fn_with_state(
            security::DiscardLimits {
                max_bytes: limit,
                timeout: limits.body_timeout,
            },
            security::same_origin_writes,
        ))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            record_metrics,
        ))
        .layer(middleware::from_fn_with_state(
            hosts,
            security::allowed_host,
        ))
        .layer(middleware::from_fn(security::headers))
        .with_state(state)
}

/// Largest JSON body an endpoint takes (feedback: a class id and a comment of at most 2,000
/// characters).
pub const JSON_BODY_LIMIT: usize = 16 * 1024;
/// Largest form body of the feedback page (the same, URL-encoded).
pub const FORM_BODY_LIMIT: usize = 32 * 1024;

/// Serves until Ctrl-C or SIGTERM, then lets in-flight requests finish.
pub async fn serve(config: ServeConfig) -> Result<()> {
    let tls = config.tls.as_ref().map(|t| t.server_config()).transpose()?;
    let state = AppState::new(&config).await?;
    if !state.accounts_exist().await {
        security::check_bind(config.bind)?;
    }
    // Only the name is kept: the model itself may be replaced while the server runs, and a
    // handle held here would keep the old one in memory.
    let (model_name, version) = {
        let explainer = state.explainer();
        (
            explainer.manifest.name.clone(),
            explainer.manifest.version(),
        )
    };
    state
        .audit(
            Event::new("system", "model.load", model_name.clone())
                .detail(format!("serving model {model_name} (weights {version})")),
        )
        .await;
    spawn_background(&state, &config);
    let listener = tokio::net::TcpListener::bind(config.bind)
        .await
        .map_err(|e| ServeError::Listen(config.bind, e))?;
    let address = listener
        .local_addr()
        .map_err(|e| ServeError::Listen(config.bind, e))?;
    tracing::info!(
        "oncolens serving on {}://{address} (model {})",
        if tls.is_some() { "https" } else { "http" },
        model_name
    );
    if let Some(mut pacs) = config.pacs.clone() {
        pacs.audit_keys = Some(state.keys.clone());
        let (models, db) = (state.model.clone(), state.db.clone());
        tracing::info!(
            "watching the PACS at {} every {} s",
            pacs.url,
            pacs.interval.as_secs()
        );
        tokio::spawn(async move {
            if let Err(e) = crate::workflows::pacs::watch(models, db, pacs).await {
                tracing::error!(
                    "the PACS watcher stopped: {}",
                    crate::core::error::sentence(&e)
                );
            }
        });
    }
    http::run_with_tls(
        listener,
        router(state),
        config.limits,
        tls,
        shutdown_signal(),
    )
    .await;
    Ok(())
}

/// The server's background work, started once beside the listener: housekeeping (sessions,
/// retention) and following the model registry's served version.
pub fn spawn_background(state: &AppState, config: &ServeConfig) {
    {
        let state = state.clone();
        let keep = config.retention;
        tokio::spawn(async move { housekeeping(state, keep).await });
    }
    tokio::spawn(registry::follow(
        state.model.clone(),
        state.db.clone(),
        registry::FollowOptions {
            fallback: config.model.clone(),
            tta: config.tta,
            int8: config.int8,
            interval: config.registry_poll,
            audit_keys: Some(state.keys.clone()),
            files: Some(state.model_files.clone()),
        },
    ));
}

/// At start and then hourly: deletes timed-out sessions, and analyses older than `keep` (each
/// purge audited).
async fn housekeeping(state: AppState, keep: Option<std::time::Duration>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(3600));
    loop {
        tick.tick().await;
        if let Err(e) =
            crate::security::sessions::sweep(&state.db, now_unix(), state.sessions).await
        {
            tracing::warn!("sweeping sessions: {}", crate::core::error::sentence(&e));
        }
        let Some(keep) = keep else { continue };
        let cutoff = now_unix() - keep.as_secs() as i64;
        match store::purge_older_than(&state.db, &state.objects, cutoff).await {
            Ok(0) => {}
            Ok(n) => {
                tracing::info!(
                    "retention: deleted {n} analyses older than {} days",
                    keep.as_secs() / 86_400
                );
                state
                    .audit(
                        Event::new("system", "retention.purge", "")
                            .detail(format!("{n} analyses made before {cutoff} (unix) deleted")),
                    )
                    .await;
            }
            Err(e) => tracing::error!("retention: {}", crate::core::error::sentence(&e)),
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
    tracing::info!("shutting down: finishing in-flight requests");
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// A random 128-bit id, hex.
fn new_id() -> String {
    use rand::Rng;
    let v: u128 = rand::rng().random();
    format!("{v:032x}")
}

fn valid_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())
}
