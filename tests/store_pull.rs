//! End-to-end tests of pulling: the real daemon against the test registry (Ollama protocol with
//! a token challenge and redirects, Hugging Face layout, plain URLs), progress bars, parallel
//! ranged downloads, resume after kill -9, a registry misbehaving in every listed way, one
//! download for two users, store limits, and a SIGTERM drain with a pull in flight.

use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use hyperllama_tests::gguf_file::{GgufBuilder, hostile_files};
use hyperllama_tests::registry::{
    Fault, TestRegistry, blob_files, blobs_dir, integrity_check, restart, start_daemon, tree,
};
use hyperllama_tests::{Daemon, DaemonOptions, TestGroup, TestUser, is_root, text};
use nix::sys::signal::Signal;

const MODEL: &str = "application/vnd.ollama.image.model";
const TEMPLATE: &str = "application/vnd.ollama.image.template";
const SYSTEM: &str = "application/vnd.ollama.image.system";
const PARAMS: &str = "application/vnd.ollama.image.params";
const LICENSE: &str = "application/vnd.ollama.image.license";

fn stdout(out: &Output) -> String {
    assert!(out.status.success(), "{}", text(out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Publishes a small model with every kind of layer; returns the model blob's digest.
fn publish_tiny(registry: &TestRegistry, name: &str, pad_to: usize) -> String {
    let gguf = GgufBuilder::tiny_llama(name).pad_to(pad_to).build();
    registry.publish(
        name,
        &[
            (MODEL, gguf.clone()),
            (TEMPLATE, b"{{ .Prompt }}".to_vec()),
            (SYSTEM, b"You are tiny.".to_vec()),
            (PARAMS, br#"{"temperature":0.5,"stop":["<end>","User:"]}"#.to_vec()),
            (LICENSE, b"Apache-2.0".to_vec()),
        ],
    );
    format!("sha256:{}", sha256_hex(&gguf))
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(bytes))
}

fn spawn_ctl(daemon: &Daemon, args: &[&str]) -> std::process::Child {
    let mut command = daemon.ctl_command(args);
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
    command.spawn().unwrap()
}

fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

#[test]
fn pull_through_a_token_challenge_and_a_redirect_shows_progress_and_every_user_sees_it() {
    let registry = TestRegistry::start();
    registry.require_token(true);
    registry.redirect_blobs(true);
    let model_digest = publish_tiny(&registry, "tiny", 0);
    let daemon = start_daemon(&registry.config(""), &DaemonOptions::default());

    let out = daemon.ctl(&["pull", "tiny"]);
    assert!(out.status.success(), "{}\n{}", text(&out), daemon.log());
    let progress = stderr(&out);
    let short = &model_digest[7..19];
    for step in [
        "pulling manifest",
        &format!("pulling {short}"),
        "100% ▕",
        "verifying sha256 digest",
        "writing manifest",
        "success",
    ] {
        assert!(progress.contains(step), "{step}: {progress}");
    }
    let hits = registry.hits();
    assert!(hits.iter().any(|h| h.path.starts_with("/token")), "the token challenge was answered: {hits:?}");
    assert!(hits.iter().any(|h| h.path.contains("/manifests/") && h.authorization.is_some()), "{hits:?}");
    let cdn: Vec<_> = hits.iter().filter(|h| h.listener == "cdn").collect();
    assert!(!cdn.is_empty(), "blobs came through the redirect");
    assert!(cdn.iter().all(|h| h.authorization.is_none()), "the token never goes to another host: {cdn:?}");

    let list = stdout(&daemon.ctl(&["list"]));
    assert!(list.contains("tiny:latest"), "{list}");
    let show = stdout(&daemon.ctl(&["show", "tiny"]));
    assert!(show.contains("architecture        llama") && show.contains("temperature"), "{show}");
    assert_eq!(
        stdout(&daemon.ctl(&["show", "tiny", "--parameters"]))
            .lines()
            .filter(|l| l.starts_with("stop"))
            .count(),
        2
    );
    let files = blob_files(&daemon);
    assert_eq!(files.len(), 6, "config and five layers: {files:?}");
    assert!(files.iter().all(|(_, ok)| *ok), "{files:?}");
    if is_root() {
        let user = TestUser::create(&[]);
        assert!(stdout(&daemon.ctl_as(&user, &["list"])).contains("tiny:latest"), "every user sees it");
    }

    // Pulling again fetches the manifest only.
    registry.clear_hits();
    assert!(daemon.ctl(&["pull", "tiny:latest"]).status.success());
    assert!(registry.blob_gets(&model_digest).is_empty(), "{:?}", registry.hits());
}

#[test]
fn parallel_ranged_parts_resume_after_kill_9_and_every_blob_matches_its_name() {
    let registry = TestRegistry::start();
    let model_digest = publish_tiny(&registry, "big", 3 << 20);
    let size = registry.blob(&model_digest).len();
    registry.fault(&model_digest, Fault::Throttle(96 << 10));
    let options = DaemonOptions::default();
    let config = registry.config("download_part_size = \"256KiB\"\nparallel_downloads = 4\n");
    let mut daemon = start_daemon(&config, &options);
    for round in 0..3 {
        let mut pull = spawn_ctl(&daemon, &["pull", "big"]);
        let before = registry.blob_gets(&model_digest).len();
        wait_for("the download to start", Duration::from_secs(20), || {
            registry.blob_gets(&model_digest).len() > before
        });
        std::thread::sleep(Duration::from_millis(1500 + 400 * round));
        daemon = restart(daemon, &options, true);
        let _ = pull.kill();
        let _ = pull.wait();
        let partial = blobs_dir(&daemon).join(format!("sha256-{}", &model_digest[7..]));
        assert!(!partial.exists(), "no partial blob is ever visible");
        assert!(blob_files(&daemon).iter().all(|(_, ok)| *ok), "{:?}", blob_files(&daemon));
    }
    let ranged: Vec<_> =
        registry.blob_gets(&model_digest).into_iter().filter(|h| h.range.is_some()).collect();
    assert!(ranged.len() > 4, "parts were fetched with Range: {ranged:?}");

    registry.clear_faults();
    registry.clear_hits();
    let out = daemon.ctl(&["pull", "big"]);
    assert!(out.status.success(), "{}\n{}", text(&out), daemon.log());
    let fetched: usize = registry
        .blob_gets(&model_digest)
        .iter()
        .filter_map(|h| {
            h.range
                .as_deref()?
                .strip_prefix("bytes=")?
                .split_once('-')
                .map(|(a, b)| (a.to_string(), b.to_string()))
        })
        .map(|(a, b)| b.parse::<usize>().unwrap() - a.parse::<usize>().unwrap() + 1)
        .sum();
    assert!(fetched < size, "the last pull resumed ({fetched} of {size} bytes fetched)");
    assert!(daemon.log().contains("resuming download"), "{}", daemon.log());
    assert!(blob_files(&daemon).iter().all(|(_, ok)| *ok), "{:?}", blob_files(&daemon));
    assert!(blob_files(&daemon).iter().any(|(n, _)| n.ends_with(&model_digest[7..])));
    let (check, tags) = integrity_check(&daemon);
    assert_eq!((check.as_str(), tags), ("ok", 1));
}

#[test]
fn a_resume_answered_with_200_starts_over_and_still_verifies() {
    let registry = TestRegistry::start();
    let model_digest = publish_tiny(&registry, "whole", 2 << 20);
    registry.fault(&model_digest, Fault::Throttle(256 << 10));
    let options = DaemonOptions::default();
    let daemon = start_daemon(&registry.config(""), &options);
    let mut pull = spawn_ctl(&daemon, &["pull", "whole"]);
    wait_for("the download to start", Duration::from_secs(20), || {
        !registry.blob_gets(&model_digest).is_empty()
    });
    std::thread::sleep(Duration::from_millis(2500));
    let daemon = restart(daemon, &options, true);
    let _ = pull.kill();
    let _ = pull.wait();
    registry.fault(&model_digest, Fault::IgnoreRange);
    registry.clear_hits();
    let out = daemon.ctl(&["pull", "whole"]);
    assert!(out.status.success(), "{}\n{}", text(&out), daemon.log());
    let gets = registry.blob_gets(&model_digest);
    assert!(
        gets.first().is_some_and(|h| h.range.as_deref().is_some_and(|r| r != "bytes=0-")),
        "resume asked for a range: {gets:?}"
    );
    assert!(gets.iter().any(|h| h.range.is_none()), "then started over without one: {gets:?}");
    assert!(daemon.log().contains("ranges not honoured"), "{}", daemon.log());
    assert!(blob_files(&daemon).iter().all(|(_, ok)| *ok));
}

/// Prepares a misbehaviour; returns the model name to pull.
type Setup = Box<dyn Fn(&TestRegistry) -> String>;

/// Everything under the test directory except what a failed pull may change (the log, the
/// database files and resumable downloads in staging).
fn snapshot(daemon: &Daemon) -> Vec<std::path::PathBuf> {
    tree(daemon.dir.path())
        .into_iter()
        .filter(|p| {
            let s = p.to_string_lossy();
            !(s.ends_with("daemon.log") || s.contains("hyperllama.db") || s.contains("/state/staging/"))
        })
        .collect()
}

#[test]
fn a_misbehaving_registry_leaves_the_store_unchanged() {
    let registry = TestRegistry::start();
    publish_tiny(&registry, "good", 0);
    let daemon =
        start_daemon(&registry.config("retries = 1\nstall_timeout = \"1s\"\n"), &DaemonOptions::default());
    assert!(daemon.ctl(&["pull", "good"]).status.success());
    let models = |d: &Daemon| -> Vec<String> {
        // NAME, ID and SIZE (MODIFIED moves with the clock).
        stdout(&d.ctl(&["list"]))
            .lines()
            .map(|l| l.split("    ").take(3).collect::<Vec<_>>().join(" "))
            .collect()
    };
    let list_before = models(&daemon);
    let files_before = snapshot(&daemon);

    let evil = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json",
        "config":{{"mediaType":"application/vnd.docker.container.image.v1+json","digest":"sha256:../../x","size":2}},
        "layers":[{{"mediaType":"{MODEL}","digest":"sha256:../../../evil","size":2}}]}}"#
    );
    registry.publish_raw("evil", &evil);
    let hostile = hostile_files().into_iter().find(|h| h.name == "tensor offset past the end").unwrap();
    registry.publish("hostile", &[(MODEL, hostile.bytes)]);
    let cases: Vec<(&str, Setup, &str, i32)> = vec![
        (
            "manifest 403 HTML",
            Box::new(|r| {
                r.manifest_fault(Some(Fault::ForbiddenHtml));
                "m403".into()
            }),
            "refused access",
            1,
        ),
        (
            "manifest 500",
            Box::new(|r| {
                r.manifest_fault(Some(Fault::ServerError));
                "m500".into()
            }),
            "retry later",
            1,
        ),
        ("unknown model", Box::new(|_| "nosuch".into()), "not found", 5),
        ("evil digest", Box::new(|_| "evil".into()), "invalid digest", 1),
        ("hostile GGUF", Box::new(|_| "hostile".into()), "not usable", 1),
        ("blob 403 HTML", Box::new(|r| fault_model(r, "b403", Fault::ForbiddenHtml)), "refused access", 1),
        ("blob 500", Box::new(|r| fault_model(r, "b500", Fault::ServerError)), "retry later", 1),
        ("truncated blob", Box::new(|r| fault_model(r, "short", Fault::Truncate)), "early", 1),
        (
            "blob not matching its digest",
            Box::new(|r| fault_model(r, "corrupt", Fault::Corrupt)),
            "does not match its digest",
            1,
        ),
        ("stalled blob", Box::new(|r| fault_model(r, "stall", Fault::Stall(100))), "stalled", 1),
    ];
    for (what, setup, expect, code) in cases {
        let name = setup(&registry);
        let out = daemon.ctl(&["pull", &name]);
        registry.clear_faults();
        assert_eq!(out.status.code(), Some(code), "{what}: {}", text(&out));
        let err = stderr(&out);
        let last = err.lines().last().unwrap_or_default();
        assert!(last.starts_with("Error: ") && last.contains(expect), "{what}: {err}");
        assert!(!err.contains("<html") && !err.contains("<script"), "{what}: HTML is never echoed: {err}");
        assert_eq!(models(&daemon), list_before, "{what}: nothing registered");
        assert_eq!(snapshot(&daemon), files_before, "{what}: no file appeared or vanished");
        assert!(blob_files(&daemon).iter().all(|(_, ok)| *ok), "{what}");
    }
    assert!(
        !daemon.dir.path().join("x").exists() && !daemon.dir.path().parent().unwrap().join("evil").exists()
    );
    let (check, tags) = integrity_check(&daemon);
    assert_eq!((check.as_str(), tags), ("ok", 1));
}

/// Publishes a model named `name` whose model blob misbehaves with `fault`.
fn fault_model(registry: &TestRegistry, name: &str, fault: Fault) -> String {
    let digest = publish_tiny(registry, name, 64 << 10);
    registry.fault(&digest, fault);
    name.to_string()
}

#[test]
fn two_users_pulling_at_once_share_one_download_and_others_are_told_who_may_pull() {
    if !is_root() {
        return hyperllama_tests::skip(
            "two_users_pulling_at_once_share_one_download",
            "needs root for test users",
        );
    }
    let registry = TestRegistry::start();
    let model_digest = publish_tiny(&registry, "shared", 1 << 20);
    registry.fault(&model_digest, Fault::Throttle(512 << 10));
    let pullers = TestGroup::create();
    let config = registry.config(&format!("pull_groups = [\"{}\"]\n", pullers.name));
    let daemon = start_daemon(&config, &DaemonOptions::default());
    let alice = TestUser::create(&[&pullers.name]);
    let bob = TestUser::create(&[&pullers.name]);
    let carol = TestUser::create(&[]);
    let spawn_as = |user: &TestUser| {
        use std::os::unix::process::CommandExt;
        let mut command = daemon.ctl_command(&["pull", "shared"]);
        command.uid(user.uid).gid(user.gid).env("HOME", "/").stdout(Stdio::piped()).stderr(Stdio::piped());
        command.spawn().unwrap()
    };
    let a = spawn_as(&alice);
    wait_for("alice's download", Duration::from_secs(20), || !registry.blob_gets(&model_digest).is_empty());
    let b = spawn_as(&bob);
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert!(a.status.success(), "{}", text(&a));
    assert!(b.status.success(), "{}", text(&b));
    assert!(stderr(&b).contains("100%"), "bob saw the shared progress: {}", text(&b));
    assert_eq!(registry.blob_gets(&model_digest).len(), 1, "one download: {:?}", registry.hits());

    let denied = daemon.ctl_as(&carol, &["pull", "shared"]);
    assert_eq!(denied.status.code(), Some(4), "{}", text(&denied));
    assert!(stderr(&denied).contains(&format!("`{}`", pullers.name)), "{}", text(&denied));
    publish_tiny(&registry, "other", 0);
    let run = daemon.ctl_as(&carol, &["run", "other", "hi"]);
    assert_eq!(run.status.code(), Some(4), "{}", text(&run));
    assert!(stderr(&run).contains("ask an administrator to run `hyperctl pull other`"), "{}", text(&run));
}

#[test]
fn hugging_face_and_url_pulls() {
    let registry = TestRegistry::start();
    registry.hf_publish("owner/Tiny-GGUF", "tiny-Q4_K_M.gguf", GgufBuilder::tiny_llama("q4").build());
    let q8 = registry.hf_publish("owner/Tiny-GGUF", "tiny-Q8_0.gguf", GgufBuilder::tiny_llama("q8").build());
    registry.hf_require_token(Some("hf_secret"));
    let daemon = start_daemon(&registry.config("hf_token = \"hf_secret\"\n"), &DaemonOptions::default());

    let out = daemon.ctl(&["pull", "hf.co/owner/Tiny-GGUF:Q8_0"]);
    assert!(out.status.success(), "{}\n{}", text(&out), daemon.log());
    let out = daemon.ctl(&["pull", "hf.co/owner/Tiny-GGUF/tiny-Q4_K_M.gguf"]);
    assert!(out.status.success(), "{}", text(&out));
    let list = stdout(&daemon.ctl(&["list"]));
    assert!(
        list.contains("hf.co/owner/Tiny-GGUF:Q8_0") && list.contains("hf.co/owner/Tiny-GGUF:tiny-Q4_K_M"),
        "{list}"
    );
    assert!(blob_files(&daemon).iter().any(|(n, _)| n.ends_with(&q8[7..])));
    let hits = registry.hits();
    assert!(
        hits.iter()
            .filter(|h| h.path.starts_with("/hf/"))
            .all(|h| h.authorization.as_deref() == Some("Bearer hf_secret"))
    );
    assert!(hits.iter().filter(|h| h.listener == "cdn").all(|h| h.authorization.is_none()), "{hits:?}");
    registry.hf_require_token(Some("a-different-token"));
    let unauthorized = daemon.ctl(&["pull", "hf.co/owner/Tiny-GGUF:Q8_0"]);
    assert_eq!(unauthorized.status.code(), Some(1), "{}", text(&unauthorized));
    assert!(
        stderr(&unauthorized).contains("401") && stderr(&unauthorized).contains("store.hf_token"),
        "{}",
        text(&unauthorized)
    );
    registry.hf_require_token(Some("hf_secret"));
    let missing = daemon.ctl(&["pull", "hf.co/owner/Tiny-GGUF:Q2_K"]);
    assert_eq!(missing.status.code(), Some(5), "{}", text(&missing));
    assert!(stderr(&missing).contains("tiny-Q8_0.gguf"), "lists what there is: {}", text(&missing));

    let bytes = GgufBuilder::tiny_llama("url").build();
    let digest = registry.serve_file("url-model.gguf", bytes);
    // `localhost` is not in store.insecure_hosts: plain http needs --insecure.
    let url = format!("http://localhost:{}/files/url-model.gguf@{digest}", registry.addr.port());
    let refused = daemon.ctl(&["pull", &url]);
    assert!(stderr(&refused).contains("plain http needs --insecure"), "{}", text(&refused));
    let out = daemon.ctl(&["pull", "--insecure", &url]);
    assert!(out.status.success(), "{}\n{}", text(&out), daemon.log());
    assert!(stdout(&daemon.ctl(&["list"])).contains("url-model:latest"));
    let wrong =
        format!("http://localhost:{}/files/url-model.gguf@sha256:{}", registry.addr.port(), "0".repeat(64));
    let out = daemon.ctl(&["pull", "--insecure", &wrong]);
    assert!(stderr(&out).contains("does not match its digest"), "{}", text(&out));
    assert!(blob_files(&daemon).iter().all(|(_, ok)| *ok));
}

#[test]
fn store_limits_refuse_a_pull_before_downloading() {
    let registry = TestRegistry::start();
    let model_digest = publish_tiny(&registry, "large", 256 << 10);
    let daemon = start_daemon(&registry.config("max_size = \"100KB\"\n"), &DaemonOptions::default());
    let out = daemon.ctl(&["pull", "large"]);
    assert_eq!(out.status.code(), Some(6), "{}", text(&out));
    assert!(stderr(&out).contains("store.max_size"), "{}", text(&out));
    assert!(registry.blob_gets(&model_digest).is_empty(), "nothing was downloaded");
    drop(daemon);
    let config = registry.config("").replace("min_free_space = \"0\"", "min_free_space = \"1000TB\"");
    let daemon = start_daemon(&config, &DaemonOptions::default());
    let out = daemon.ctl(&["pull", "large"]);
    assert!(stderr(&out).contains("store.min_free_space"), "{}", text(&out));
    assert!(blob_files(&daemon).is_empty());
}

#[test]
fn sigterm_during_a_pull_drains_refuses_new_work_and_exits_zero() {
    let registry = TestRegistry::start();
    let model_digest = publish_tiny(&registry, "slow", 256 << 10);
    registry.fault(&model_digest, Fault::Stall(4096));
    let options =
        DaemonOptions { args: vec!["--drain-timeout".into(), "2s".into()], ..DaemonOptions::default() };
    let mut daemon = start_daemon(&registry.config("stall_timeout = \"60s\"\n"), &options);
    let pull = spawn_ctl(&daemon, &["pull", "slow"]);
    wait_for("the blob download", Duration::from_secs(20), || !registry.blob_gets(&model_digest).is_empty());
    let started = Instant::now();
    daemon.signal(Signal::SIGTERM);
    let refused = loop {
        let out = daemon.ctl(&["list"]);
        if !out.status.success() {
            break out;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "list kept being served while draining");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(refused.status.code(), Some(6), "{}", text(&refused));
    assert!(stderr(&refused).contains("shutting down"), "{}", text(&refused));
    let exit = daemon.wait(Duration::from_secs(30)).expect("the daemon exits after the drain timeout");
    assert!(exit.success(), "{exit:?}\n{}", daemon.log());
    assert!(started.elapsed() >= Duration::from_secs(2), "the pull held the drain open");
    let pulled = pull.wait_with_output().unwrap();
    assert!(!pulled.status.success(), "{}", text(&pulled));
    assert!(daemon.log().contains("drain timeout passed"), "{}", daemon.log());
    let partial = blobs_dir(&daemon).join(format!("sha256-{}", &model_digest[7..]));
    assert!(!partial.exists(), "no partial blob is visible");
}
