//! End-to-end tests of runners, residency and admission: the real daemon starting real llama.cpp
//! runner processes for models imported with `hyperctl create` (tiny random models the tests
//! write, and Gemma 3 270M where text and speed matter).

use std::process::Stdio;
use std::time::{Duration, Instant};

use hyperllama_tests::tiny_model::TinyModelSpec;
use hyperllama_tests::{Daemon, DaemonOptions, TestUser, gemma_model, is_root, skip, text};

/// (pid, active requests) of each loaded model, from `hyperctl ps`.
fn ps(daemon: &Daemon) -> Vec<(String, u32, u32)> {
    let out = daemon.ctl(&["ps"]);
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .skip(1)
        .map(|line| {
            let cells: Vec<&str> = line.split_whitespace().collect();
            let pid = cells[cells.len() - 1].parse().unwrap();
            let active = cells[cells.len() - 2].parse().unwrap();
            (cells[0].to_string(), pid, active)
        })
        .collect()
}

fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// "prompt eval count:    N token(s) (M cached)" from `hyperctl run --verbose`.
fn prompt_counts(stderr: &str) -> (u32, u32) {
    let line =
        stderr.lines().find(|l| l.starts_with("prompt eval count:")).unwrap_or_else(|| panic!("{stderr}"));
    let numbers: Vec<u32> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap())
        .collect();
    (numbers[0], numbers[1])
}

#[test]
fn run_answers_with_a_real_runner_and_reports_stats() {
    let daemon = Daemon::start(DaemonOptions::default());
    let model = daemon.tiny_model(&TinyModelSpec::default(), "tiny.gguf");
    daemon.create_model("tiny", &model, "PARAMETER temperature 0\nPARAMETER num_predict 24");
    let out = daemon.ctl(&["run", "tiny", "hello there", "--verbose"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!String::from_utf8_lossy(&out.stdout).trim().is_empty(), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("eval count:           24 token(s)"), "{stderr}");
    let loaded = ps(&daemon);
    assert_eq!(loaded.len(), 1, "{loaded:?}");
    assert_eq!(loaded[0].0, "tiny:latest");
    assert_ne!(loaded[0].1, daemon.pid(), "the model runs in its own process");
    // Greedy is deterministic: the same prompt gives the same text.
    let again = daemon.ctl(&["run", "tiny", "hello there"]);
    assert_eq!(again.stdout, out.stdout);
}

#[test]
fn prefix_reuse_is_per_user() {
    let daemon = Daemon::start(DaemonOptions::default());
    let model = daemon.tiny_model(&TinyModelSpec::default(), "tiny.gguf");
    daemon.create_model("tiny", &model, "PARAMETER temperature 0\nPARAMETER num_predict 4");
    let prompt = "the quick brown fox jumps over the lazy dog and then ".repeat(40);
    let first = daemon.ctl(&["run", "tiny", &prompt, "--verbose"]);
    assert!(first.status.success(), "{}", text(&first));
    let (total, cached) = prompt_counts(&String::from_utf8_lossy(&first.stderr));
    assert_eq!(cached, 0);
    let second = daemon.ctl(&["run", "tiny", &prompt, "--verbose"]);
    let (total2, cached2) = prompt_counts(&String::from_utf8_lossy(&second.stderr));
    assert_eq!(total2, total);
    assert!(
        cached2 + 8 >= total && cached2 < total,
        "second identical prompt reuses its prefix: {cached2}/{total}"
    );
    if !is_root() {
        return skip("prefix_reuse_is_per_user (other user part)", "needs root to create a throwaway user");
    }
    let other = TestUser::create(&[]);
    let theirs = daemon.ctl_as(&other, &["run", "tiny", &prompt, "--verbose"]);
    assert!(theirs.status.success(), "{}", text(&theirs));
    let (_, cached_other) = prompt_counts(&String::from_utf8_lossy(&theirs.stderr));
    assert_eq!(cached_other, 0, "another user never hits this user's prefix cache");
}

#[test]
fn killing_a_runner_fails_its_request_clearly_and_it_is_restarted() {
    let Some(gemma) = gemma_model() else {
        return skip(
            "killing_a_runner_fails_its_request_clearly",
            "Gemma 3 270M not fetched (scripts/test.sh does)",
        );
    };
    let daemon = Daemon::start(DaemonOptions::default());
    daemon.create_model("gemma", &gemma, "PARAMETER temperature 0\nPARAMETER num_predict 2000");
    let long = daemon
        .ctl_command(&["run", "gemma", "Write a very long story about a lighthouse keeper."])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut runner_pid = 0;
    wait_for("the generation to start", Duration::from_secs(60), || {
        let loaded = ps(&daemon);
        runner_pid = loaded.first().map_or(0, |m| m.1);
        loaded.first().is_some_and(|m| m.2 == 1)
    });
    std::thread::sleep(Duration::from_millis(300));
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(runner_pid as i32), nix::sys::signal::Signal::SIGKILL)
        .unwrap();
    let out = long.wait_with_output().unwrap();
    assert!(!out.status.success(), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("model runner for gemma:latest exited (signal 9); restarted"),
        "the request says what happened: {stderr}"
    );
    let next = daemon.ctl(&["run", "gemma", "Hello"]);
    assert!(next.status.success(), "the next request is served by a restarted runner: {}", text(&next));
    let loaded = ps(&daemon);
    assert_ne!(loaded[0].1, runner_pid, "a new runner process");
    assert!(daemon.ctl(&["status"]).status.success(), "the daemon kept running");
    assert_eq!(
        std::fs::read_to_string(format!("/proc/{}/status", daemon.pid()))
            .map(|s| s.contains("State:\tZ"))
            .ok(),
        Some(false),
        "the daemon's pid is unchanged and alive"
    );
}

#[test]
fn a_late_user_is_served_before_another_users_backlog_drains() {
    if !is_root() {
        return skip(
            "a_late_user_is_served_before_another_users_backlog_drains",
            "needs root for a second user",
        );
    }
    let Some(gemma) = gemma_model() else {
        return skip("a_late_user_is_served_before_another_users_backlog_drains", "Gemma 3 270M not fetched");
    };
    let daemon = Daemon::start(DaemonOptions {
        config: "[runners]\nparallel = 1\n[quota]\nmax_concurrent_requests = 1\nmax_queued_requests = 100\n"
            .into(),
        ..Default::default()
    });
    daemon.create_model("gemma", &gemma, "PARAMETER temperature 0\nPARAMETER num_predict 6");
    assert!(daemon.ctl(&["run", "gemma", "warm up"]).status.success());
    let mut backlog: Vec<_> = (0..40)
        .map(|i| {
            daemon
                .ctl_command(&["run", "gemma", &format!("Tell me fact number {i}.")])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    wait_for("A's 40 requests to be queued", Duration::from_secs(60), || {
        ps(&daemon).first().is_some_and(|m| m.2 >= 30)
    });
    let user_b = TestUser::create(&[]);
    let b = daemon.ctl_as(&user_b, &["run", "gemma", "Hi from B"]);
    assert!(b.status.success(), "{}", text(&b));
    let mut still_waiting = 0;
    for child in &mut backlog {
        if child.try_wait().unwrap().is_none() {
            still_waiting += 1;
        }
    }
    for mut child in backlog {
        let _ = child.wait();
    }
    assert!(
        still_waiting >= 20,
        "B finished while A still had {still_waiting} request(s) queued; expected most of A's backlog"
    );
}

#[test]
fn keep_alive_zero_unloads_after_the_request() {
    let daemon = Daemon::start(DaemonOptions::default());
    let model = daemon.tiny_model(&TinyModelSpec::default(), "tiny.gguf");
    daemon.create_model("tiny", &model, "PARAMETER num_predict 4");
    let out = daemon.ctl(&["run", "tiny", "hi", "--keepalive", "0"]);
    assert!(out.status.success(), "{}", text(&out));
    wait_for("the model to unload", Duration::from_secs(10), || ps(&daemon).is_empty());
    let out = daemon.ctl(&["run", "tiny", "hi", "--keepalive", "-1"]);
    assert!(out.status.success(), "{}", text(&out));
    let listed = String::from_utf8_lossy(&daemon.ctl(&["ps"]).stdout).to_string();
    assert!(listed.contains("Forever"), "{listed}");
    assert!(daemon.ctl(&["stop", "tiny"]).status.success());
    assert!(ps(&daemon).is_empty());
}

#[test]
fn a_second_model_evicts_an_idle_first_one_under_a_small_budget() {
    let daemon = Daemon::start(DaemonOptions {
        config: "[runners]\nmemory_budget = \"110MB\"\ncontext_length = 512\nparallel = 1\n".into(),
        ..Default::default()
    });
    let a = daemon.tiny_model(&TinyModelSpec::default(), "a.gguf");
    let b = daemon.tiny_model(&TinyModelSpec { seed: 7, ..Default::default() }, "b.gguf");
    daemon.create_model("model-a", &a, "PARAMETER num_predict 2");
    daemon.create_model("model-b", &b, "PARAMETER num_predict 2");
    assert!(daemon.ctl(&["run", "model-a", "hi"]).status.success());
    assert_eq!(ps(&daemon).iter().map(|m| m.0.as_str()).collect::<Vec<_>>(), ["model-a:latest"]);
    let out = daemon.ctl(&["run", "model-b", "hi"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(ps(&daemon).iter().map(|m| m.0.as_str()).collect::<Vec<_>>(), ["model-b:latest"]);
    assert!(daemon.log().contains("evicting idle model"), "{}", daemon.log());
}

#[test]
fn a_model_that_can_never_fit_says_what_it_needs() {
    let daemon = Daemon::start(DaemonOptions {
        config: "[runners]\nmemory_budget = \"20MB\"\n".into(),
        ..Default::default()
    });
    let model = daemon.tiny_model(&TinyModelSpec::default(), "tiny.gguf");
    daemon.create_model("tiny", &model, "");
    let out = daemon.ctl(&["run", "tiny", "hi"]);
    assert_eq!(out.status.code(), Some(6), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("does not fit: it needs") && stderr.contains("20 MB"), "{stderr}");
    assert!(stderr.contains("never"), "{stderr}");
    assert!(daemon.ctl(&["status"]).status.success());
}

#[test]
fn runners_never_run_as_root() {
    if !is_root() {
        return skip("runners_never_run_as_root", "only meaningful when the tests run as root");
    }
    let daemon = Daemon::start(DaemonOptions::default());
    let model = daemon.tiny_model(&TinyModelSpec::default(), "tiny.gguf");
    daemon.create_model("tiny", &model, "PARAMETER num_predict 2");
    assert!(daemon.ctl(&["run", "tiny", "hi"]).status.success());
    let pid = ps(&daemon)[0].1;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert!(uid_line.split_whitespace().skip(1).all(|u| u != "0"), "{uid_line}");
}
