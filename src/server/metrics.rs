//! `GET /metrics`: the engine's counters and gauges, plus HTTP responses by status, in the
//! Prometheus text exposition format (version 0.0.4).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;

use super::AppState;
use crate::engine::service::{Metrics, ModelInfo};

/// Responses by HTTP status: what the engine never sees (bad requests, refused keys).
#[derive(Debug, Default)]
pub struct HttpCounters(Mutex<BTreeMap<u16, u64>>);

impl HttpCounters {
    fn count(&self, status: u16) {
        if let Ok(mut m) = self.0.lock() {
            *m.entry(status).or_default() += 1;
        }
    }

    fn snapshot(&self) -> BTreeMap<u16, u64> {
        self.0.lock().map(|m| m.clone()).unwrap_or_default()
    }
}

pub async fn count_responses(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let response = next.run(request).await;
    state.http.count(response.status().as_u16());
    response
}

/// A label value with `\`, `"` and newlines escaped.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

struct Out(String);

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &str, value: f64) {
        if labels.is_empty() {
            let _ = writeln!(self.0, "{name} {value}");
        } else {
            let _ = writeln!(self.0, "{name}{{{labels}}} {value}");
        }
    }

    fn one(&mut self, name: &str, kind: &str, help: &str, value: f64) {
        self.family(name, kind, help);
        self.sample(name, "", value);
    }
}

pub fn render(
    m: &Metrics,
    http: &HttpCounters,
    info: &ModelInfo,
    model_id: &str,
    version: &str,
) -> String {
    let mut o = Out(String::new());
    o.family(
        "sovereign_info",
        "gauge",
        "The served model and the adapter it runs on.",
    );
    o.sample(
        "sovereign_info",
        &format!(
            "version=\"{}\",model=\"{}\",name=\"{}\",arch=\"{}\",adapter=\"{}\",backend=\"{}\",n_ctx=\"{}\"",
            label(version),
            label(model_id),
            label(&info.name),
            label(&info.arch),
            label(&info.adapter),
            label(&info.backend),
            info.n_ctx
        ),
        1.0,
    );

    o.family(
        "sovereign_requests_total",
        "counter",
        "Generation requests by outcome (rejected: refused because the queue was full).",
    );
    for (outcome, n) in [
        ("finished", m.requests_finished),
        ("cancelled", m.requests_cancelled),
        ("failed", m.requests_failed),
        ("rejected", m.requests_rejected),
    ] {
        o.sample(
            "sovereign_requests_total",
            &format!("outcome=\"{outcome}\""),
            n as f64,
        );
    }
    o.one(
        "sovereign_requests_submitted_total",
        "counter",
        "Generation requests accepted into the queue.",
        m.requests_submitted as f64,
    );

    o.family(
        "sovereign_http_responses_total",
        "counter",
        "HTTP responses by status code.",
    );
    for (status, n) in http.snapshot() {
        o.sample(
            "sovereign_http_responses_total",
            &format!("code=\"{status}\""),
            n as f64,
        );
    }

    o.family(
        "sovereign_time_to_first_token_seconds",
        "summary",
        "Time from submission to the first generated token.",
    );
    o.sample(
        "sovereign_time_to_first_token_seconds_sum",
        "",
        m.time_to_first_token_seconds_sum,
    );
    o.sample(
        "sovereign_time_to_first_token_seconds_count",
        "",
        m.time_to_first_token_count as f64,
    );
    o.family(
        "sovereign_inter_token_latency_seconds",
        "summary",
        "Time between consecutive generated tokens of a request.",
    );
    o.sample(
        "sovereign_inter_token_latency_seconds_sum",
        "",
        m.inter_token_seconds_sum,
    );
    o.sample(
        "sovereign_inter_token_latency_seconds_count",
        "",
        m.inter_token_count as f64,
    );
    o.one(
        "sovereign_decode_tokens_per_second",
        "gauge",
        "Generated tokens per second over the last busy stretch.",
        m.decode_tokens_per_second,
    );

    o.one(
        "sovereign_prompt_tokens_total",
        "counter",
        "Prompt tokens of started requests.",
        m.prompt_tokens as f64,
    );
    o.one(
        "sovereign_cached_prompt_tokens_total",
        "counter",
        "Prompt tokens whose K/V came from the prefix cache.",
        m.cached_prompt_tokens as f64,
    );
    o.one(
        "sovereign_generated_tokens_total",
        "counter",
        "Generated tokens.",
        m.generated_tokens as f64,
    );
    o.one(
        "sovereign_draft_tokens_total",
        "counter",
        "Tokens drafted by prompt lookup (--draft).",
        m.draft_tokens as f64,
    );
    o.one(
        "sovereign_draft_tokens_accepted_total",
        "counter",
        "Drafted tokens that the model sampled.",
        m.draft_tokens_accepted as f64,
    );
    o.one(
        "sovereign_embedding_requests_total",
        "counter",
        "Embedding requests submitted.",
        m.embedding_requests as f64,
    );
    o.one(
        "sovereign_embedded_inputs_total",
        "counter",
        "Inputs embedded (a request may hold several).",
        m.embedded_inputs as f64,
    );
    o.one(
        "sovereign_prefix_cache_hits_total",
        "counter",
        "Requests that reused cached prompt K/V.",
        m.prefix_cache_hits as f64,
    );

    o.one(
        "sovereign_queue_depth",
        "gauge",
        "Requests waiting to start.",
        m.queue_depth as f64,
    );
    o.one(
        "sovereign_running_sequences",
        "gauge",
        "Sequences being generated.",
        m.running_sequences as f64,
    );
    o.one(
        "sovereign_kv_pages_total",
        "gauge",
        "KV cache pages in the pool.",
        m.kv_pages_total as f64,
    );
    o.one(
        "sovereign_kv_pages_used",
        "gauge",
        "KV cache pages in use.",
        m.kv_pages_used as f64,
    );
    o.one(
        "sovereign_kv_pages_cached",
        "gauge",
        "KV cache pages only the prefix cache holds (reused on a hit, reclaimed when needed).",
        m.kv_pages_cached as f64,
    );
    o.one(
        "sovereign_kv_pages_free",
        "gauge",
        "KV cache pages holding nothing.",
        m.kv_pages_total
            .saturating_sub(m.kv_pages_used)
            .saturating_sub(m.kv_pages_cached) as f64,
    );
    o.one(
        "sovereign_kv_tokens_stored",
        "gauge",
        "Positions of running sequences held in used pages (the rest of those pages is unused).",
        m.kv_tokens_stored as f64,
    );
    o.one(
        "sovereign_requests_preempted_total",
        "counter",
        "Times a running sequence was paused for lack of KV pages (recomputed when it resumes).",
        m.requests_preempted as f64,
    );
    o.one(
        "sovereign_kv_page_tokens",
        "gauge",
        "Tokens per KV cache page.",
        m.kv_page_tokens as f64,
    );
    o.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_family_once() {
        let http = HttpCounters::default();
        http.count(200);
        http.count(400);
        http.count(400);
        let info = ModelInfo {
            name: "a \"b\"".into(),
            arch: "llama".into(),
            n_ctx: 8,
            n_vocab: 9,
            adapter: "x\\y".into(),
            backend: "Vulkan".into(),
            gpu_bytes: 0,
            n_embd: 4,
            pooling: crate::engine::Pooling::Mean,
        };
        let m = Metrics {
            kv_pages_total: 10,
            kv_pages_used: 3,
            kv_pages_cached: 2,
            ..Default::default()
        };
        let text = render(&m, &http, &info, "m", "0.1.0");
        assert!(text.contains("sovereign_http_responses_total{code=\"400\"} 2\n"));
        assert!(text.contains("sovereign_kv_pages_free 5\n"));
        assert!(text.contains("sovereign_kv_pages_cached 2\n"));
        assert!(text.contains("name=\"a \\\"b\\\"\""));
        assert!(text.contains("adapter=\"x\\\\y\""));
        let mut seen = std::collections::HashSet::new();
        for line in text.lines().filter(|l| l.starts_with("# TYPE")) {
            assert!(seen.insert(line.to_string()), "{line} twice");
        }
    }
}
