//! Batch inference over an archive, shared by any number of workers through the job queue of
//! one database (`oncolens predict --jobs URL`): N machines running the same command process
//! the archive about N times as fast, and each file is answered once.
//!
//! Every worker lists the same files and cuts them into the same jobs (a few files each, keyed
//! by their paths), queues them (what is queued already is not queued again), then claims jobs
//! until none is left, renewing its lease while it works. A job whose worker died comes back
//! when its lease runs out. When the queue is drained each worker reads every job's answers,
//! so any of them reports the whole archive, series summaries included.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::core::error::{Error, Result, StoreError};
use crate::inference::{Predictor, SliceAnswer};
use crate::store::jobs::{self, Claim, Job, JobQueue};

/// Files per job: the predictor's batch, so sharing costs no batching.
pub const DEFAULT_FILES_PER_JOB: usize = 16;

/// A file and its answers (one per slice), or why it has none.
pub type FileAnswers = (PathBuf, std::result::Result<Vec<SliceAnswer>, String>);

/// How a worker takes part.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// How long a claimed job stays this worker's without a renewal.
    pub lease: Duration,
    /// How long to wait before asking again while other workers hold the last jobs.
    pub poll: Duration,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        Self {
            lease: Duration::from_secs(30),
            poll: Duration::from_millis(500),
        }
    }
}

/// What one worker did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkerReport {
    /// Jobs this worker completed.
    pub jobs: usize,
    /// Files in them.
    pub files: usize,
    /// Of those jobs, how many another worker had claimed and not finished.
    pub taken_over: usize,
    /// Jobs whose lease this worker lost before it could record them (another took them).
    pub lost: usize,
}

#[derive(Serialize, Deserialize)]
struct JobPayload {
    files: Vec<PathBuf>,
}

#[derive(Serialize, Deserialize)]
struct FileResult {
    file: PathBuf,
    #[serde(skip_serializing_if = "Option::is_none")]
    answers: Option<Vec<SliceAnswer>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// The jobs of `files` (in this order): every worker given the same files makes the same.
pub fn jobs_of(files: &[PathBuf], files_per_job: usize) -> Vec<(String, serde_json::Value)> {
    files
        .chunks(files_per_job.max(1))
        .map(|chunk| {
            let mut digest = Sha256::new();
            for f in chunk {
                digest.update(f.to_string_lossy().as_bytes());
                digest.update(b"\0");
            }
            let payload = JobPayload {
                files: chunk.to_vec(),
            };
            (
                hex::encode(digest.finalize()),
                serde_json::to_value(payload).unwrap_or_default(),
            )
        })
        .collect()
}

/// The queue of an archive when none is named: one per model version and list of jobs, so that
/// the same command on every machine meets in one queue, and a rerun resumes it.
pub fn default_queue(model_version: &str, jobs: &[(String, serde_json::Value)]) -> String {
    let mut digest = Sha256::new();
    digest.update(model_version.as_bytes());
    for (key, _) in jobs {
        digest.update(key.as_bytes());
    }
    format!("predict-{}", &hex::encode(digest.finalize())[..16])
}

fn malformed(what: &str) -> Error {
    Error::Store(StoreError::Corrupt(format!("job queue: {what}")))
}

/// Queues `jobs` (from [`jobs_of`]) and works on the queue until it is drained.
pub async fn work(
    queue: &JobQueue,
    predictor: Arc<Predictor>,
    jobs: &[(String, serde_json::Value)],
    options: &WorkerOptions,
) -> Result<WorkerReport> {
    queue.enqueue(jobs, jobs::now_ms()).await?;
    let mut report = WorkerReport::default();
    loop {
        let job = match queue.claim(jobs::now_ms()).await? {
            Claim::Job(job) => job,
            Claim::Wait => {
                tokio::time::sleep(options.poll).await;
                continue;
            }
            Claim::Drained => return Ok(report),
        };
        let payload: JobPayload = serde_json::from_value(job.payload.clone())
            .map_err(|_| malformed("a job names no files"))?;
        let n = payload.files.len();
        let result = run_job(queue, &job, predictor.clone(), payload.files).await?;
        if queue.complete(&job, &result, jobs::now_ms()).await? {
            report.jobs += 1;
            report.files += n;
            report.taken_over += usize::from(job.attempts > 1);
        } else {
            report.lost += 1;
        }
    }
}

/// Answers the files of `job`, renewing its lease meanwhile.
async fn run_job(
    queue: &JobQueue,
    job: &Job,
    predictor: Arc<Predictor>,
    files: Vec<PathBuf>,
) -> Result<serde_json::Value> {
    let lease = queue.keep_alive(job);
    let answered = tokio::task::spawn_blocking(move || {
        let answers = predictor.predict_file_slices(&files);
        files
            .into_iter()
            .zip(answers)
            .map(|(file, answer)| match answer {
                Ok(answers) => FileResult {
                    file,
                    answers: Some(answers),
                    error: None,
                },
                Err(e) => FileResult {
                    file,
                    answers: None,
                    error: Some(e.sentence()),
                },
            })
            .collect::<Vec<_>>()
    })
    .await;
    drop(lease);
    let answered = answered.map_err(|_| malformed("a worker thread stopped"))?;
    serde_json::to_value(answered).map_err(|e| Error::Store(StoreError::Json(e)))
}

/// Every file's answers in the queue, in the order the jobs were queued, and the keys and
/// errors of jobs that failed for good.
pub async fn results(queue: &JobQueue) -> Result<(Vec<FileAnswers>, Vec<(String, String)>)> {
    let mut answers = Vec::new();
    let mut failed = Vec::new();
    for job in queue.jobs().await? {
        if job.state == "failed" {
            failed.push((job.key, job.error.unwrap_or_default()));
            continue;
        }
        let Some(result) = job.result else { continue };
        let files: Vec<FileResult> =
            serde_json::from_value(result).map_err(|_| malformed("a result is not answers"))?;
        answers.extend(files.into_iter().map(|f| {
            let answer = match (f.answers, f.error) {
                (Some(a), _) => Ok(a),
                (None, e) => Err(e.unwrap_or_default()),
            };
            (f.file, answer)
        }));
    }
    Ok((answers, failed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_files_make_the_same_jobs() {
        let files: Vec<PathBuf> = (0..5)
            .map(|i| PathBuf::from(format!("s/{i}.png")))
            .collect();
        let a = jobs_of(&files, 2);
        assert_eq!(a.len(), 3);
        assert_eq!(a, jobs_of(&files, 2));
        assert_ne!(a[0].0, a[1].0);
        assert_eq!(a[2].1, serde_json::json!({"files": ["s/4.png"]}));
    }
}
