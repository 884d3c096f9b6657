//! Measures the llama.cpp engine against plain llama.cpp loops on the same GGUF, in one run.
//!
//! ```text
//! cargo run --release -p hyperllamad --example engine_bench -- [MODEL.gguf] [--threads 2]
//!     [--parallel 8] [--prompt-words 100] [--gen 128] [--runs 3]
//! ```
//!
//! Scenarios (greedy, distinct ~128-token prompts):
//! - single: one request; generation tok/s from the request's own eval time;
//! - parallel: N requests at once; aggregate generated tokens / wall time;
//! - prefix: the same long prompt twice; time to first token cold vs warm.
//!
//! Peers: a straightforward single-sequence llama-cpp-2 loop (llama.cpp's own speed, no server)
//! and a hand-written batched loop over N sequences (what `llama-server --parallel N` does).
//! Engine and peer runs alternate; medians are printed. Also prints how much of the context's
//! memory is huge-page backed.

use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use hyperllamad::engine::llamacpp::{LlamaCppConfig, LlamaCppEngine, hugepages};
use hyperllamad::engine::{Engine, EngineEvent, GenerateRequest, OutputFormat, Prompt, SamplingParams};
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;

const WORDS: &str = "the river carried small boats past the old mill while children counted clouds and the \
baker sold warm bread to travellers who had walked since dawn along the northern road";

fn text_of(n_words: usize, seed: usize) -> String {
    let words: Vec<&str> = WORDS.split_whitespace().collect();
    let body: Vec<&str> = (0..n_words).map(|i| words[(i * 7 + seed) % words.len()]).collect();
    format!("Continue the story. {}.", body.join(" "))
}

struct Args {
    model: PathBuf,
    threads: u32,
    parallel: u32,
    prompt_words: usize,
    n_gen: u32,
    runs: usize,
}

fn parse_args() -> Args {
    let mut a = Args {
        model: PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../.cache/models/gemma-3-270m-Q4_K_M.gguf"
        )),
        threads: 2,
        parallel: 8,
        prompt_words: 100,
        n_gen: 128,
        runs: 3,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut val = || it.next().unwrap_or_default();
        match arg.as_str() {
            "--threads" => a.threads = val().parse().unwrap_or(2),
            "--parallel" => a.parallel = val().parse().unwrap_or(8),
            "--prompt-words" => a.prompt_words = val().parse().unwrap_or(100),
            "--gen" => a.n_gen = val().parse().unwrap_or(128),
            "--runs" => a.runs = val().parse().unwrap_or(3),
            path => a.model = PathBuf::from(path),
        }
    }
    a
}

fn request(prompt: String, n_gen: u32, salt: u64) -> GenerateRequest {
    GenerateRequest {
        id: format!("bench-{salt}"),
        cache_salt: salt,
        prompt: Prompt::Text(prompt),
        sampling: SamplingParams { temperature: 0.0, repeat_penalty: 1.0, ..SamplingParams::default() },
        stop: Vec::new(),
        max_tokens: Some(n_gen),
        num_ctx: None,
        format: OutputFormat::Text,
        logprobs: false,
    }
}

struct Run {
    generated: u32,
    wall: Duration,
    eval: Duration,
    prompt_eval: Duration,
    prompt_tokens: u32,
    ttft: Duration,
}

fn engine_run(engine: &LlamaCppEngine, prompts: &[String], n_gen: u32, salt0: u64) -> Vec<Run> {
    let start = Instant::now();
    let streams: Vec<_> = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| engine.generate(request(p.clone(), n_gen, salt0 + i as u64)).expect("generate"))
        .collect();
    let mut handles = Vec::new();
    for mut rx in streams {
        handles.push(std::thread::spawn(move || {
            let mut ttft = None;
            loop {
                match rx.blocking_recv() {
                    Some(EngineEvent::Text { .. }) if ttft.is_none() => ttft = Some(start.elapsed()),
                    Some(EngineEvent::Done { stats, .. }) => {
                        return Run {
                            generated: stats.generated_tokens,
                            wall: start.elapsed(),
                            eval: Duration::from_nanos(stats.eval_ns),
                            prompt_eval: Duration::from_nanos(stats.prompt_eval_ns),
                            prompt_tokens: stats.prompt_tokens - stats.cached_tokens,
                            ttft: ttft.unwrap_or_default(),
                        };
                    }
                    Some(EngineEvent::Error(e)) => panic!("{e}"),
                    Some(_) => {}
                    None => panic!("stream ended"),
                }
            }
        }));
    }
    handles.into_iter().map(|h| h.join().expect("join")).collect()
}

/// Plain llama.cpp: prefill all prompts in one batch, then one batch per step, greedy.
fn raw_run(model: &LlamaModel, args: &Args, prompts: &[String]) -> Vec<Run> {
    let backend = hyperllamad::engine::llamacpp::backend().expect("backend");
    let n = prompts.len() as u32;
    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(1024 * n))
        .with_n_batch(2048)
        .with_n_seq_max(n)
        .with_n_threads(args.threads as i32)
        .with_n_threads_batch(args.threads as i32);
    let mut ctx = model.new_context(backend, params).expect("context");
    let vocab = model.vocab();
    let tokens: Vec<Vec<LlamaToken>> =
        prompts.iter().map(|p| vocab.tokenize(p.as_bytes(), true, true)).collect();
    let start = Instant::now();
    let mut batch = LlamaBatch::new(2048, 1);
    for (s, toks) in tokens.iter().enumerate() {
        for (i, &t) in toks.iter().enumerate() {
            batch.add(t, i as i32, &[s as i32], i + 1 == toks.len()).unwrap();
        }
    }
    ctx.decode(&mut batch).expect("prefill");
    let prompt_done = start.elapsed();
    let mut samplers: Vec<LlamaSampler> = (0..n).map(|_| LlamaSampler::greedy()).collect();
    let mut rows: Vec<i32> = Vec::new();
    let mut acc = 0;
    for toks in &tokens {
        acc += toks.len() as i32;
        rows.push(acc - 1);
    }
    let mut pos: Vec<i32> = tokens.iter().map(|t| t.len() as i32).collect();
    let mut live = vec![true; n as usize];
    let mut generated = vec![0u32; n as usize];
    let mut done_at = vec![Duration::ZERO; n as usize];
    let mut ttft = vec![Duration::ZERO; n as usize];
    while live.iter().any(|&l| l) {
        let mut next = Vec::new();
        for s in 0..n as usize {
            if !live[s] {
                continue;
            }
            let t = samplers[s].sample(&ctx, rows[s]);
            samplers[s].accept(t);
            if generated[s] == 0 {
                ttft[s] = start.elapsed();
            }
            if vocab.is_eog(t) {
                live[s] = false;
                done_at[s] = start.elapsed();
                continue;
            }
            generated[s] += 1;
            if generated[s] >= args.n_gen {
                live[s] = false;
                done_at[s] = start.elapsed();
                continue;
            }
            next.push((s, t));
        }
        if next.is_empty() {
            break;
        }
        batch.clear();
        for (row, &(s, t)) in next.iter().enumerate() {
            batch.add(t, pos[s], &[s as i32], true).unwrap();
            pos[s] += 1;
            rows[s] = row as i32;
        }
        ctx.decode(&mut batch).expect("decode");
    }
    (0..n as usize)
        .map(|s| Run {
            generated: generated[s],
            wall: done_at[s],
            eval: done_at[s].saturating_sub(ttft[s]),
            prompt_eval: prompt_done,
            prompt_tokens: tokens[s].len() as u32,
            ttft: ttft[s],
        })
        .collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() { 0.0 } else { v[v.len() / 2] }
}

fn aggregate(runs: &[Run]) -> f64 {
    let tokens: u32 = runs.iter().map(|r| r.generated).sum();
    let wall = runs.iter().map(|r| r.wall).max().unwrap_or_default();
    f64::from(tokens) / wall.as_secs_f64()
}

fn single_rate(r: &Run) -> (f64, f64) {
    // Generation rate excludes the first token (it comes with the prompt).
    let rate = f64::from(r.generated.saturating_sub(1)) / r.eval.as_secs_f64();
    let prompt = f64::from(r.prompt_tokens) / r.prompt_eval.as_secs_f64();
    (rate, prompt)
}

fn main() {
    let args = parse_args();
    if !args.model.is_file() {
        eprintln!("model not found: {} (scripts/lib.sh fetch_gemma downloads it)", args.model.display());
        std::process::exit(2);
    }
    let mut config = LlamaCppConfig::new(&args.model);
    config.n_threads = args.threads;
    config.n_parallel = args.parallel;
    config.n_ctx = 2048;
    let engine = LlamaCppEngine::load(config).expect("load");
    let backend = hyperllamad::engine::llamacpp::backend().expect("backend");
    let model =
        LlamaModel::load_from_file(backend, &args.model, &LlamaModelParams::default()).expect("model");
    let stats = engine.stats();
    let process = hugepages::process_usage(None);
    println!(
        "model {} | threads {} | parallel {} | load {:?}",
        args.model.display(),
        args.threads,
        args.parallel,
        engine.load_duration()
    );
    println!(
        "context memory {} MiB, huge-page backed {} MiB | process AnonHugePages {} MiB, HugeTLB {} MiB, RSS {} MiB",
        stats.context_bytes >> 20,
        stats.huge_page_bytes >> 20,
        process.anon_huge >> 20,
        process.hugetlb >> 20,
        process.rss >> 20
    );

    let warm = [text_of(20, 99)];
    engine_run(&engine, &warm, 8, 1_000_000);
    raw_run(&model, &args, &warm);

    let mut rows: Vec<(String, Vec<f64>, Vec<f64>)> = Vec::new();
    let (mut e1, mut r1, mut e1p, mut r1p, mut en, mut rn) = (vec![], vec![], vec![], vec![], vec![], vec![]);
    for run in 0..args.runs {
        let salt = 10_000 * (run as u64 + 1);
        let one = [text_of(args.prompt_words, run)];
        let e = &engine_run(&engine, &one, args.n_gen, salt)[0];
        let r = &raw_run(&model, &args, &one)[0];
        let (eg, ep) = single_rate(e);
        let (rg, rp) = single_rate(r);
        println!(
            "run {run}: single  engine {eg:6.1} tok/s ({} tok) | llama.cpp loop {rg:6.1} tok/s ({} tok)",
            e.generated, r.generated
        );
        e1.push(eg);
        r1.push(rg);
        e1p.push(ep);
        r1p.push(rp);
        let many: Vec<String> =
            (0..args.parallel as usize).map(|i| text_of(args.prompt_words, 100 * run + i + 1)).collect();
        let e = engine_run(&engine, &many, args.n_gen, salt + 100);
        let r = raw_run(&model, &args, &many);
        let (ea, ra) = (aggregate(&e), aggregate(&r));
        println!(
            "run {run}: x{}  engine {ea:6.1} tok/s ({} tok) | llama.cpp batched loop {ra:6.1} tok/s ({} tok)",
            args.parallel,
            e.iter().map(|x| x.generated).sum::<u32>(),
            r.iter().map(|x| x.generated).sum::<u32>()
        );
        en.push(ea);
        rn.push(ra);
    }
    rows.push(("single: generation tok/s".into(), e1, r1));
    rows.push(("single: prompt tok/s".into(), e1p, r1p));
    rows.push((format!("{} concurrent: aggregate tok/s", args.parallel), en, rn));

    // Prefix reuse: the same ~1k-token prompt twice.
    let long = text_of(800, 7);
    let cold = &engine_run(&engine, std::slice::from_ref(&long), 8, 777)[0];
    let warm = &engine_run(&engine, std::slice::from_ref(&long), 8, 777)[0];
    println!(
        "\nprefix reuse ({} prompt tokens): time to first token cold {:?}, warm {:?} (decoded {} prompt tokens)",
        cold.prompt_tokens, cold.ttft, warm.ttft, warm.prompt_tokens
    );

    println!("\n| scenario | engine (median) | llama.cpp loop (median) | ratio |");
    println!("|---|---|---|---|");
    for (name, e, r) in rows {
        let (e, r) = (median(e), median(r));
        println!("| {name} | {e:.1} | {r:.1} | {:.2} |", e / r);
    }
}
