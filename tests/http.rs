//! End-to-end tests of the per-user HTTP endpoints on the real daemon: Host and Origin
//! allowlists, error shapes, identity from the kernel over loopback TCP and per-user sockets,
//! bearer tokens, metrics, disconnects and usage per user. The official Python clients are
//! driven by `http_clients.rs`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use hyperllama_tests::tiny_model::{TinyModelSpec, write_tiny_llama};
use hyperllama_tests::{Daemon, DaemonOptions, TestGroup, TestUser, gemma_model, is_root, skip, text};
use serde_json::{Value, json};

/// A parsed HTTP/1.1 reply.
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

fn exchange(
    mut stream: impl Read + Write,
    method: &str,
    path: &str,
    host: Option<&str>,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Reply {
    let mut request =
        format!("{method} {path} HTTP/1.1\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    if let Some(host) = host {
        request.push_str(&format!("Host: {host}\r\n"));
    }
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    stream.write_all(body).unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    parse(&raw)
}

fn parse(raw: &[u8]) -> Reply {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("a complete HTTP head");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.lines();
    let status = lines.next().unwrap().split_whitespace().nth(1).unwrap().parse().unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    if headers.iter().any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked")) {
        body = dechunk(&body);
    }
    Reply { status, headers, body }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(end) = data.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(String::from_utf8_lossy(&data[..end]).trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        out.extend_from_slice(&data[end + 2..end + 2 + size]);
        data = &data[end + 2 + size + 2..];
    }
    out
}

/// A request over TCP with the Host header a browser or client would send.
fn http(addr: SocketAddr, method: &str, path: &str, body: Option<Value>) -> Reply {
    let host = addr.to_string();
    http_with(addr, method, path, Some(&host), &[], body)
}

fn http_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    host: Option<&str>,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> Reply {
    let stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let body = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
    exchange(stream, method, path, host, headers, &body)
}

fn unix_http(path: &Path, method: &str, uri: &str, body: Option<Value>) -> std::io::Result<Reply> {
    let stream = UnixStream::connect(path)?;
    let body = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
    Ok(exchange(stream, method, uri, Some("localhost"), &[], &body))
}

/// curl as `user` (the kernel then names that user as the socket's owner); `None` when curl
/// could not connect.
fn curl_as(user: &TestUser, args: &[&str]) -> Option<(u16, String)> {
    let out = Command::new("curl")
        .args(["-s", "-w", "\n%{http_code}"])
        .args(args)
        .uid(user.uid)
        .gid(user.gid)
        .env("HOME", "/")
        .output()
        .expect("curl");
    if !out.status.success() {
        return None;
    }
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = stdout.rsplit_once('\n')?;
    Some((code.trim().parse().ok()?, body.to_string()))
}

fn have_curl() -> bool {
    Command::new("curl").arg("--version").output().is_ok_and(|o| o.status.success())
}

fn start(config: &str) -> Daemon {
    Daemon::start(DaemonOptions { config: config.to_string(), ..Default::default() })
}

#[test]
fn forged_host_headers_are_refused() {
    let daemon = start("");
    let addr = daemon.http_addr();
    let port = addr.port().to_string();
    for host in [
        Some("evil.example".to_string()),
        Some(format!("evil.example:{port}")),
        Some(String::new()),
        Some(format!(":{port}")),
        None,
    ] {
        let reply = http_with(addr, "GET", "/api/tags", host.as_deref(), &[], None);
        assert_eq!(reply.status, 403, "Host {host:?}: {}", reply.text());
        assert!(reply.json()["error"].as_str().unwrap().contains("host not allowed"), "{}", reply.text());
    }
    let openai = http_with(addr, "GET", "/v1/models", Some("evil.example"), &[], None);
    assert_eq!(openai.status, 403);
    assert_eq!(openai.json()["error"]["type"], "permission_error", "OpenAI's error shape under /v1");
    for host in [format!("localhost:{port}"), format!("127.0.0.1:{port}"), "LOCALHOST".to_string()] {
        let reply = http_with(addr, "GET", "/api/version", Some(&host), &[], None);
        assert_eq!(reply.status, 200, "Host {host}: {}", reply.text());
    }
    if let Some(v6) = daemon.http_addrs().into_iter().find(SocketAddr::is_ipv6) {
        assert_eq!(http(v6, "GET", "/health", None).status, 200);
        assert_eq!(http_with(v6, "GET", "/health", Some("evil.example"), &[], None).status, 403);
    }
}

#[test]
fn foreign_origins_are_refused_and_local_ones_get_cors() {
    let daemon = start("");
    let addr = daemon.http_addr();
    let host = addr.to_string();
    let evil = http_with(
        addr,
        "POST",
        "/api/pull",
        Some(&host),
        &[("Origin", "https://evil.example")],
        Some(json!({"model": "x"})),
    );
    assert_eq!(evil.status, 403, "{}", evil.text());
    let local =
        http_with(addr, "GET", "/api/tags", Some(&host), &[("Origin", "http://localhost:3000")], None);
    assert_eq!(local.status, 200, "{}", local.text());
    assert_eq!(local.header("access-control-allow-origin"), Some("http://localhost:3000"));
    let preflight = http_with(
        addr,
        "OPTIONS",
        "/v1/chat/completions",
        Some(&host),
        &[("Origin", "http://127.0.0.1:8080"), ("Access-Control-Request-Method", "POST")],
        None,
    );
    assert_eq!(preflight.status, 204);
    assert!(preflight.header("access-control-allow-headers").unwrap().contains("Authorization"));
}

#[test]
fn errors_use_each_apis_shape_and_limits_hold() {
    let daemon = start("[http]\nmax_body = \"2KiB\"\n");
    let addr = daemon.http_addr();
    let missing =
        http(addr, "POST", "/api/generate", Some(json!({"model": "no-such-model", "prompt": "hi"})));
    assert_eq!(missing.status, 404, "{}", missing.text());
    assert!(missing.json()["error"].as_str().unwrap().contains("no-such-model"), "{}", missing.text());
    let openai = http(
        addr,
        "POST",
        "/v1/chat/completions",
        Some(json!({"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]})),
    );
    assert_eq!(openai.status, 404, "{}", openai.text());
    let error = &openai.json()["error"];
    assert!(error["message"].as_str().unwrap().contains("no-such-model"));
    assert_eq!(error["code"], "model_not_found");
    assert!(error.get("param").is_some() && error.get("type").is_some());
    let bad = http_with(addr, "POST", "/api/chat", Some(&addr.to_string()), &[], None);
    assert_eq!(bad.status, 400, "an empty body: {}", bad.text());
    let wrong_type = http(
        addr,
        "POST",
        "/api/generate",
        Some(json!({"model": "m", "prompt": "x", "options": {"temperature": "hot"}})),
    );
    assert_eq!(wrong_type.status, 400, "{}", wrong_type.text());
    assert!(wrong_type.text().contains("temperature"));
    let big = http(addr, "POST", "/api/generate", Some(json!({"model": "m", "prompt": "x".repeat(4096)})));
    assert_eq!(big.status, 413, "{}", big.text());
    let push = http(addr, "POST", "/api/push", Some(json!({"model": "m"})));
    assert_eq!(push.status, 501);
    assert!(push.json()["error"].as_str().unwrap().contains("not supported"));
    let unknown = http(addr, "GET", "/v1/nothing", None);
    assert_eq!((unknown.status, unknown.json()["error"]["type"].clone()), (404, json!("not_found_error")));
    let id = missing.header("x-request-id").unwrap();
    assert!(id.starts_with("req-"), "{id}");
    let echoed =
        http_with(addr, "GET", "/api/version", Some(&addr.to_string()), &[("X-Request-Id", "my-id-1")], None);
    assert_eq!(echoed.header("x-request-id"), Some("my-id-1"));
}

#[test]
fn metrics_and_health() {
    let daemon = start("");
    let addr = daemon.http_addr();
    let health = http(addr, "GET", "/health", None);
    assert_eq!((health.status, health.json()["status"].clone()), (200, json!("ok")));
    let metrics = http(addr, "GET", "/metrics", None);
    assert_eq!(metrics.status, 200);
    assert!(metrics.header("content-type").unwrap().starts_with("text/plain; version=0.0.4"));
    for family in [
        "hyperllama_requests_running gauge",
        "hyperllama_requests_waiting gauge",
        "hyperllama_time_to_first_token_seconds histogram",
        "hyperllama_inter_token_latency_seconds histogram",
        "hyperllama_e2e_request_latency_seconds histogram",
        "hyperllama_prompt_tokens_total counter",
        "hyperllama_generation_tokens_total counter",
        "hyperllama_prefix_cache_queries_total counter",
        "hyperllama_prefix_cache_hits_total counter",
        "hyperllama_kv_cache_bytes gauge",
    ] {
        assert!(
            metrics.text().contains(&format!("# TYPE {family}")),
            "{family} missing:\n{}",
            metrics.text()
        );
    }
    assert_eq!(http(addr, "GET", "/", None).text(), "Ollama is running");
    assert!(http(addr, "GET", "/api/version", None).json()["version"].is_string());
}

#[test]
fn loopback_callers_are_identified_by_the_kernel() {
    if !is_root() || !have_curl() {
        return skip("loopback_callers_are_identified_by_the_kernel", "needs root (useradd) and curl");
    }
    let admins = TestGroup::create();
    let daemon =
        Daemon::start(DaemonOptions { admin_group: Some(admins.name.clone()), ..Default::default() });
    let alice = TestUser::create(&[&admins.name]);
    let bob = TestUser::create(&[]);
    let url = format!("http://{}/api/delete", daemon.http_addr());
    let delete = ["-X", "DELETE", "-d", r#"{"model":"no-such-model"}"#, url.as_str()];
    // Alice administers: the store answers (no such model). Bob may not delete.
    let (status, body) = curl_as(&alice, &delete).expect("alice connects");
    assert_eq!(status, 404, "alice is found as herself and is an admin: {body}");
    let (status, body) = curl_as(&bob, &delete).expect("bob connects");
    assert_eq!(status, 403, "bob is not an admin: {body}");
    assert!(body.contains(&admins.name), "the denial names the group: {body}");
    // Root over TCP is anonymous: a root-run forwarder must not lend root's rights to everyone.
    let reply = http(daemon.http_addr(), "DELETE", "/api/delete", Some(json!({"model": "no-such-model"})));
    assert_eq!(reply.status, 403, "{}", reply.text());
}

#[test]
fn per_user_sockets_admit_only_their_user() {
    if !is_root() || !have_curl() {
        return skip("per_user_sockets_admit_only_their_user", "needs root (useradd) and curl");
    }
    let daemon = start("");
    let alice = TestUser::create(&[]);
    let bob = TestUser::create(&[]);
    let out = daemon.ctl_as(&alice, &["endpoint"]);
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let path = PathBuf::from(stdout.lines().next().unwrap().trim_start_matches("# your endpoint: ").trim());
    assert_eq!(path, daemon.dir.path().join(format!("run/users/{}.sock", alice.uid)), "{stdout}");
    assert!(stdout.contains("export OLLAMA_HOST=127.0.0.1:"), "{stdout}");
    assert!(stdout.contains("export OPENAI_BASE_URL=http://127.0.0.1:"), "{stdout}");
    let meta = std::fs::metadata(&path).unwrap();
    use std::os::unix::fs::MetadataExt;
    let service = nix::unistd::User::from_name(hyperllama_tests::SERVICE_USER).unwrap().unwrap();
    assert_eq!(meta.uid(), service.uid.as_raw(), "owned by the service account");
    assert_eq!(meta.mode() & 0o007, 0, "no access for others: {:o}", meta.mode());
    let sock = path.to_str().unwrap();
    let (status, body) =
        curl_as(&alice, &["--unix-socket", sock, "http://localhost/api/version"]).expect("alice connects");
    assert_eq!(status, 200, "{body}");
    assert!(
        curl_as(&bob, &["--unix-socket", sock, "http://localhost/api/version"]).is_none(),
        "bob cannot connect"
    );
    // Root passes the file permissions, but the socket checks SO_PEERCRED itself.
    let reply = unix_http(&path, "GET", "/api/version", None).unwrap();
    assert_eq!(reply.status, 403, "{}", reply.text());
    // Bob's own socket is another file; it works for him.
    let out = daemon.ctl_as(&bob, &["endpoint"]);
    assert!(out.status.success(), "{}", text(&out));
    let bob_sock = daemon.dir.path().join(format!("run/users/{}.sock", bob.uid));
    let (status, _) =
        curl_as(&bob, &["--unix-socket", bob_sock.to_str().unwrap(), "http://localhost/api/tags"]).unwrap();
    assert_eq!(status, 200);
    let out = daemon.ctl_as(&alice, &["endpoint", "--remove"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!path.exists());
}

#[test]
fn tokens_are_required_off_loopback_and_revocable() {
    if !is_root() {
        return skip("tokens_are_required_off_loopback_and_revocable", "needs root (useradd)");
    }
    // A wildcard bind is not loopback: every request needs a token (reached here over loopback).
    let daemon = Daemon::start(DaemonOptions {
        args: vec!["--http-listen".into(), "0.0.0.0:0".into()],
        ..Default::default()
    });
    let port = daemon.http_addr().port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let host = addr.to_string();
    let anonymous = http_with(addr, "GET", "/v1/models", Some(&host), &[], None);
    assert_eq!(anonymous.status, 401, "{}", anonymous.text());
    assert_eq!(anonymous.json()["error"]["code"], "invalid_api_key");
    let dummy = http_with(addr, "GET", "/api/tags", Some(&host), &[("Authorization", "Bearer ollama")], None);
    assert_eq!(dummy.status, 401, "a made-up key is no token here");
    let alice = TestUser::create(&[]);
    let made = daemon.ctl_as(&alice, &["token", "create", "--name", "laptop"]);
    assert!(made.status.success(), "{}", text(&made));
    let stdout = String::from_utf8_lossy(&made.stdout).into_owned();
    let id = stdout.split_whitespace().nth(1).unwrap().to_string();
    let secret = stdout.split_whitespace().find(|w| w.starts_with("hl-")).unwrap().to_string();
    let bearer = format!("Bearer {secret}");
    let ok = http_with(addr, "GET", "/api/tags", Some(&host), &[("Authorization", &bearer)], None);
    assert_eq!(ok.status, 200, "{}", ok.text());
    // Alice's token does not make her an admin.
    let denied = http_with(
        addr,
        "DELETE",
        "/api/delete",
        Some(&host),
        &[("Authorization", &bearer)],
        Some(json!({"model": "x"})),
    );
    assert_eq!(denied.status, 403, "{}", denied.text());
    let forged = format!("Bearer hl-{}", "0".repeat(64));
    assert_eq!(
        http_with(addr, "GET", "/api/tags", Some(&host), &[("Authorization", &forged)], None).status,
        401
    );
    assert!(daemon.ctl_as(&alice, &["token", "revoke", &id]).status.success());
    let revoked = http_with(addr, "GET", "/api/tags", Some(&host), &[("Authorization", &bearer)], None);
    assert_eq!(revoked.status, 401, "a revoked token is rejected: {}", revoked.text());
    let listed = String::from_utf8_lossy(&daemon.ctl_as(&alice, &["token", "list"]).stdout).into_owned();
    assert!(listed.contains(&id), "{listed}");
}

// ---------------------------------------------------------------------------------------------
// With a model.

/// Creates model `name` in `daemon` from a tiny random Llama (fast) or, with `real`, from the
/// Gemma 3 270M file the test command downloads (slow enough to disconnect mid-reply).
fn create_model(daemon: &Daemon, name: &str, real: bool) -> bool {
    let file = if real {
        let Some(path) = gemma_model() else { return false };
        path
    } else {
        let path = daemon.dir.path().join(format!("{name}.gguf"));
        let spec = TinyModelSpec {
            chat_template: Some(
                "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}\
                 {% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
                    .into(),
            ),
            ..TinyModelSpec::default()
        };
        write_tiny_llama(&path, &spec).unwrap();
        path
    };
    let modelfile = daemon.dir.path().join(format!("{name}.Modelfile"));
    std::fs::write(&modelfile, format!("FROM {}\n", file.display())).unwrap();
    let out = daemon.ctl(&["create", name, "-f", modelfile.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    true
}

fn running(addr: SocketAddr) -> f64 {
    http(addr, "GET", "/metrics", None)
        .text()
        .lines()
        .filter(|l| l.starts_with("hyperllama_requests_running{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn closing_a_stream_cancels_its_generation() {
    let daemon = start("");
    let real = gemma_model().is_some();
    assert!(create_model(&daemon, "m", real));
    let addr = daemon.http_addr();
    let mut stream = TcpStream::connect(addr).unwrap();
    let body = json!({"model": "m", "prompt": "Tell a very long story about the sea.", "options": {"num_predict": 3000, "temperature": 1}}).to_string();
    let request = format!(
        "POST /api/generate HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).unwrap();
    let mut first = [0u8; 512];
    let n = stream.read(&mut first).unwrap();
    assert!(
        String::from_utf8_lossy(&first[..n]).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&first[..n])
    );
    let mid_reply = running(addr) >= 1.0;
    drop(stream);
    let closed = Instant::now();
    while running(addr) > 0.0 {
        assert!(
            closed.elapsed() < Duration::from_secs(1),
            "requests running did not drop to 0 within a second"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    if mid_reply {
        let metrics = http(addr, "GET", "/metrics", None).text();
        assert!(metrics.contains("outcome=\"cancelled\""), "{metrics}");
    } else {
        skip(
            "closing_a_stream_cancels_its_generation",
            "the model finished before the disconnect (no Gemma file)",
        );
    }
}

#[test]
fn a_prompt_longer_than_the_context_is_a_clear_400() {
    let daemon = start("[runners]\ncontext_length = 64\n");
    assert!(create_model(&daemon, "tiny", false));
    let addr = daemon.http_addr();
    let prompt = "the quick brown fox jumps over the lazy dog ".repeat(40);
    let reply = http(
        addr,
        "POST",
        "/api/generate",
        Some(json!({"model": "tiny", "prompt": prompt, "raw": true, "stream": false})),
    );
    assert_eq!(reply.status, 400, "{}", reply.text());
    let message = reply.json()["error"].as_str().unwrap().to_lowercase();
    assert!(message.contains("context"), "{message}");
    let openai = http(addr, "POST", "/v1/completions", Some(json!({"model": "tiny", "prompt": prompt})));
    assert_eq!(openai.status, 400, "{}", openai.text());
    assert_eq!(openai.json()["error"]["type"], "invalid_request_error");
}

#[test]
fn each_user_sees_only_their_own_usage() {
    if !is_root() || !have_curl() {
        return skip("each_user_sees_only_their_own_usage", "needs root (useradd) and curl");
    }
    let daemon = start("");
    assert!(create_model(&daemon, "tiny", false));
    let alice = TestUser::create(&[]);
    let bob = TestUser::create(&[]);
    let url = format!("http://{}/api/generate", daemon.http_addr());
    for (user, n) in [(&alice, 3), (&bob, 5)] {
        let body = json!({"model": "tiny", "prompt": "hello", "stream": false, "options": {"num_predict": n, "temperature": 0}}).to_string();
        let (status, reply) = curl_as(user, &["-d", &body, &url]).unwrap();
        assert_eq!(status, 200, "{reply}");
        let reply: Value = serde_json::from_str(&reply).unwrap();
        assert_eq!(reply["eval_count"], n, "{reply}");
        assert_eq!(reply["done"], true);
    }
    let users = |u: &TestUser| String::from_utf8_lossy(&daemon.ctl_as(u, &["users"]).stdout).into_owned();
    let (a, b) = (users(&alice), users(&bob));
    assert!(a.contains(&alice.name) && !a.contains(&bob.name), "alice sees only herself:\n{a}");
    assert!(b.contains(&bob.name) && !b.contains(&alice.name), "bob sees only himself:\n{b}");
    let row = |table: &str, name: &str| {
        table
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap()
            .split_whitespace()
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    assert_eq!(row(&a, &alice.name)[2], "1", "one request:\n{a}");
    assert_eq!(row(&b, &bob.name)[4], "5", "five completion tokens:\n{b}");
    let all = String::from_utf8_lossy(&daemon.ctl(&["users"]).stdout).into_owned();
    assert!(all.contains(&alice.name) && all.contains(&bob.name), "admins see everyone:\n{all}");
}
