//! The job queue that several workers share through the deployment's database (table `jobs`,
//! migration 0009): batch inference over an archive (`oncolens predict --jobs`) and the PACS
//! watcher's series on several replicas.
//!
//! A job is a row per (queue, key), so the same work is never queued twice. A worker claims a
//! job with a lease (its name and an expiry) and renews the lease while it works; a worker that
//! dies holds its job only until the lease runs out, and the next claim takes it over. Only
//! the lease's holder can complete a job, so a worker that was presumed dead and comes back
//! cannot record a second result. After [`MAX_ATTEMPTS`] claims a job is failed for good (a
//! job that kills every worker that takes it must not kill them all).
//!
//! On PostgreSQL the claim is `SELECT ... FOR UPDATE SKIP LOCKED` inside the `UPDATE`, so
//! concurrent workers never wait on, or take, the same row; SQLite has one writer at a time,
//! which makes the same statement exclusive without the clause.

use std::time::Duration;

use sqlx::Row;

use crate::core::error::{Result, StoreError};
use crate::database::{Dialect, Pool};

use super::db_err;

/// Claims of a job before it is failed for good.
pub const MAX_ATTEMPTS: i64 = 3;

/// One queue of the database, as one worker sees it.
#[derive(Debug, Clone)]
pub struct JobQueue {
    pool: Pool,
    queue: String,
    worker: String,
    lease: Duration,
}

/// A claimed job: this worker holds its lease.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    pub id: i64,
    pub key: String,
    pub payload: serde_json::Value,
    /// Claims so far, this one included (more than 1: an earlier worker's lease ran out).
    pub attempts: i64,
}

/// What a claim found.
#[derive(Debug, Clone, PartialEq)]
pub enum Claim {
    Job(Job),
    /// Nothing to take now, but other workers hold leases: their jobs come back if they die.
    Wait,
    /// Nothing pending and nothing running: the queue is done.
    Drained,
}

/// How many jobs of a queue are in each state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Progress {
    pub pending: i64,
    pub running: i64,
    pub done: i64,
    pub failed: i64,
}

impl Progress {
    pub fn total(&self) -> i64 {
        self.pending + self.running + self.done + self.failed
    }
}

/// A job as the queue holds it, for reports.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct JobRecord {
    pub key: String,
    pub state: String,
    pub attempts: i64,
    /// The worker that holds or last held it.
    pub worker: Option<String>,
    pub result: Option<serde_json::Value>,
    pub error: Option<String>,
}

/// A worker's default name: the host's name and the process id.
pub fn worker_name() -> String {
    let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
    let host = host.trim();
    let host = if host.is_empty() { "worker" } else { host };
    format!("{host}-{}", std::process::id())
}

/// Renews a job's lease in the background until dropped (or until the lease is lost, which
/// [`JobQueue::complete`] then reports).
pub struct KeepAlive(tokio::task::JoinHandle<()>);

impl Drop for KeepAlive {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn json_err(e: serde_json::Error) -> crate::core::error::Error {
    db_err(StoreError::Json(e))
}

impl JobQueue {
    /// Queue `queue` for the worker named `worker`, whose leases last `lease`.
    pub fn new(pool: Pool, queue: &str, worker: &str, lease: Duration) -> Self {
        Self {
            pool,
            queue: queue.to_string(),
            worker: worker.to_string(),
            lease,
        }
    }

    pub fn worker(&self) -> &str {
        &self.worker
    }

    /// Renews this worker's lease on `job` every third of the lease while the guard lives.
    pub fn keep_alive(&self, job: &Job) -> KeepAlive {
        let (queue, job) = (self.clone(), job.clone());
        KeepAlive(tokio::spawn(async move {
            loop {
                tokio::time::sleep(queue.lease / 3).await;
                match queue.renew(&job, now_ms()).await {
                    Ok(true) => {}
                    Ok(false) => return,
                    Err(e) => tracing::warn!("renewing the lease of a job: {}", e.sentence()),
                }
            }
        }))
    }

    fn lease_until(&self, now_ms: i64) -> i64 {
        now_ms + self.lease.as_millis() as i64
    }

    /// Adds the jobs not queued yet (by key); returns how many were new. Every worker may
    /// enqueue the same list: the first adds it, the others add nothing.
    pub async fn enqueue(&self, jobs: &[(String, serde_json::Value)], now_ms: i64) -> Result<u64> {
        let mut tx = self.pool.begin().await.map_err(db_err)?;
        let mut added = 0;
        for (key, payload) in jobs {
            added += sqlx::query(
                "INSERT INTO jobs (queue, job_key, payload, state, attempts, created_ms) \
                 VALUES ($1, $2, $3, 'pending', 0, $4) ON CONFLICT (queue, job_key) DO NOTHING",
            )
            .bind(&self.queue)
            .bind(key)
            .bind(payload.to_string())
            .bind(now_ms)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?
            .rows_affected();
        }
        tx.commit().await.map_err(db_err)?;
        Ok(added)
    }

    /// Takes the oldest pending job, or one whose holder's lease ran out.
    pub async fn claim(&self, now_ms: i64) -> Result<Claim> {
        // Jobs whose lease ran out too often are failed for good first.
        sqlx::query(
            "UPDATE jobs SET state = 'failed', finished_ms = $1, \
             error = 'its worker stopped before finishing it ' || attempts || ' times' \
             WHERE queue = $2 AND state = 'running' AND lease_until_ms < $1 AND attempts >= $3",
        )
        .bind(now_ms)
        .bind(&self.queue)
        .bind(MAX_ATTEMPTS)
        .execute(&self.pool)
        .await
        .map_err(db_err)?;
        let skip_locked = match Dialect::of(&self.pool) {
            Dialect::Postgres => "FOR UPDATE SKIP LOCKED",
            Dialect::Sqlite => "",
        };
        let row = sqlx::query(&format!(
            "UPDATE jobs SET state = 'running', lease_owner = $1, lease_until_ms = $2, \
             attempts = attempts + 1 \
             WHERE id = (SELECT id FROM jobs WHERE queue = $3 \
               AND (state = 'pending' OR (state = 'running' AND lease_until_ms < $4)) \
               ORDER BY id LIMIT 1 {skip_locked}) \
             RETURNING id, job_key, payload, attempts"
        ))
        .bind(&self.worker)
        .bind(self.lease_until(now_ms))
        .bind(&self.queue)
        .bind(now_ms)
        .fetch_optional(&self.pool)
        .await
        .map_err(db_err)?;
        if let Some(row) = row {
            let payload: String = row.try_get("payload").map_err(db_err)?;
            return Ok(Claim::Job(Job {
                id: row.try_get("id").map_err(db_err)?,
                key: row.try_get("job_key").map_err(db_err)?,
                payload: serde_json::from_str(&payload).map_err(json_err)?,
                attempts: row.try_get("attempts").map_err(db_err)?,
            }));
        }
        let progress = self.progress().await?;
        Ok(if progress.pending + progress.running > 0 {
            Claim::Wait
        } else {
            Claim::Drained
        })
    }

    /// Takes the job `key` (queuing it if new) unless another worker holds a live lease on it
    /// or it is done; `None` then. For work found one item at a time (a PACS poll).
    pub async fn claim_key(
        &self,
        key: &str,
        payload: &serde_json::Value,
        now_ms: i64,
    ) -> Result<Option<Job>> {
        let row = sqlx::query(
            "INSERT INTO jobs (queue, job_key, payload, state, attempts, lease_owner, \
             lease_until_ms, created_ms) VALUES ($1, $2, $3, 'running', 1, $4, $5, $6) \
             ON CONFLICT (queue, job_key) DO UPDATE SET state = 'running', \
             lease_owner = excluded.lease_owner, lease_until_ms = excluded.lease_until_ms, \
             attempts = jobs.attempts + 1, payload = excluded.payload \
             WHERE jobs.state = 'pending' \
                OR (jobs.state = 'running' AND jobs.lease_until_ms < $6) \
             RETURNING id, attempts",
        )
        .bind(&self.queue)
        .bind(key)
        .bind(payload.to_string())
        .bind(&self.worker)
        .bind(self.lease_until(now_ms))
        .bind(now_ms)
        .fetch_optional(&self.pool)
        .await
        .map_err(db_err)?;
        row.map(|row| {
            Ok(Job {
                id: row.try_get("id").map_err(db_err)?,
                key: key.to_string(),
                payload: payload.clone(),
                attempts: row.try_get("attempts").map_err(db_err)?,
            })
        })
        .transpose()
    }

    /// Extends this worker's lease on `job`; `false` if the lease was lost (it ran out and
    /// another worker took the job).
    pub async fn renew(&self, job: &Job, now_ms: i64) -> Result<bool> {
        let update = sqlx::query(
            "UPDATE jobs SET lease_until_ms = $1 \
             WHERE id = $2 AND state = 'running' AND lease_owner = $3",
        )
        .bind(self.lease_until(now_ms));
        self.if_held(job, update).await
    }

    /// Runs `update`, whose last two placeholders are the job's id and this worker's name
    /// (`WHERE id = .. AND state = 'running' AND lease_owner = ..`); whether this worker still
    /// held the job, and so whether anything changed.
    async fn if_held<'q>(
        &'q self,
        job: &Job,
        update: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    ) -> Result<bool> {
        let done = update
            .bind(job.id)
            .bind(&self.worker)
            .execute(&self.pool)
            .await
            .map_err(db_err)?;
        Ok(done.rows_affected() == 1)
    }

    /// Records `result` for `job`; `false` (and nothing recorded) if this worker no longer
    /// holds its lease.
    pub async fn complete(
        &self,
        job: &Job,
        result: &serde_json::Value,
        now_ms: i64,
    ) -> Result<bool> {
        self.finish(job, "done", Some(result.to_string()), None, now_ms)
            .await
    }

    /// Gives `job` back as pending (to be tried again, by any worker).
    pub async fn release(&self, job: &Job) -> Result<bool> {
        let update = sqlx::query(
            "UPDATE jobs SET state = 'pending', lease_owner = NULL, lease_until_ms = NULL \
             WHERE id = $1 AND state = 'running' AND lease_owner = $2",
        );
        self.if_held(job, update).await
    }

    /// Fails `job` for good with `error`.
    pub async fn fail(&self, job: &Job, error: &str, now_ms: i64) -> Result<bool> {
        self.finish(job, "failed", None, Some(error), now_ms).await
    }

    async fn finish(
        &self,
        job: &Job,
        state: &str,
        result: Option<String>,
        error: Option<&str>,
        now_ms: i64,
    ) -> Result<bool> {
        let update = sqlx::query(
            "UPDATE jobs SET state = $1, result = $2, error = $3, finished_ms = $4, \
             lease_until_ms = NULL WHERE id = $5 AND state = 'running' AND lease_owner = $6",
        )
        .bind(state)
        .bind(result)
        .bind(error)
        .bind(now_ms);
        self.if_held(job, update).await
    }

    /// The queue's jobs by state.
    pub async fn progress(&self) -> Result<Progress> {
        let rows =
            sqlx::query("SELECT state, COUNT(*) AS n FROM jobs WHERE queue = $1 GROUP BY state")
                .bind(&self.queue)
                .fetch_all(&self.pool)
                .await
                .map_err(db_err)?;
        let mut progress = Progress::default();
        for row in rows {
            let n: i64 = row.try_get("n").map_err(db_err)?;
            match row.try_get::<String, _>("state").map_err(db_err)?.as_str() {
                "pending" => progress.pending = n,
                "running" => progress.running = n,
                "done" => progress.done = n,
                _ => progress.failed = n,
            }
        }
        Ok(progress)
    }

    /// Every job of the queue, in the order they were queued.
    pub async fn jobs(&self) -> Result<Vec<JobRecord>> {
        let rows = sqlx::query(
            "SELECT job_key, state, attempts, lease_owner, result, error FROM jobs \
             WHERE queue = $1 ORDER BY id",
        )
        .bind(&self.queue)
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        rows.iter()
            .map(|row| {
                let result: Option<String> = row.try_get("result").map_err(db_err)?;
                Ok(JobRecord {
                    key: row.try_get("job_key").map_err(db_err)?,
                    state: row.try_get("state").map_err(db_err)?,
                    attempts: row.try_get("attempts").map_err(db_err)?,
                    worker: row.try_get("lease_owner").map_err(db_err)?,
                    result: result
                        .map(|r| serde_json::from_str(&r))
                        .transpose()
                        .map_err(json_err)?,
                    error: row.try_get("error").map_err(db_err)?,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    async fn queue(worker: &str, pool: &Pool) -> JobQueue {
        JobQueue::new(pool.clone(), "test", worker, Duration::from_millis(1000))
    }

    #[tokio::test]
    async fn each_job_goes_to_one_worker_and_a_dead_workers_job_comes_back() {
        let pool = crate::database::open("sqlite::memory:").await.unwrap();
        let (a, b) = (queue("a", &pool).await, queue("b", &pool).await);
        let jobs: Vec<_> = (0..3)
            .map(|i| (format!("k{i}"), json!({ "i": i })))
            .collect();
        assert_eq!(a.enqueue(&jobs, 0).await.unwrap(), 3);
        assert_eq!(b.enqueue(&jobs, 0).await.unwrap(), 0, "queued once");

        let Claim::Job(j0) = a.claim(10).await.unwrap() else {
            panic!()
        };
        let Claim::Job(j1) = b.claim(10).await.unwrap() else {
            panic!()
        };
        assert_eq!((j0.key.as_str(), j1.key.as_str()), ("k0", "k1"));
        assert_eq!(j0.payload, json!({ "i": 0 }));
        assert!(a.complete(&j0, &json!("r0"), 20).await.unwrap());
        // a dies holding k2; b waits while the lease lasts, then takes it over.
        let Claim::Job(j2) = a.claim(30).await.unwrap() else {
            panic!()
        };
        assert!(b.complete(&j1, &json!("r1"), 40).await.unwrap());
        assert_eq!(b.claim(500).await.unwrap(), Claim::Wait);
        let Claim::Job(again) = b.claim(1031).await.unwrap() else {
            panic!()
        };
        assert_eq!((again.key.as_str(), again.attempts), ("k2", 2));
        // The presumed-dead worker comes back: it can neither renew nor complete.
        assert!(!a.renew(&j2, 1040).await.unwrap());
        assert!(!a.complete(&j2, &json!("late"), 1040).await.unwrap());
        assert!(b.renew(&again, 1040).await.unwrap());
        assert!(b.complete(&again, &json!("r2"), 1050).await.unwrap());
        assert_eq!(a.claim(2000).await.unwrap(), Claim::Drained);

        let records = b.jobs().await.unwrap();
        let results: Vec<_> = records.iter().map(|r| r.result.clone().unwrap()).collect();
        assert_eq!(results, [json!("r0"), json!("r1"), json!("r2")]);
        assert_eq!(records[2].worker.as_deref(), Some("b"));
        let p = a.progress().await.unwrap();
        assert_eq!((p.done, p.total()), (3, 3));
    }

    #[tokio::test]
    async fn a_job_that_outlives_every_worker_is_failed_after_its_attempts() {
        let pool = crate::database::open("sqlite::memory:").await.unwrap();
        let q = queue("w", &pool).await;
        q.enqueue(&[("poison".into(), json!(null))], 0)
            .await
            .unwrap();
        let mut now = 0;
        for attempt in 1..=MAX_ATTEMPTS {
            let Claim::Job(j) = q.claim(now).await.unwrap() else {
                panic!()
            };
            assert_eq!(j.attempts, attempt);
            now += 2000; // the worker died: its lease runs out
        }
        assert_eq!(q.claim(now).await.unwrap(), Claim::Drained);
        let records = q.jobs().await.unwrap();
        assert_eq!(records[0].state, "failed");
        assert!(records[0].error.as_deref().unwrap().contains("3 times"));
    }

    #[tokio::test]
    async fn a_key_is_claimed_by_one_worker_until_released_or_its_lease_runs_out() {
        let pool = crate::database::open("sqlite::memory:").await.unwrap();
        let (a, b) = (queue("a", &pool).await, queue("b", &pool).await);
        let p = json!({"series": 1});
        let job = a.claim_key("s1", &p, 0).await.unwrap().unwrap();
        assert_eq!(b.claim_key("s1", &p, 10).await.unwrap(), None);
        assert!(a.release(&job).await.unwrap());
        let job = b.claim_key("s1", &p, 20).await.unwrap().unwrap();
        assert_eq!(job.attempts, 2);
        assert!(b.complete(&job, &json!("ok"), 30).await.unwrap());
        assert_eq!(
            a.claim_key("s1", &p, 5000).await.unwrap(),
            None,
            "done stays done"
        );
        // A lease that ran out is taken over.
        let c = a.claim_key("s2", &p, 0).await.unwrap().unwrap();
        assert_eq!(
            b.claim_key("s2", &p, 1001)
                .await
                .unwrap()
                .map(|j| j.attempts),
            Some(2)
        );
        assert!(!a.complete(&c, &json!("late"), 1002).await.unwrap());
    }
}
