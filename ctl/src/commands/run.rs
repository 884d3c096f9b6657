//! `hyperctl run`: pulls the model first when it is missing (and the caller may pull), then answers
//! one prompt, or holds an interactive chat with `/bye`, `/set parameter`, `/show` and `"""`
//! multi-line input, where Ctrl-C cancels the reply, not the session.

use std::io::{BufRead, IsTerminal, Read, Write};
use std::time::Instant;

use hyperllama_proto::v1 as pb;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;

use crate::cli::{PullArgs, RunArgs};
use crate::client::Client;
use crate::commands::{keep_alive_seconds, models};
use crate::error::{CtlError, Result};

/// Runs the command.
pub async fn run(client: &mut Client, args: &RunArgs) -> Result<()> {
    ensure_present(client, args).await?;
    if !args.gpus.is_empty() || args.engine.is_some() {
        let request = pb::LoadRequest {
            model: args.model.clone(),
            gpus: args.gpus.clone(),
            keep_alive_seconds: args.keepalive.as_deref().map(keep_alive_seconds).transpose()?,
            context_length: 0,
            engine: args.engine.clone().unwrap_or_default(),
        };
        client.load(request).await?;
    }
    let mut prompt = args.prompt.join(" ");
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        let mut piped = String::new();
        stdin.lock().read_to_string(&mut piped)?;
        if !piped.is_empty() {
            prompt = if prompt.is_empty() { piped } else { format!("{prompt}\n\n{piped}") };
        }
    }
    if !prompt.is_empty() {
        return generate(client, args, &prompt).await;
    }
    interactive(client, args).await
}

/// Shows the model; when missing, pulls it (the daemon refuses if the caller may not pull, naming
/// who can).
async fn ensure_present(client: &mut Client, args: &RunArgs) -> Result<()> {
    match client.show(pb::ShowRequest { model: args.model.clone(), verbose: false }).await {
        Ok(_) => Ok(()),
        Err(status) if status.code() == tonic::Code::NotFound => {
            models::pull(client, &PullArgs { model: args.model.clone(), insecure: args.insecure }).await
        }
        // A daemon without a store answers for itself when asked to generate.
        Err(status) if status.code() == tonic::Code::Unimplemented => Ok(()),
        Err(status) => Err(status.into()),
    }
}

fn options(params: &[(String, String)]) -> Result<pb::Options> {
    let mut o = pb::Options::default();
    for (key, value) in params {
        let bad = || CtlError::Usage(format!("invalid value `{value}` for parameter `{key}`"));
        let f = || value.parse::<f32>().map_err(|_| bad());
        let i = || value.parse::<i32>().map_err(|_| bad());
        match key.as_str() {
            "temperature" => o.temperature = Some(f()?),
            "top_k" => o.top_k = Some(i()?),
            "top_p" => o.top_p = Some(f()?),
            "min_p" => o.min_p = Some(f()?),
            "typical_p" => o.typical_p = Some(f()?),
            "repeat_last_n" => o.repeat_last_n = Some(i()?),
            "repeat_penalty" => o.repeat_penalty = Some(f()?),
            "presence_penalty" => o.presence_penalty = Some(f()?),
            "frequency_penalty" => o.frequency_penalty = Some(f()?),
            "seed" => o.seed = Some(value.parse().map_err(|_| bad())?),
            "num_predict" => o.num_predict = Some(i()?),
            "num_ctx" => o.num_ctx = Some(i()?),
            "stop" => o.stop.push(value.clone()),
            _ => return Err(CtlError::Usage(format!("unknown parameter `{key}`"))),
        }
    }
    Ok(o)
}

fn think(args: &RunArgs) -> Option<bool> {
    args.think.as_deref().map(|t| !matches!(t, "false" | "0" | "no"))
}

async fn generate(client: &mut Client, args: &RunArgs, prompt: &str) -> Result<()> {
    let request = pb::GenerateRequest {
        model: args.model.clone(),
        prompt: prompt.to_string(),
        format: args.format.clone().unwrap_or_default(),
        keep_alive_seconds: args.keepalive.as_deref().map(keep_alive_seconds).transpose()?,
        think: think(args),
        options: Some(pb::Options::default()),
        ..Default::default()
    };
    let started = Instant::now();
    let mut stream = client.generate(request).await?.into_inner();
    let mut out = std::io::stdout();
    let mut stats = None;
    while let Some(item) = stream.next().await {
        let item = item?;
        if !item.thinking.is_empty() && !args.hidethinking {
            let _ = write!(out, "{}", item.thinking);
        }
        let _ = write!(out, "{}", item.response);
        let _ = out.flush();
        if item.done {
            stats = item.stats;
        }
    }
    let _ = writeln!(out);
    if args.verbose {
        print_stats(stats.as_ref(), started);
    }
    Ok(())
}

fn print_stats(stats: Option<&pb::Stats>, started: Instant) {
    let Some(s) = stats else { return };
    let secs = |ns: u64| Duration::from_nanos(ns);
    use std::time::Duration;
    #[allow(clippy::cast_precision_loss)]
    let rate = |count: u32, ns: u64| if ns == 0 { 0.0 } else { f64::from(count) / (ns as f64 / 1e9) };
    eprintln!(
        "total duration:       {:?}",
        if s.total_duration_ns > 0 { secs(s.total_duration_ns) } else { started.elapsed() }
    );
    eprintln!("load duration:        {:?}", secs(s.load_duration_ns));
    eprintln!("prompt eval count:    {} token(s) ({} cached)", s.prompt_eval_count, s.cached_tokens);
    eprintln!("prompt eval duration: {:?}", secs(s.prompt_eval_duration_ns));
    eprintln!("prompt eval rate:     {:.2} tokens/s", rate(s.prompt_eval_count, s.prompt_eval_duration_ns));
    eprintln!("eval count:           {} token(s)", s.eval_count);
    eprintln!("eval duration:        {:?}", secs(s.eval_duration_ns));
    eprintln!("eval rate:            {:.2} tokens/s", rate(s.eval_count, s.eval_duration_ns));
}

/// Reads stdin lines on a thread so the async side can wait on input and Ctrl-C together.
fn spawn_line_reader() -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel(16);
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if tx.blocking_send(line).is_err() {
                break;
            }
        }
    });
    rx
}

const HELP: &str = "Available commands:\n  /set parameter <name> <value>   Set a parameter (temperature, top_k, seed, num_predict, stop, ...)\n  /set verbose | /set quiet       Show or hide timings\n  /show info | /show parameters   Show the model or the parameters set\n  /clear                          Forget the conversation\n  /bye                            Exit\n  \"\"\"                             Begin and end a multi-line message\n";

async fn interactive(client: &mut Client, args: &RunArgs) -> Result<()> {
    let mut lines = spawn_line_reader();
    let mut history: Vec<pb::Message> = Vec::new();
    let mut params: Vec<(String, String)> = Vec::new();
    let mut verbose = args.verbose;
    let mut out = std::io::stdout();
    loop {
        let _ = write!(out, ">>> ");
        let _ = out.flush();
        let Some(first) = next_line(&mut lines).await else { break };
        let Some(first) = first else { continue };
        let input = if first.trim_start().starts_with("\"\"\"") {
            let mut text = first.trim_start().trim_start_matches("\"\"\"").to_string();
            loop {
                let _ = write!(out, "... ");
                let _ = out.flush();
                match next_line(&mut lines).await {
                    None => break,
                    Some(None) => continue,
                    Some(Some(l)) => {
                        if let Some(end) = l.find("\"\"\"") {
                            text.push('\n');
                            text.push_str(&l[..end]);
                            break;
                        }
                        text.push('\n');
                        text.push_str(&l);
                    }
                }
            }
            text.trim_start_matches('\n').to_string()
        } else {
            first
        };
        let trimmed = input.trim();
        if trimmed.is_empty() {
            continue;
        }
        if let Some(command) = trimmed.strip_prefix('/') {
            let words: Vec<&str> = command.split_whitespace().collect();
            match words.as_slice() {
                ["bye"] | ["exit"] => break,
                ["?"] | ["help"] => print!("{HELP}"),
                ["clear"] => {
                    history.clear();
                    println!("Cleared session context");
                }
                ["set", "verbose"] => verbose = true,
                ["set", "quiet"] => verbose = false,
                ["set", "parameter", key, rest @ ..] if !rest.is_empty() => {
                    let value = rest.join(" ");
                    match options(&[(key.to_string(), value.clone())]) {
                        Ok(_) => {
                            params.push((key.to_string(), value.clone()));
                            println!("Set parameter '{key}' to '{value}'");
                        }
                        Err(e) => println!("{e}"),
                    }
                }
                ["show", "parameters"] => {
                    for (k, v) in &params {
                        println!("{k:<20} {v}");
                    }
                }
                ["show", "info"] | ["show"] => {
                    let show = crate::cli::ShowArgs {
                        model: args.model.clone(),
                        license: false,
                        modelfile: false,
                        parameters: false,
                        system: false,
                        template: false,
                        verbose: false,
                    };
                    match models::show(client, &show).await {
                        Ok(text) => print!("{text}"),
                        Err(e) => println!("{e}"),
                    }
                }
                _ => println!("Unknown command '/{command}'. Type /? for help"),
            }
            continue;
        }
        history.push(pb::Message { role: "user".into(), content: input.clone(), ..Default::default() });
        match chat_turn(client, args, &history, &params, verbose).await {
            Ok(Some(reply)) => history.push(reply),
            Ok(None) => {
                history.pop();
            }
            Err(e) => {
                history.pop();
                eprintln!("Error: {e}");
            }
        }
    }
    Ok(())
}

/// The next input line: `None` at end of input, `Some(None)` when Ctrl-C was pressed at the prompt.
async fn next_line(lines: &mut mpsc::Receiver<String>) -> Option<Option<String>> {
    tokio::select! {
        line = lines.recv() => line.map(Some),
        _ = tokio::signal::ctrl_c() => {
            println!("\nUse Ctrl + d or /bye to exit.");
            Some(None)
        }
    }
}

/// One reply. Returns the assistant message, or `None` when Ctrl-C cancelled it (dropping the
/// stream cancels the generation in the daemon).
async fn chat_turn(
    client: &mut Client,
    args: &RunArgs,
    history: &[pb::Message],
    params: &[(String, String)],
    verbose: bool,
) -> Result<Option<pb::Message>> {
    let request = pb::ChatRequest {
        model: args.model.clone(),
        messages: history.to_vec(),
        format: args.format.clone().unwrap_or_default(),
        options: Some(options(params)?),
        keep_alive_seconds: args.keepalive.as_deref().map(keep_alive_seconds).transpose()?,
        think: think(args),
        tools_json: String::new(),
    };
    let started = Instant::now();
    let mut stream = client.chat(request).await?.into_inner();
    let mut reply = String::new();
    let mut stats = None;
    let mut out = std::io::stdout();
    loop {
        tokio::select! {
            item = stream.next() => {
                let Some(item) = item else { break };
                let item = item?;
                if let Some(m) = item.message {
                    if !m.thinking.is_empty() && !args.hidethinking {
                        let _ = write!(out, "{}", m.thinking);
                    }
                    let _ = write!(out, "{}", m.content);
                    let _ = out.flush();
                    reply.push_str(&m.content);
                }
                if item.done {
                    stats = item.stats;
                }
            }
            _ = tokio::signal::ctrl_c() => {
                println!();
                return Ok(None);
            }
        }
    }
    println!("\n");
    if verbose {
        print_stats(stats.as_ref(), started);
    }
    Ok(Some(pb::Message { role: "assistant".into(), content: reply, ..Default::default() }))
}
