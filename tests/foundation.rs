//! End-to-end tests of the foundation: the real hyperllamad in user mode, driven by the real
//! hyperctl — status, authorization by uid, socket activation, SIGTERM drain, configuration errors.

use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::Duration;

use hyperllama_tests::{
    Daemon, DaemonOptions, TestGroup, TestUser, is_root, skip, spawn_logged, test_dir, text,
};
use nix::sys::signal::Signal;

fn json(output: &std::process::Output) -> serde_json::Value {
    assert!(output.status.success(), "{}", text(output));
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| panic!("bad JSON ({e}): {}", text(output)))
}

#[test]
fn status_reports_a_ready_daemon() {
    let daemon = Daemon::start(DaemonOptions::default());
    let status = json(&daemon.ctl(&["status", "--json"]));
    assert_eq!(status["accepting"], true);
    assert_eq!(status["mode"], "user");
    assert_eq!(status["pid"], daemon.pid());
    assert_eq!(status["caller"]["admin"], true, "the test's own user is root or the daemon's account");
    let engines = status["engines"].as_array().unwrap();
    assert!(engines.iter().any(|e| e["name"] == "llama.cpp" && e["available"] == true), "{status}");
    let native = engines.iter().find(|e| e["name"] == "native").unwrap();
    if status["gpus"].as_array().unwrap().is_empty() {
        assert!(!native["detail"].as_str().unwrap().is_empty(), "a missing GPU engine says why");
    }
    if is_root() {
        assert_eq!(
            status["service_user"],
            hyperllama_tests::SERVICE_USER,
            "root drops to the service account"
        );
        assert_eq!(status["capabilities"], serde_json::json!(["cap_ipc_lock"]));
    }
    // Human form too.
    let human = daemon.ctl(&["status"]);
    assert!(String::from_utf8_lossy(&human.stdout).contains("ready"), "{}", text(&human));
}

#[test]
fn daemon_started_as_root_runs_as_the_service_account() {
    if !is_root() {
        return skip("daemon_started_as_root_runs_as_the_service_account", "needs root to switch users");
    }
    let daemon = Daemon::start(DaemonOptions::default());
    let status = std::fs::read_to_string(format!("/proc/{}/status", daemon.pid())).unwrap();
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    let expected =
        nix::unistd::User::from_name(hyperllama_tests::SERVICE_USER).unwrap().unwrap().uid.as_raw();
    assert!(uid_line.split_whitespace().skip(1).all(|u| u == expected.to_string()), "{uid_line}");
    let cap_eff = status.lines().find(|l| l.starts_with("CapEff:")).unwrap();
    // CAP_IPC_LOCK is bit 14: 0x4000, nothing else.
    assert!(cap_eff.ends_with("0000000000004000"), "{cap_eff}");
}

#[test]
fn unreachable_daemon_is_one_actionable_line() {
    let (dir, hyperctl, _) = test_dir();
    let out = Command::new(hyperctl)
        .arg("--host")
        .arg(dir.path().join("absent.sock"))
        .arg("status")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot reach hyperllamad at") && stderr.contains("systemctl status hyperllama"),
        "{stderr}"
    );
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
}

#[test]
fn non_admin_may_read_but_not_administer() {
    if !is_root() {
        return skip("non_admin_may_read_but_not_administer", "needs root to create throwaway users");
    }
    let admins = TestGroup::create();
    let daemon =
        Daemon::start(DaemonOptions { admin_group: Some(admins.name.clone()), ..Default::default() });
    let user = TestUser::create(&[]);
    let admin = TestUser::create(&[&admins.name]);

    let status = json(&daemon.ctl_as(&user, &["status", "--json"]));
    assert_eq!(status["caller"]["user"], user.name.as_str());
    assert_eq!(status["caller"]["admin"], false);
    assert_eq!(json(&daemon.ctl_as(&admin, &["status", "--json"]))["caller"]["admin"], true);

    let refused = daemon.ctl_as(&user, &["rm", "x"]);
    assert_eq!(refused.status.code(), Some(4), "{}", text(&refused));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains(&format!("`{}`", admins.name)), "denial names the admin group: {stderr}");
    for args in [
        &["pull", "m"][..],
        &["cp", "a", "b"],
        &["stop", "m"],
        &["quota", "set", "root", "--concurrent", "1"],
    ] {
        let out = daemon.ctl_as(&user, args);
        assert_eq!(out.status.code(), Some(4), "{args:?}: {}", text(&out));
    }
    // The admin is not denied (the store answers for itself).
    let out = daemon.ctl_as(&admin, &["rm", "x"]);
    assert_ne!(out.status.code(), Some(4), "{}", text(&out));
    // Everyone may read their own quota, not another user's.
    assert!(daemon.ctl_as(&user, &["quota", "show"]).status.success());
    assert_eq!(daemon.ctl_as(&user, &["quota", "show", "root"]).status.code(), Some(4));
}

#[test]
fn tokens_and_quotas_belong_to_their_user() {
    if !is_root() {
        return skip("tokens_and_quotas_belong_to_their_user", "needs root to create throwaway users");
    }
    let daemon = Daemon::start(DaemonOptions::default());
    let alice = TestUser::create(&[]);
    let bob = TestUser::create(&[]);
    let made = daemon.ctl_as(&alice, &["token", "create", "--name", "laptop"]);
    assert!(made.status.success(), "{}", text(&made));
    let stdout = String::from_utf8_lossy(&made.stdout).to_string();
    let id = stdout.split_whitespace().nth(1).unwrap().to_string();
    assert!(stdout.contains("hl-"), "secret shown once: {stdout}");

    let bob_list = daemon.ctl_as(&bob, &["token", "list"]);
    assert!(!String::from_utf8_lossy(&bob_list.stdout).contains(&id), "bob must not see alice's token");
    let bob_revoke = daemon.ctl_as(&bob, &["token", "revoke", &id]);
    assert_eq!(bob_revoke.status.code(), Some(5), "{}", text(&bob_revoke));
    let root_list = daemon.ctl(&["token", "list"]);
    assert!(String::from_utf8_lossy(&root_list.stdout).contains(&id), "admins see every token");
    assert!(daemon.ctl_as(&alice, &["token", "revoke", &id]).status.success());
    let listed = String::from_utf8_lossy(&daemon.ctl_as(&alice, &["token", "list"]).stdout).to_string();
    assert!(listed.contains("revoked"), "{listed}");

    let set = daemon.ctl(&["quota", "set", &alice.name, "--concurrent", "2", "--tokens-per-minute", "900"]);
    assert!(set.status.success(), "{}", text(&set));
    let shown = String::from_utf8_lossy(&daemon.ctl_as(&alice, &["quota", "show"]).stdout).to_string();
    assert!(shown.contains("override") && shown.contains("900"), "{shown}");
}

#[test]
fn socket_activation_serves_on_the_passed_socket() {
    let (dir, _hyperctl, hyperllamad) = test_dir();
    let run = dir.path().join("run");
    std::fs::create_dir(&run).unwrap();
    std::fs::set_permissions(&run, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let activated = run.join("activated.sock");
    let listener = std::os::unix::net::UnixListener::bind(&activated).unwrap();
    std::fs::set_permissions(&activated, std::os::unix::fs::PermissionsExt::from_mode(0o666)).unwrap();
    let fd = listener.as_raw_fd();
    nix::fcntl::fcntl(&listener, nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty())).unwrap();
    // As systemd does: the socket at fd 3, LISTEN_PID = the daemon's pid (the shell execs it).
    let command = Daemon::command(dir.path(), &hyperllamad, &DaemonOptions::default());
    let program = command.get_program().to_owned();
    let args: Vec<_> = command.get_args().map(ToOwned::to_owned).collect();
    let mut shell = Command::new("bash");
    shell
        .arg("-c")
        .arg(format!(
            "{move_fd} LISTEN_FDS=1 LISTEN_PID=$$ LISTEN_FDNAMES=control exec \"$0\" \"$@\"",
            move_fd = if fd == 3 { String::new() } else { format!("exec 3<&{fd} {fd}<&-;") }
        ))
        .arg(program)
        .args(args)
        .env_remove("NOTIFY_SOCKET");
    let log = dir.path().join("daemon.log");
    let child = spawn_logged(&mut shell, &log);
    drop(listener);
    let mut daemon = Daemon::adopt(child, dir, activated.clone(), log);
    let status = json(&daemon.ctl(&["status", "--json"]));
    assert_eq!(status["accepting"], true);
    assert!(
        !daemon.dir.path().join("run/control.sock").exists(),
        "an activated daemon binds no socket of its own"
    );
    daemon.signal(Signal::SIGTERM);
    let exit = daemon.wait(Duration::from_secs(20)).expect("exits after SIGTERM");
    assert!(exit.success(), "{exit:?}\n{}", daemon.log());
    assert!(activated.exists(), "systemd's socket is left in place for the next start");
}

#[test]
fn sigterm_drains_and_exits_zero() {
    let mut daemon = Daemon::start(DaemonOptions {
        args: vec!["--drain-timeout".into(), "5s".into()],
        ..Default::default()
    });
    daemon.signal(Signal::SIGTERM);
    let exit = daemon.wait(Duration::from_secs(20)).expect("exits within the drain timeout");
    assert!(exit.success(), "{exit:?}\n{}", daemon.log());
    let log = daemon.log();
    assert!(log.contains("draining") && log.contains("stopped"), "{log}");
    assert!(!daemon.socket.exists(), "the control socket is removed at exit");
}

#[test]
fn second_daemon_on_the_same_socket_is_refused() {
    let daemon = Daemon::start(DaemonOptions::default());
    let out =
        Daemon::command(daemon.dir.path(), &daemon.hyperllamad, &DaemonOptions::default()).output().unwrap();
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("already serving"), "{}", text(&out));
    assert!(daemon.ctl(&["status"]).status.success(), "the first daemon keeps serving");
}

#[test]
fn config_error_names_file_and_key_and_exits_nonzero() {
    let (dir, _hyperctl, hyperllamad) = test_dir();
    std::fs::write(dir.path().join("hyperllama.toml"), "[daemon]\ndrain_timeout = \"5s\"\n").unwrap();
    std::fs::create_dir(dir.path().join("conf.d")).unwrap();
    let bad = dir.path().join("conf.d/50-typo.toml");
    std::fs::write(&bad, "[control]\nsocket_mod = \"0600\"\n").unwrap();
    let out = Daemon::command(dir.path(), &hyperllamad, &DaemonOptions::default()).output().unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&bad.display().to_string()) && stderr.contains("control.socket_mod"), "{stderr}");
}

#[test]
fn print_config_shows_files_flags_and_environment() {
    let (dir, _hyperctl, hyperllamad) = test_dir();
    std::fs::write(dir.path().join("hyperllama.toml"), "[quota]\nmax_queued_requests = 7\n").unwrap();
    let mut command = Daemon::command(dir.path(), &hyperllamad, &DaemonOptions::default());
    command.arg("--print-config").env("HYPERLLAMA_DRAIN_TIMEOUT", "9s");
    let out = command.output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("max_queued_requests = 7"), "{stdout}");
    assert!(stdout.contains("drain_timeout = \"9s\""), "{stdout}");
    assert!(stdout.contains(&format!("state_dir = \"{}", dir.path().join("state").display())), "{stdout}");
}

#[test]
fn sighup_reloads_configuration() {
    let daemon = Daemon::start(DaemonOptions::default());
    std::fs::write(daemon.dir.path().join("hyperllama.toml"), "[quota]\nmax_queued_requests = 11\n").unwrap();
    daemon.signal(Signal::SIGHUP);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let shown = String::from_utf8_lossy(&daemon.ctl(&["quota", "show"]).stdout).to_string();
        if shown.contains("queued requests      11") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "reload not applied: {shown}\n{}", daemon.log());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Regression: copying the binaries in-process left the copy's write descriptor open in any child
/// another test thread forked meanwhile, so executing the copy failed with ETXTBSY ("Text file
/// busy") in CI. The copy now happens in a child process of its own. The race needs a fork inside a
/// window of microseconds, so this test reproduces the CI load rather than failing every time.
#[test]
fn fresh_binary_copies_run_while_other_threads_spawn() {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let spawners: Vec<_> = (0..4)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    // Setting the uid makes std fork (instead of posix_spawn), as the harness does.
                    let uid = nix::unistd::getuid().as_raw();
                    let _ = std::process::Command::new("true").uid(uid).status();
                }
            })
        })
        .collect();
    let mut failures = Vec::new();
    for _ in 0..30 {
        let (_dir, hyperctl, _hyperllamad) = test_dir();
        match std::process::Command::new(&hyperctl).arg("--version").output() {
            Ok(out) if out.status.success() => {}
            Ok(out) => failures.push(text(&out)),
            Err(error) => failures.push(error.to_string()),
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    spawners.into_iter().for_each(|s| s.join().unwrap());
    assert!(failures.is_empty(), "{failures:?}");
}
