//! Prometheus metrics without a registry crate: request counts by route and status, request
//! latency and inference time histograms, and the inference queue depth.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};

const BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, v: f64) {
        for (i, b) in BUCKETS.iter().enumerate() {
            if v <= *b {
                self.counts[i] += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }

    fn render(&self, name: &str, labels: &str, out: &mut String) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (i, b) in BUCKETS.iter().enumerate() {
            out.push_str(&format!(
                "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {}\n",
                self.counts[i]
            ));
        }
        out.push_str(&format!(
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}\n",
            self.count
        ));
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        out.push_str(&format!(
            "{name}_sum{braces} {}\n{name}_count{braces} {}\n",
            self.sum, self.count
        ));
    }
}

#[derive(Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    latency: Mutex<BTreeMap<String, Histogram>>,
    inference: Mutex<Histogram>,
    pub queue_depth: AtomicI64,
    pub rejected_busy: AtomicI64,
}

impl Metrics {
    pub fn observe_request(&self, route: &str, status: u16, seconds: f64) {
        if let Ok(mut m) = self.requests.lock() {
            *m.entry((route.to_string(), status)).or_default() += 1;
        }
        if let Ok(mut m) = self.latency.lock() {
            m.entry(route.to_string()).or_default().observe(seconds);
        }
    }

    pub fn observe_inference(&self, seconds: f64) {
        if let Ok(mut h) = self.inference.lock() {
            h.observe(seconds);
        }
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str("# HELP oncolens_http_requests_total HTTP requests by route and status.\n# TYPE oncolens_http_requests_total counter\n");
        if let Ok(m) = self.requests.lock() {
            for ((route, status), n) in m.iter() {
                out.push_str(&format!(
                    "oncolens_http_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}\n"
                ));
            }
        }
        out.push_str("# HELP oncolens_http_request_duration_seconds Request latency.\n# TYPE oncolens_http_request_duration_seconds histogram\n");
        if let Ok(m) = self.latency.lock() {
            for (route, h) in m.iter() {
                h.render(
                    "oncolens_http_request_duration_seconds",
                    &format!("route=\"{route}\""),
                    &mut out,
                );
            }
        }
        out.push_str("# HELP oncolens_inference_duration_seconds Decode, pre-processing, inference and Grad-CAM of one scan.\n# TYPE oncolens_inference_duration_seconds histogram\n");
        if let Ok(h) = self.inference.lock() {
            h.render("oncolens_inference_duration_seconds", "", &mut out);
        }
        out.push_str(&format!(
            "# HELP oncolens_inference_queue_depth Analyses waiting for a worker.\n# TYPE oncolens_inference_queue_depth gauge\noncolens_inference_queue_depth {}\n",
            self.queue_depth.load(Ordering::Relaxed)
        ));
        out.push_str(&format!(
            "# HELP oncolens_rejected_busy_total Analyses refused with 503 because the queue was full.\n# TYPE oncolens_rejected_busy_total counter\noncolens_rejected_busy_total {}\n",
            self.rejected_busy.load(Ordering::Relaxed)
        ));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counts_and_cumulative_buckets() {
        let m = Metrics::default();
        m.observe_request("/healthz", 200, 0.003);
        m.observe_request("/healthz", 200, 0.2);
        m.observe_inference(0.07);
        let text = m.render();
        assert!(text.contains("oncolens_http_requests_total{route=\"/healthz\",status=\"200\"} 2"));
        assert!(text.contains(
            "oncolens_http_request_duration_seconds_bucket{route=\"/healthz\",le=\"0.005\"} 1"
        ));
        assert!(text.contains(
            "oncolens_http_request_duration_seconds_bucket{route=\"/healthz\",le=\"0.25\"} 2"
        ));
        assert!(text.contains("oncolens_inference_duration_seconds_count 1"));
    }
}
