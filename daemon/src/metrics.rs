//! Service metrics in the Prometheus text format (`GET /metrics`), named after vLLM's where they
//! mean the same: requests running and waiting, time to first token, inter-token latency and
//! end-to-end latency histograms, prompt and generation token counters, prefix-cache queries and
//! hits (in tokens), KV cache size, all per model. A `user` label is added to the counters and
//! histograms only when `http.per_user_metrics` is on, since it tells anyone who can read
//! `/metrics` who uses the service.
//!
//! Counters and histograms live in one process-wide registry (like the `prometheus` crate's
//! default registry); gauges are read from residency and admission when scraped, so they cannot
//! drift from the state they describe. Recording is O(buckets) under one mutex per observation.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use hyperllama_proto::v1 as pb;

use crate::state::Shared;

const TTFT_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0,
    80.0,
];
const ITL_BUCKETS: &[f64] =
    &[0.001, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5];
const E2E_BUCKETS: &[f64] = &[
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0,
    960.0,
];

/// Labels of one series: the model, and the user when per-user metrics are on.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Labels {
    model: String,
    user: Option<String>,
}

impl Labels {
    fn render(&self, extra: Option<(&str, &str)>) -> String {
        let mut out = format!("model=\"{}\"", escape(&self.model));
        if let Some(user) = &self.user {
            let _ = write!(out, ",user=\"{}\"", escape(user));
        }
        if let Some((k, v)) = extra {
            let _ = write!(out, ",{k}=\"{}\"", escape(v));
        }
        out
    }
}

fn escape(text: &str) -> String {
    text.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[derive(Debug, Clone)]
struct Histogram {
    buckets: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(buckets: &'static [f64]) -> Self {
        Self { buckets, counts: vec![0; buckets.len()], sum: 0.0, count: 0 }
    }

    fn observe(&mut self, value: f64) {
        for (bound, n) in self.buckets.iter().zip(self.counts.iter_mut()) {
            if value <= *bound {
                *n += 1;
            }
        }
        self.sum += value;
        self.count += 1;
    }
}

#[derive(Debug, Default)]
struct Series {
    prompt_tokens: BTreeMap<Labels, u64>,
    generation_tokens: BTreeMap<Labels, u64>,
    cache_queries: BTreeMap<Labels, u64>,
    cache_hits: BTreeMap<Labels, u64>,
    requests: BTreeMap<(Labels, &'static str), u64>,
    ttft: BTreeMap<Labels, Histogram>,
    itl: BTreeMap<Labels, Histogram>,
    e2e: BTreeMap<Labels, Histogram>,
}

/// The process-wide registry.
#[derive(Debug, Default)]
pub struct Metrics {
    series: Mutex<Series>,
}

/// The registry.
pub fn global() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::default)
}

/// How a metered request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Finished (stop, length).
    Finished,
    /// The client went away or the request was cancelled.
    Cancelled,
    /// It failed after it started.
    Failed,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Outcome::Finished => "finished",
            Outcome::Cancelled => "cancelled",
            Outcome::Failed => "failed",
        }
    }
}

/// Measures one streamed request: created when it starts, told of each chunk of text and of the
/// final stats. Dropped unfinished, it counts as cancelled.
#[derive(Debug)]
pub struct Meter {
    labels: Labels,
    started: Instant,
    last_token: Option<Instant>,
    done: bool,
}

impl Meter {
    /// Starts measuring a request for `model` (by `user`, kept only with per-user metrics on).
    pub fn start(model: &str, user: Option<&str>) -> Meter {
        Meter::started_at(model, user, Instant::now())
    }

    /// As [`Meter::start`], with the time the request arrived.
    pub fn started_at(model: &str, user: Option<&str>, started: Instant) -> Meter {
        Meter {
            labels: Labels { model: model.to_string(), user: user.map(str::to_string) },
            started,
            last_token: None,
            done: false,
        }
    }

    /// A chunk of generated text arrived.
    pub fn token(&mut self) {
        let now = Instant::now();
        let mut series = global().lock();
        match self.last_token {
            None => histogram(&mut series.ttft, &self.labels, TTFT_BUCKETS)
                .observe(now.duration_since(self.started).as_secs_f64()),
            Some(last) => histogram(&mut series.itl, &self.labels, ITL_BUCKETS)
                .observe(now.duration_since(last).as_secs_f64()),
        }
        self.last_token = Some(now);
    }

    /// The request finished with these counts.
    pub fn finish(mut self, stats: Option<&pb::Stats>, outcome: Outcome) {
        self.record(stats, outcome);
    }

    fn record(&mut self, stats: Option<&pb::Stats>, outcome: Outcome) {
        if self.done {
            return;
        }
        self.done = true;
        let mut series = global().lock();
        histogram(&mut series.e2e, &self.labels, E2E_BUCKETS).observe(self.started.elapsed().as_secs_f64());
        *series.requests.entry((self.labels.clone(), outcome.label())).or_default() += 1;
        if let Some(s) = stats {
            *series.prompt_tokens.entry(self.labels.clone()).or_default() += u64::from(s.prompt_eval_count);
            *series.generation_tokens.entry(self.labels.clone()).or_default() += u64::from(s.eval_count);
            *series.cache_queries.entry(self.labels.clone()).or_default() += u64::from(s.prompt_eval_count);
            *series.cache_hits.entry(self.labels.clone()).or_default() += u64::from(s.cached_tokens);
        }
    }
}

impl Drop for Meter {
    fn drop(&mut self) {
        self.record(None, Outcome::Cancelled);
    }
}

fn histogram<'a>(
    map: &'a mut BTreeMap<Labels, Histogram>,
    labels: &Labels,
    buckets: &'static [f64],
) -> &'a mut Histogram {
    map.entry(labels.clone()).or_insert_with(|| Histogram::new(buckets))
}

/// Records an embedding request's prompt tokens.
pub fn embedded(model: &str, user: Option<&str>, prompt_tokens: u32) {
    let labels = Labels { model: model.to_string(), user: user.map(str::to_string) };
    let mut series = global().lock();
    *series.prompt_tokens.entry(labels.clone()).or_default() += u64::from(prompt_tokens);
    *series.requests.entry((labels, Outcome::Finished.label())).or_default() += 1;
}

impl Metrics {
    fn lock(&self) -> std::sync::MutexGuard<'_, Series> {
        self.series.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The whole exposition: live gauges from `shared`, then counters and histograms.
    pub fn render(&self, shared: &Shared) -> String {
        let mut out = String::new();
        let loaded = shared.residency.list();
        let gauge =
            |out: &mut String, name: &str, help: &str, values: &mut dyn Iterator<Item = (String, f64)>| {
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
                for (model, value) in values {
                    let _ = writeln!(out, "{name}{{model=\"{}\"}} {value}", escape(&model));
                }
            };
        #[allow(clippy::cast_precision_loss)]
        let f = |n: u64| n as f64;
        gauge(
            &mut out,
            "hyperllama_requests_running",
            "Requests holding a slot of a loaded model (prefill or decode).",
            &mut loaded.iter().map(|m| (m.name.clone(), f(m.queue.counts().0 as u64))),
        );
        gauge(
            &mut out,
            "hyperllama_requests_waiting",
            "Requests waiting in the fair queue of a loaded model.",
            &mut loaded.iter().map(|m| (m.name.clone(), f(m.queue.counts().1 as u64))),
        );
        gauge(
            &mut out,
            "hyperllama_kv_cache_bytes",
            "Bytes of KV cache allocated by the model's runner.",
            &mut loaded.iter().map(|m| (m.name.clone(), f(m.runner().health.kv_bytes))),
        );
        gauge(
            &mut out,
            "hyperllama_kv_cache_usage_ratio",
            "Share of the model's sequence slots (and so of its KV cache) in use, 0 to 1.",
            &mut loaded.iter().map(|m| {
                let parallel = m.runner().health.parallel.max(1);
                (m.name.clone(), f(m.queue.counts().0 as u64) / f(u64::from(parallel)))
            }),
        );
        let _ = writeln!(
            out,
            "# HELP hyperllama_requests_in_flight Requests admitted by the daemon (all APIs).\n\
             # TYPE hyperllama_requests_in_flight gauge\nhyperllama_requests_in_flight {}",
            shared.lifecycle.in_flight()
        );
        let _ = writeln!(
            out,
            "# HELP hyperllama_requests_queued Requests waiting across all models.\n\
             # TYPE hyperllama_requests_queued gauge\nhyperllama_requests_queued {}",
            shared.residency.global_queue().waiting()
        );
        let series = self.lock();
        let counter = |out: &mut String, name: &str, help: &str, map: &BTreeMap<Labels, u64>| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (labels, value) in map {
                let _ = writeln!(out, "{name}{{{}}} {value}", labels.render(None));
            }
        };
        counter(
            &mut out,
            "hyperllama_prompt_tokens_total",
            "Prompt tokens processed.",
            &series.prompt_tokens,
        );
        counter(
            &mut out,
            "hyperllama_generation_tokens_total",
            "Tokens generated.",
            &series.generation_tokens,
        );
        counter(
            &mut out,
            "hyperllama_prefix_cache_queries_total",
            "Prompt tokens looked up in the prefix cache.",
            &series.cache_queries,
        );
        counter(
            &mut out,
            "hyperllama_prefix_cache_hits_total",
            "Prompt tokens served from the prefix cache.",
            &series.cache_hits,
        );
        let _ = writeln!(
            out,
            "# HELP hyperllama_requests_total Requests that started generating, by outcome.\n\
             # TYPE hyperllama_requests_total counter"
        );
        for ((labels, outcome), value) in &series.requests {
            let _ = writeln!(
                out,
                "hyperllama_requests_total{{{}}} {value}",
                labels.render(Some(("outcome", outcome)))
            );
        }
        let histograms = [
            (
                "hyperllama_time_to_first_token_seconds",
                "Time from request to the first generated text.",
                &series.ttft,
            ),
            ("hyperllama_inter_token_latency_seconds", "Time between chunks of generated text.", &series.itl),
            ("hyperllama_e2e_request_latency_seconds", "Time from request to its end.", &series.e2e),
        ];
        for (name, help, map) in histograms {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
            for (labels, h) in map {
                for (bound, n) in h.buckets.iter().zip(&h.counts) {
                    let _ = writeln!(
                        out,
                        "{name}_bucket{{{}}} {n}",
                        labels.render(Some(("le", &bound.to_string())))
                    );
                }
                let _ = writeln!(out, "{name}_bucket{{{}}} {}", labels.render(Some(("le", "+Inf"))), h.count);
                let _ = writeln!(out, "{name}_sum{{{}}} {}", labels.render(None), h.sum);
                let _ = writeln!(out, "{name}_count{{{}}} {}", labels.render(None), h.count);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let mut h = Histogram::new(&[0.1, 1.0]);
        h.observe(0.05);
        h.observe(0.5);
        h.observe(5.0);
        assert_eq!(h.counts, vec![1, 2]);
        assert_eq!(h.count, 3);
    }

    #[test]
    fn meters_record_tokens_and_cancellations() {
        let mut meter = Meter::start("metrics-test-model", None);
        meter.token();
        meter.token();
        let stats = pb::Stats { prompt_eval_count: 7, eval_count: 2, cached_tokens: 3, ..Default::default() };
        meter.finish(Some(&stats), Outcome::Finished);
        drop(Meter::start("metrics-test-model", Some("alice")));
        let series = global().lock();
        let labels = Labels { model: "metrics-test-model".into(), user: None };
        assert_eq!(series.prompt_tokens[&labels], 7);
        assert_eq!(series.cache_hits[&labels], 3);
        assert_eq!(series.ttft[&labels].count, 1);
        assert_eq!(series.itl[&labels].count, 1);
        let alice = Labels { model: "metrics-test-model".into(), user: Some("alice".into()) };
        assert_eq!(series.requests[&(alice, "cancelled")], 1);
    }

    #[test]
    fn label_values_are_escaped() {
        let labels = Labels { model: "a\"b\\c".into(), user: None };
        assert_eq!(labels.render(None), "model=\"a\\\"b\\\\c\"");
    }
}
