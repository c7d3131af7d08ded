//! `oncolens pacs watch`: the PACS integration over DICOMweb, with Orthanc as the worked
//! example (docs/dicom.md).
//!
//! Each poll asks the PACS for its MR series (QIDO-RS, [`dicomweb`]), skips those the
//! database says are done, parked or waiting for a retry ([`state`]), retrieves the others
//! (WADO-RS), analyses every slice with the model's one pipeline (input gate and check,
//! class, Grad-CAM), sums the series up ([`crate::inference::series`]), and stores a
//! Structured Report and a Grad-CAM Secondary Capture series into the same study (STOW-RS,
//! [`report`]). A series that fails is retried with back-off and parked after
//! [`state::MAX_ATTEMPTS`]; a PACS that cannot be reached is asked again a few times, then the
//! poll fails with the reason. The same loop runs inside `oncolens serve --pacs-url`.

pub mod dicomweb;
pub mod report;
pub mod state;

use std::sync::Arc;
use std::time::Duration;

use crate::database::Pool;
use bytes::Bytes;

use crate::core::error::PacsError;
use crate::imaging::Scan;
use crate::imaging::dicom::parse;
use crate::inference::render::overlay_image;
use crate::inference::series::{SeriesSlice, summarise_series};
use crate::inference::{Explainer, ModelSlot, Prediction};
use crate::security::audit_log::{self, Event, Outcome};
use crate::security::keys::KeyRing;
use crate::store::jobs::{self, JobQueue};
use dicomweb::{DicomWeb, PacsAuth, SeriesRef};

/// The job queue of the watchers' series.
pub const SERIES_QUEUE: &str = "pacs-series";
use report::SliceResult;

/// How to watch a PACS.
#[derive(Debug, Clone)]
pub struct WatchOptions {
    /// DICOMweb base URL, e.g. `http://127.0.0.1:8042/dicom-web`.
    pub url: String,
    pub auth: PacsAuth,
    /// One poll, then return.
    pub once: bool,
    /// Time between polls.
    pub interval: Duration,
    /// Only studies on or after this date (`YYYYMMDD`).
    pub since: Option<String>,
    /// Times the PACS is asked before a poll gives up on reaching it.
    pub connect_attempts: u32,
    /// First wait between those attempts (doubled each time).
    pub connect_backoff: Duration,
    /// Timeout of one HTTP request.
    pub request_timeout: Duration,
    /// PEM certificates of a private certificate authority to trust for `https://` PACS URLs.
    pub ca_certificates: Option<Vec<u8>>,
    /// Where each answered or failed series is recorded in the audit trail (the deployment's
    /// key signs its head); `None` records nothing.
    pub audit_keys: Option<Arc<KeyRing>>,
    /// This watcher's name in the job queue, where watchers on several replicas claim each
    /// series before working on it.
    pub worker: String,
    /// How long a claimed series stays this watcher's without a renewal (a watcher that dies
    /// holds its series this long).
    pub lease: Duration,
}

impl Default for WatchOptions {
    fn default() -> Self {
        Self {
            url: String::new(),
            auth: PacsAuth::None,
            once: false,
            interval: Duration::from_secs(60),
            since: None,
            connect_attempts: 4,
            connect_backoff: Duration::from_millis(500),
            request_timeout: Duration::from_secs(120),
            ca_certificates: None,
            audit_keys: None,
            worker: crate::store::jobs::worker_name(),
            lease: Duration::from_secs(120),
        }
    }
}

/// What one poll did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PollReport {
    /// MR series the PACS listed.
    pub found: usize,
    /// Series analysed and answered in this poll.
    pub analysed: usize,
    /// Series skipped: done before, parked, or waiting for their retry.
    pub skipped: usize,
    /// Series that failed in this poll (retried later).
    pub failed: usize,
    /// Of those, the ones now parked.
    pub parked: usize,
    /// Series another watcher was working on (several replicas watch one PACS).
    pub elsewhere: usize,
}

impl PollReport {
    pub fn describe(&self) -> String {
        let mut text = format!(
            "{} MR series found: {} analysed, {} skipped (done, parked or waiting), {} failed ({} now parked)",
            self.found, self.analysed, self.skipped, self.failed, self.parked
        );
        if self.elsewhere > 0 {
            text.push_str(&format!(", {} with another watcher", self.elsewhere));
        }
        text
    }
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Polls until `opts.once` or forever, logging each poll; each poll answers with the model
/// current in `models` when it starts.
pub async fn watch(
    models: Arc<ModelSlot>,
    db: Pool,
    opts: WatchOptions,
) -> Result<PollReport, PacsError> {
    let client = DicomWeb::with_ca(
        &opts.url,
        opts.auth.clone(),
        opts.request_timeout,
        opts.ca_certificates.as_deref(),
    )?;
    loop {
        let explainer = models.current();
        match poll_once(&explainer, &client, &db, &opts).await {
            Ok(report) => {
                tracing::info!("PACS poll: {}", report.describe());
                if opts.once {
                    return Ok(report);
                }
            }
            Err(e) => {
                if opts.once {
                    return Err(e);
                }
                tracing::warn!("PACS poll failed: {}", crate::core::error::sentence(&e));
            }
        }
        tokio::time::sleep(opts.interval).await;
    }
}

/// One poll: find, skip what is done, analyse and answer the rest.
pub async fn poll_once(
    explainer: &Arc<Explainer>,
    client: &DicomWeb,
    db: &Pool,
    opts: &WatchOptions,
) -> Result<PollReport, PacsError> {
    let mut wait = opts.connect_backoff;
    let mut attempt = 1;
    let series = loop {
        match client.search_mr_series(opts.since.as_deref()).await {
            Ok(s) => break s,
            Err(e @ PacsError::Unreachable { .. }) if attempt < opts.connect_attempts => {
                tracing::warn!(
                    "PACS not reachable (attempt {attempt} of {}): {}; retrying in {:.1} s",
                    opts.connect_attempts,
                    crate::core::error::sentence(&e),
                    wait.as_secs_f64()
                );
                tokio::time::sleep(wait).await;
                wait *= 2;
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    };
    let mut report = PollReport {
        found: series.len(),
        ..PollReport::default()
    };
    let queue = JobQueue::new(db.clone(), SERIES_QUEUE, &opts.worker, opts.lease);
    for s in series {
        let key = state::series_key(client.base(), &s.study_instance_uid, &s.series_instance_uid);
        if state::due(db, &key, now_unix()).await? == state::Due::No {
            report.skipped += 1;
            continue;
        }
        // Claimed before the work, so that watchers on other replicas leave it alone.
        let job = match queue
            .claim_key(&key, &serde_json::Value::Null, jobs::now_ms())
            .await
        {
            Ok(Some(job)) => job,
            Ok(None) => {
                report.elsewhere += 1;
                continue;
            }
            Err(e) => return Err(PacsError::State(Box::new(e))),
        };
        // Another watcher may have finished it between the two looks.
        if state::due(db, &key, now_unix()).await? == state::Due::No {
            let _ = queue.release(&job).await;
            report.skipped += 1;
            continue;
        }
        let lease = queue.keep_alive(&job);
        // The series is named in the audit trail by its key (a hash), never by its UIDs.
        let event = Event::new("pacs-watcher", "pacs.answer", &key[..16.min(key.len())]);
        let processed = process_series(explainer, client, &s).await;
        drop(lease);
        let event = match processed {
            Ok((slices, finding)) => {
                state::mark_done(db, &key, slices, &finding, now_unix()).await?;
                let done = serde_json::json!({ "slices": slices });
                if let Err(e) = queue.complete(&job, &done, jobs::now_ms()).await {
                    tracing::warn!("closing a series' job: {}", e.sentence());
                }
                report.analysed += 1;
                event.detail(format!(
                    "{slices} slices: {finding}; report stored in the study"
                ))
            }
            Err(e) => {
                let reason = crate::core::error::sentence(&e);
                tracing::warn!("a PACS series failed: {reason}");
                report.failed += 1;
                if state::mark_failed(db, &key, &reason, now_unix()).await? {
                    report.parked += 1;
                }
                // Back in the queue: its retry time (or parking) is the state's to say.
                if let Err(e) = queue.release(&job).await {
                    tracing::warn!("releasing a series' job: {}", e.sentence());
                }
                event.outcome(Outcome::Failed).detail(reason)
            }
        };
        if let Some(keys) = &opts.audit_keys
            && let Err(e) = audit_log::record(db, keys, &event, now_unix()).await
        {
            tracing::error!(
                "the audit entry for a PACS series could not be recorded: {}",
                crate::core::error::sentence(&e)
            );
        }
    }
    Ok(report)
}

/// Retrieves, analyses and answers one series; returns its slice count and finding.
async fn process_series(
    explainer: &Arc<Explainer>,
    client: &DicomWeb,
    s: &SeriesRef,
) -> Result<(usize, String), PacsError> {
    let instances = client.retrieve_series(s).await?;
    let explainer = explainer.clone();
    let (objects, slices, finding) =
        tokio::task::spawn_blocking(move || answer_series(&explainer, &instances))
            .await
            .map_err(|e| PacsError::Analysis(format!("the analysis stopped: {e}")))?
            .map_err(PacsError::Analysis)?;
    client.store(&s.study_instance_uid, objects).await?;
    Ok((slices, finding))
}

/// The SR and Secondary Captures for a retrieved series (the CPU part).
pub fn answer_series(
    explainer: &Explainer,
    instances: &[Bytes],
) -> Result<(Vec<Vec<u8>>, usize, String), String> {
    let manifest = &explainer.manifest;
    let mut first = None;
    let mut analysed: Vec<(Scan, Prediction, Option<image::RgbImage>)> = Vec::new();
    let mut unreadable = Vec::new();
    for bytes in instances {
        let scans = match Scan::decode_frames(bytes) {
            Ok(s) => s,
            Err(e) => {
                unreadable.push(crate::core::error::sentence(&e));
                continue;
            }
        };
        if first.is_none() {
            first = parse(bytes).ok();
        }
        for scan in scans {
            let (prediction, explanation) = explainer.analyse(&scan).map_err(|e| e.sentence())?;
            let overlay = (prediction.verdict != crate::inference::Verdict::NotBrainMri)
                .then(|| overlay_image(&scan.image, &explanation.map, 0.5));
            analysed.push((scan, prediction, overlay));
        }
    }
    let Some(first) = first else {
        return Err(format!(
            "no instance of the series could be read ({})",
            unreadable.first().map_or("it is empty", String::as_str)
        ));
    };
    analysed.sort_by_key(|(s, _, _)| {
        s.dicom
            .as_ref()
            .map(|d| (d.instance_number, d.frame))
            .unwrap_or_default()
    });
    let slices: Vec<SeriesSlice<'_>> = analysed
        .iter()
        .filter_map(|(scan, p, _)| {
            let d = scan.dicom.as_ref()?;
            Some(SeriesSlice {
                slice: &d.sop_instance_uid,
                source: d,
                prediction: p,
            })
        })
        .collect();
    let summary = summarise_series(manifest, &slices)
        .into_iter()
        .next()
        .ok_or("no slice of the series could be analysed")?;
    let results: Vec<SliceResult<'_>> = analysed
        .iter()
        .filter_map(|(scan, p, overlay)| {
            Some(SliceResult {
                source: scan.dicom.as_ref()?,
                prediction: p,
                overlay: overlay.clone(),
            })
        })
        .collect();
    let (_, sr) = report::structured_report(&first, manifest, &summary, &results)?;
    let mut objects = vec![sr];
    objects.extend(
        report::heatmap_captures(&first, manifest, &results)?
            .into_iter()
            .map(|(_, b)| b),
    );
    let finding = summary
        .most_probable
        .as_ref()
        .map_or_else(|| "no call".to_string(), |c| c.class_name.clone());
    Ok((objects, summary.slices, finding))
}
