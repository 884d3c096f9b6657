//! Store and residency commands: list, show, pull, push, cp, rm, ps, stop.

use std::fmt::Write as _;
use std::io::{IsTerminal as _, Write as _};

use hyperllama_proto::v1 as pb;
use tokio_stream::StreamExt;

use crate::cli::{PullArgs, ShowArgs};
use crate::client::Client;
use crate::error::{CtlError, Result};
use crate::format::{now, relative, size, table};

/// `list`: NAME, ID, SIZE, MODIFIED as Ollama prints them.
pub async fn list(client: &mut Client) -> Result<String> {
    let models = client.list(pb::ListRequest {}).await?.into_inner().models;
    let now = now();
    let rows: Vec<Vec<String>> = models
        .iter()
        .map(|m| {
            let name = if m.broken { format!("{} (broken)", m.name) } else { m.name.clone() };
            let id: String = m.digest.trim_start_matches("sha256:").chars().take(12).collect();
            vec![name, id, size(m.size_bytes), relative(m.modified_at, now)]
        })
        .collect();
    Ok(table(&["NAME", "ID", "SIZE", "MODIFIED"], &rows))
}

/// `ps`: Ollama's columns (NAME, ID, SIZE, PROCESSOR, CONTEXT, UNTIL), then HyperLlama's: engine,
/// CPUs, KV memory and how much of the runner's memory is huge-page backed, active requests, pid.
pub async fn ps(client: &mut Client) -> Result<String> {
    let models = client.ps(pb::PsRequest {}).await?.into_inner().models;
    let now = now();
    let rows: Vec<Vec<String>> = models
        .iter()
        .map(|m| {
            let id: String = m.digest.trim_start_matches("sha256:").chars().take(12).collect();
            let processor = if m.gpus.is_empty() {
                "100% CPU".to_string()
            } else {
                let list: Vec<String> = m.gpus.iter().map(u32::to_string).collect();
                format!("100% GPU {}", list.join(","))
            };
            let until = if m.expires_at == 0 { "Forever".to_string() } else { relative(m.expires_at, now) };
            let cpus = if m.cpus.is_empty() { "all".to_string() } else { m.cpus.clone() };
            vec![
                m.name.clone(),
                id,
                size(m.size_bytes),
                processor,
                m.context_length.to_string(),
                until,
                m.engine.clone(),
                cpus,
                size(m.kv_bytes),
                size(m.kv_huge_page_bytes),
                m.active_requests.to_string(),
                m.runner_pid.to_string(),
            ]
        })
        .collect();
    Ok(table(
        &[
            "NAME",
            "ID",
            "SIZE",
            "PROCESSOR",
            "CONTEXT",
            "UNTIL",
            "ENGINE",
            "CPUS",
            "KV",
            "HUGE PAGES",
            "ACTIVE",
            "PID",
        ],
        &rows,
    ))
}

/// `show`.
pub async fn show(client: &mut Client, args: &ShowArgs) -> Result<String> {
    let request = pb::ShowRequest { model: args.model.clone(), verbose: args.verbose };
    let s = client.show(request).await?.into_inner();
    if args.license {
        return Ok(s.license + "\n");
    }
    if args.modelfile {
        return Ok(s.modelfile);
    }
    if args.parameters {
        return Ok(s.parameters.iter().map(|p| format!("{p}\n")).collect());
    }
    if args.system {
        return Ok(s.system + "\n");
    }
    if args.template {
        return Ok(s.template + "\n");
    }
    let mut out = String::from("  Model\n");
    let _ = writeln!(out, "    architecture        {}", s.architecture);
    let _ = writeln!(out, "    parameters          {}", human_count(s.parameter_count));
    let _ = writeln!(out, "    context length      {}", s.context_length);
    let _ = writeln!(out, "    embedding length    {}", s.embedding_length);
    let _ = writeln!(out, "    quantization        {}", s.quantization);
    if !s.capabilities.is_empty() {
        out.push_str("\n  Capabilities\n");
        for c in &s.capabilities {
            let _ = writeln!(out, "    {c}");
        }
    }
    if !s.parameters.is_empty() {
        out.push_str("\n  Parameters\n");
        for p in &s.parameters {
            let _ = writeln!(out, "    {p}");
        }
    }
    if !s.system.is_empty() {
        let _ = writeln!(out, "\n  System\n    {}", s.system.lines().next().unwrap_or_default());
    }
    if !s.license.is_empty() {
        let _ = writeln!(out, "\n  License\n    {}", s.license.lines().next().unwrap_or_default());
    }
    if args.verbose && !s.metadata.is_empty() {
        out.push_str("\n  Metadata\n");
        let mut keys: Vec<_> = s.metadata.iter().collect();
        keys.sort();
        for (k, v) in keys {
            let _ = writeln!(out, "    {k:<40} {v}");
        }
    }
    Ok(out)
}

fn human_count(n: u64) -> String {
    #[allow(clippy::cast_precision_loss)]
    let f = n as f64;
    match n {
        0 => "unknown".into(),
        1..=999_999 => format!("{:.0}K", f / 1e3),
        1_000_000..=999_999_999 => format!("{:.0}M", f / 1e6),
        _ => format!("{:.1}B", f / 1e9),
    }
}

/// Draws pull/create progress as Ollama does: one line per status, one bar per layer. On a
/// terminal the bars are redrawn in place; otherwise each line is printed once (a bar when its
/// layer is complete), so logs stay readable.
pub async fn render_progress(mut stream: tonic::Streaming<pb::Progress>) -> Result<()> {
    let mut bars = Bars { tty: std::io::stderr().is_terminal(), lines: Vec::new(), drawn: 0 };
    while let Some(event) = stream.next().await {
        bars.update(&event?);
    }
    Ok(())
}

/// The progress lines drawn so far.
struct Bars {
    tty: bool,
    /// (key, text, printed once complete)
    lines: Vec<(String, String, bool)>,
    drawn: usize,
}

impl Bars {
    fn update(&mut self, p: &pb::Progress) {
        let has_bar = p.total > 0;
        let key = if has_bar && !p.digest.is_empty() { p.digest.clone() } else { p.status.clone() };
        let text = if has_bar { bar_line(p) } else { p.status.clone() };
        let complete = !has_bar || p.completed >= p.total;
        let index = match self.lines.iter().position(|(k, _, _)| *k == key) {
            Some(i) => {
                self.lines[i].1 = text;
                i
            }
            None => {
                self.lines.push((key, text, false));
                self.lines.len() - 1
            }
        };
        let mut stderr = std::io::stderr();
        if self.tty {
            // Move up over what was drawn, then redraw every line.
            if self.drawn > 0 {
                let _ = write!(stderr, "\x1b[{}A", self.drawn);
            }
            for (_, line, _) in &self.lines {
                let _ = writeln!(stderr, "\x1b[2K{line}");
            }
            self.drawn = self.lines.len();
        } else if complete && !self.lines[index].2 {
            self.lines[index].2 = true;
            let _ = writeln!(stderr, "{}", self.lines[index].1);
        }
        let _ = stderr.flush();
    }
}

/// "pulling 74701a8c35f6:  45% ▕████        ▏ 900 MB/2.0 GB" (at 100%, just the total).
fn bar_line(p: &pb::Progress) -> String {
    let completed = p.completed.min(p.total);
    let pct = (completed.saturating_mul(100)).checked_div(p.total).unwrap_or(0);
    let filled = (completed.saturating_mul(30)).checked_div(p.total).unwrap_or(0);
    let bar: String = (0..30).map(|i| if i < filled { '█' } else { ' ' }).collect();
    let amount =
        if completed >= p.total { size(p.total) } else { format!("{}/{}", size(completed), size(p.total)) };
    format!("{}: {pct:>3}% ▕{bar}▏ {amount}", p.status)
}

/// `pull`.
pub async fn pull(client: &mut Client, args: &PullArgs) -> Result<()> {
    let request = pb::PullRequest { model: args.model.clone(), insecure: args.insecure };
    let stream = client.pull(request).await?.into_inner();
    render_progress(stream).await
}

/// `push`: the daemon keeps one shared store and does not publish models.
pub fn push(args: &PullArgs) -> Result<()> {
    Err(CtlError::Usage(format!(
        "pushing `{}` is not supported: hyperllamad keeps a local shared store and does not publish models",
        args.model
    )))
}

/// `cp`.
pub async fn copy(client: &mut Client, source: &str, destination: &str) -> Result<String> {
    let request = pb::CopyRequest { source: source.into(), destination: destination.into() };
    client.copy(request).await?;
    Ok(format!("copied '{source}' to '{destination}'\n"))
}

/// `rm`.
pub async fn remove(client: &mut Client, models: &[String]) -> Result<String> {
    let mut out = String::new();
    for model in models {
        client.delete(pb::DeleteRequest { model: model.clone() }).await?;
        let _ = writeln!(out, "deleted '{model}'");
    }
    Ok(out)
}

/// `stop`.
pub async fn stop(client: &mut Client, model: &str) -> Result<()> {
    client.unload(pb::UnloadRequest { model: model.into() }).await?;
    let _ = std::io::stdout().flush();
    Ok(())
}
