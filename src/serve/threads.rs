//! The analysis threads: a fixed set, one per worker, that run every analysis, instead of
//! tokio's blocking pool, which grows a thread whenever none is idle (the object store's file
//! writes take blocking threads too). An analysis allocates tens of megabytes; each new thread
//! gets an allocator arena of its own that keeps that memory once it has held it, so a pool
//! that keeps adding threads keeps adding resident memory. With fixed threads the server's
//! memory stops growing once each has run an analysis (`tests/memory.rs`).

use std::panic::AssertUnwindSafe;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};

type Job = Box<dyn FnOnce() + Send>;

/// Threads that take analyses from one queue.
pub struct AnalysisThreads {
    jobs: Mutex<Sender<Job>>,
}

/// The analysis did not run to its end (it panicked, or the threads are gone).
#[derive(Debug)]
pub struct Lost;

impl AnalysisThreads {
    /// Starts `n` threads (at least one).
    pub fn new(n: usize) -> Self {
        let (jobs, queue) = channel::<Job>();
        let queue = Arc::new(Mutex::new(queue));
        for i in 0..n.max(1) {
            let queue = queue.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("analysis-{i}"))
                .spawn(move || run(&queue));
            if let Err(e) = spawned {
                tracing::error!("an analysis thread could not be started: {e}");
            }
        }
        Self {
            jobs: Mutex::new(jobs),
        }
    }

    /// Runs `work` on one of the threads and waits for it without blocking the runtime.
    pub async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Lost> {
        let (done, answer) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = done.send(work());
        });
        self.jobs
            .lock()
            .map_err(|_| Lost)?
            .send(job)
            .map_err(|_| Lost)?;
        answer.await.map_err(|_| Lost)
    }
}

fn run(queue: &Mutex<Receiver<Job>>) {
    loop {
        let job = match queue.lock() {
            Ok(queue) => queue.recv(),
            Err(_) => return,
        };
        let Ok(job) = job else { return };
        // A panicking analysis loses its answer (the caller gets `Lost`), not the thread.
        if std::panic::catch_unwind(AssertUnwindSafe(job)).is_err() {
            tracing::error!("an analysis panicked");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn work_runs_on_the_fixed_threads_and_a_panic_loses_only_its_answer() {
        let threads = AnalysisThreads::new(2);
        let names: Vec<String> = futures_util::future::join_all((0..16).map(|_| {
            threads.run(|| {
                std::thread::current()
                    .name()
                    .unwrap_or_default()
                    .to_string()
            })
        }))
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
        assert!(
            names.iter().all(|n| n == "analysis-0" || n == "analysis-1"),
            "{names:?}"
        );
        assert!(threads.run(|| panic!("boom")).await.is_err());
        assert_eq!(threads.run(|| 2 + 2).await.unwrap(), 4);
    }
}
