//! The served engines' own Prometheus metrics (vLLM's `vllm:*`, MAX's `maxserve_*`, their
//! process metrics), scraped from each loaded model's server on loopback when `/metrics` is read
//! and folded into hyperllamad's exposition with `model` and `engine` labels. Families of the
//! same name from several models are merged so each family appears once.

use std::collections::BTreeMap;
use std::time::Duration;

/// One server to scrape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The model's name as listings show it.
    pub model: String,
    /// "vllm" or "max".
    pub engine: String,
    /// Its `/metrics` URL on loopback.
    pub url: String,
}

/// A metric family: its HELP/TYPE lines and samples.
#[derive(Debug, Default)]
struct Family {
    meta: Vec<String>,
    samples: Vec<String>,
}

/// Scrapes every target (at most `timeout` each, concurrently) and renders the merged families.
pub async fn scrape(targets: &[Target], timeout: Duration) -> String {
    if targets.is_empty() {
        return String::new();
    }
    let Ok(http) = super::loopback_client(Some(timeout)) else {
        return String::new();
    };
    let fetches = targets.iter().map(|t| {
        let http = http.clone();
        async move {
            let text = async { http.get(&t.url).send().await?.error_for_status()?.text().await }.await;
            (t, text)
        }
    });
    let mut families: BTreeMap<String, Family> = BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    for (target, text) in futures::future::join_all(fetches).await {
        match text {
            Ok(text) => merge(&mut families, &mut order, target, &text),
            Err(error) => {
                tracing::debug!(model = %target.model, %error, "cannot scrape the engine's metrics")
            }
        }
    }
    let mut out = String::new();
    for name in order {
        if let Some(family) = families.get(&name) {
            for line in family.meta.iter().chain(&family.samples) {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

/// Adds one server's exposition, relabelled, to `families`.
fn merge(families: &mut BTreeMap<String, Family>, order: &mut Vec<String>, target: &Target, text: &str) {
    let mut current = String::new();
    for line in text.lines().map(str::trim_end).filter(|l| !l.is_empty()) {
        if let Some(meta) = line.strip_prefix("# ") {
            let mut words = meta.split_whitespace();
            let (kind, name) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
            if kind != "HELP" && kind != "TYPE" {
                continue;
            }
            current = name.to_string();
            let family = families.entry(current.clone()).or_insert_with(|| {
                order.push(current.clone());
                Family::default()
            });
            if !family.meta.iter().any(|m| m.starts_with(&format!("# {kind} "))) {
                family.meta.push(line.to_string());
            }
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let sample_name = line.split(['{', ' ']).next().unwrap_or("");
        if current.is_empty() || !sample_name.starts_with(current.as_str()) {
            current = sample_name.to_string();
        }
        let family = families.entry(current.clone()).or_insert_with(|| {
            order.push(current.clone());
            Family::default()
        });
        if let Some(sample) = relabel(line, &target.model, &target.engine) {
            family.samples.push(sample);
        }
    }
}

fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// `name{labels} value` with `model` and `engine` added (theirs win for a `model` they set).
fn relabel(line: &str, model: &str, engine: &str) -> Option<String> {
    let ours = |has_model: bool| {
        let engine = format!("engine=\"{}\"", escape(engine));
        if has_model { engine } else { format!("model=\"{}\",{engine}", escape(model)) }
    };
    match line.find(['{', ' ']) {
        Some(at) if line.as_bytes()[at] == b'{' => {
            let (name, rest) = line.split_at(at);
            let inner = &rest[1..];
            let has_model = inner.starts_with("model=") || inner.contains(",model=");
            let sep = if inner.starts_with('}') { "" } else { "," };
            Some(format!("{name}{{{}{sep}{inner}", ours(has_model)))
        }
        Some(at) => {
            let (name, value) = line.split_at(at);
            Some(format!("{name}{{{}}}{value}", ours(false)))
        }
        None => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_get_model_and_engine_labels() {
        assert_eq!(relabel("up 1", "m", "max").unwrap(), "up{model=\"m\",engine=\"max\"} 1");
        assert_eq!(
            relabel("vllm:x{model_name=\"/p\"} 2.0", "m", "vllm").unwrap(),
            "vllm:x{model=\"m\",engine=\"vllm\",model_name=\"/p\"} 2.0"
        );
        assert_eq!(relabel("x{} 3", "m", "max").unwrap(), "x{model=\"m\",engine=\"max\"} 3");
        assert_eq!(relabel("x{model=\"a\"} 3", "m", "max").unwrap(), "x{engine=\"max\",model=\"a\"} 3");
    }

    #[test]
    fn families_from_two_servers_are_merged() {
        let text = "# HELP t_seconds Time.\n# TYPE t_seconds histogram\nt_seconds_bucket{le=\"1\"} 1\nt_seconds_count 1\n";
        let (mut families, mut order) = (BTreeMap::new(), Vec::new());
        let a = Target { model: "a".into(), engine: "max".into(), url: String::new() };
        let b = Target { model: "b".into(), engine: "vllm".into(), url: String::new() };
        merge(&mut families, &mut order, &a, text);
        merge(&mut families, &mut order, &b, text);
        assert_eq!(order, vec!["t_seconds".to_string()]);
        let family = &families["t_seconds"];
        assert_eq!(family.meta.len(), 2);
        assert_eq!(family.samples.len(), 4);
        assert!(family.samples[2].starts_with("t_seconds_bucket{model=\"b\",engine=\"vllm\",le=\"1\"}"));
    }
}
