//! The server's memory budget: how many analyses may run and how many uploads may wait so that
//! their worst case fits the memory the operator allows.
//!
//! Each admitted request may hold an upload of up to `max_body_bytes` while it waits or runs;
//! a running one may also hold the files unpacked from a zip (at most as many bytes again);
//! each running analysis may in addition decode up to [`crate::imaging::decode::MAX_DECODED_BYTES`]
//! and work on planes of at most [`crate::imaging::decode::WORKING_SIDE`] a side
//! ([`ANALYSIS_PEAK_BYTES`] in all, measured: docs/benchmarks.md). Workers, then the queue, are
//! reduced until `BASE_BYTES + workers x (analysis + 2 x body) + queue x body` fits the budget.

use super::ServeConfig;
use crate::core::error::{Result, SettingError};

const MIB: u64 = 1024 * 1024;

/// The default budget: 1.5 GiB.
pub const DEFAULT_MEMORY_BUDGET: u64 = 1536 * MIB;
/// The process before any analysis: model, runtime, database connections.
pub const BASE_BYTES: u64 = 96 * MIB;
/// One analysis of the worst admissible upload, beyond its body.
pub const ANALYSIS_PEAK_BYTES: u64 = 320 * MIB;

/// Workers and queue that fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    pub workers: usize,
    pub queue: usize,
    pub requested_workers: usize,
    pub requested_queue: usize,
    /// Memory at the worst case of this plan.
    pub worst_case_bytes: u64,
    pub budget_bytes: u64,
}

impl Plan {
    pub fn describe(&self) -> String {
        let mut s = format!(
            "memory budget {} MiB: {} workers, {} queued uploads, worst case {} MiB",
            self.budget_bytes / MIB,
            self.workers,
            self.queue,
            self.worst_case_bytes / MIB
        );
        if (self.workers, self.queue) != (self.requested_workers, self.requested_queue) {
            s.push_str(&format!(
                " (reduced from {} workers and {} queued to fit)",
                self.requested_workers, self.requested_queue
            ));
        }
        s
    }
}

/// The plan for `config`; an error when not even one analysis fits.
pub fn plan(config: &ServeConfig) -> Result<Plan> {
    let body = config.max_body_bytes as u64;
    // The upload, and the files a zip unpacks to (bounded by the body size again).
    let per_worker = ANALYSIS_PEAK_BYTES + 2 * body;
    let budget = config.memory_budget_bytes;
    let room = budget.saturating_sub(BASE_BYTES);
    if room < per_worker {
        return Err(SettingError::new(
            "memory budget",
            format!(
                "{} MiB does not hold one analysis ({} MiB with the process and a {} MiB upload); \
                 raise --memory-budget-mb or lower --max-upload-mb",
                budget / MIB,
                (BASE_BYTES + per_worker).div_ceil(MIB),
                body.div_ceil(MIB)
            ),
        )
        .into());
    }
    let requested_workers = config.workers.max(1);
    let workers = requested_workers.min((room / per_worker) as usize).max(1);
    let left = room - workers as u64 * per_worker;
    let queue = left
        .checked_div(body)
        .map_or(config.queue, |fit| config.queue.min(fit as usize));
    Ok(Plan {
        workers,
        queue,
        requested_workers,
        requested_queue: config.queue,
        worst_case_bytes: BASE_BYTES + workers as u64 * per_worker + queue as u64 * body,
        budget_bytes: budget,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(workers: usize, queue: usize, body_mib: u64, budget_mib: u64) -> ServeConfig {
        ServeConfig {
            workers,
            queue,
            max_body_bytes: (body_mib * MIB) as usize,
            memory_budget_bytes: budget_mib * MIB,
            ..Default::default()
        }
    }

    #[test]
    fn the_worst_case_fits_the_budget_and_workers_shrink_first() {
        // 2 cores' defaults fit 1.5 GiB unchanged.
        let p = plan(&config(2, 8, 50, 1536)).unwrap();
        assert_eq!((p.workers, p.queue), (2, 8));
        assert!(p.worst_case_bytes <= p.budget_bytes);
        // 16 cores do not: fewer workers, then a shorter queue.
        let p = plan(&config(16, 64, 50, 1536)).unwrap();
        assert!(p.workers < 16 && p.queue < 64, "{p:?}");
        assert!(p.worst_case_bytes <= p.budget_bytes, "{p:?}");
        assert!(p.describe().contains("reduced"));
        // Too small for one analysis: a clear refusal.
        let err = plan(&config(2, 8, 50, 256)).unwrap_err().sentence();
        assert!(err.contains("does not hold one analysis"), "{err}");
    }
}
