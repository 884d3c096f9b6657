//! End-to-end tests of the model store without a registry: `hyperctl create` (files streamed by
//! the client, never opened by the daemon), `list`, `show`, `cp`, `rm` with reference counting,
//! hostile model files, broken models, and kill -9 during metadata writes.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Output;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyperllama_tests::gguf_file::{GgufBuilder, hostile_files};
use hyperllama_tests::registry::{blob_files, blobs_dir, integrity_check, restart, start_daemon, stop};
use hyperllama_tests::{Daemon, DaemonOptions, TestGroup, TestUser, is_root, skip, text};

fn stdout(out: &Output) -> String {
    assert!(out.status.success(), "{}", text(out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A private directory (0700, the test's user) holding `files`, and the Modelfile `modelfile`.
fn workdir(files: &[(&str, &[u8])], modelfile: &str) -> tempfile::TempDir {
    let dir = tempfile::Builder::new().prefix("hyperllama-create-").tempdir().unwrap();
    for (name, bytes) in files {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    std::fs::write(dir.path().join("Modelfile"), modelfile).unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    dir
}

fn create(daemon: &Daemon, name: &str, dir: &Path) -> Output {
    let modelfile = dir.join("Modelfile");
    daemon.ctl(&["create", name, "-f", modelfile.to_str().unwrap()])
}

fn id_of(list: &str, name: &str) -> String {
    let line = list.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("{name} not in:\n{list}"));
    line.split_whitespace().nth(1).unwrap().to_string()
}

const FULL_MODELFILE: &str = "FROM ./tiny.gguf\nPARAMETER temperature 0.3\nPARAMETER stop \"<|end|>\"\n\
PARAMETER stop \"User:\"\nTEMPLATE \"\"\"{{ .System }} {{ .Prompt }}\"\"\"\nSYSTEM \"\"\"Be brief.\"\"\"\n\
MESSAGE user Hi\nMESSAGE assistant Hello\nLICENSE \"\"\"MIT License\"\"\"\n";

#[test]
fn create_streams_a_file_the_daemon_cannot_read_and_show_describes_it() {
    let daemon = start_daemon("", &DaemonOptions::default());
    let gguf = GgufBuilder::tiny_llama("create").build();
    let dir = workdir(&[("tiny.gguf", &gguf)], FULL_MODELFILE);
    if is_root() {
        // The daemon runs as the service account: the 0700 directory and 0600 file are closed to it.
        let status: serde_json::Value =
            serde_json::from_str(&stdout(&daemon.ctl(&["status", "--json"]))).unwrap();
        assert_eq!(status["service_user"], hyperllama_tests::SERVICE_USER);
    }
    let out = create(&daemon, "tiny", dir.path());
    assert!(out.status.success(), "{}\n{}", text(&out), daemon.log());
    let progress = stderr(&out);
    for step in [
        "transferring model data",
        "100%",
        "parsing GGUF",
        "creating new layer",
        "writing manifest",
        "success",
    ] {
        assert!(progress.contains(step), "{step}: {progress}");
    }
    let list = stdout(&daemon.ctl(&["list"]));
    assert!(list.contains("tiny:latest"), "{list}");
    let show = stdout(&daemon.ctl(&["show", "tiny"]));
    for fact in [
        "architecture        llama",
        "context length      2048",
        "embedding length    64",
        "quantization        F32",
    ] {
        assert!(show.contains(fact), "{fact}: {show}");
    }
    assert!(show.contains("temperature") && show.contains("Be brief."), "{show}");
    assert_eq!(stdout(&daemon.ctl(&["show", "tiny", "--system"])).trim(), "Be brief.");
    assert_eq!(stdout(&daemon.ctl(&["show", "tiny", "--template"])).trim(), "{{ .System }} {{ .Prompt }}");
    assert_eq!(stdout(&daemon.ctl(&["show", "tiny", "--license"])).trim(), "MIT License");
    let verbose = stdout(&daemon.ctl(&["show", "tiny", "--verbose"]));
    assert!(verbose.contains("tokenizer.ggml.tokens") && verbose.contains("(256 items)"), "{verbose}");

    // The blob is the file, named by its sha256, readable but not writable by others.
    let files = blob_files(&daemon);
    let digest = format!("sha256-{}", hex_sha256(&gguf));
    assert!(files.iter().all(|(_, ok)| *ok), "{files:?}");
    assert!(files.iter().any(|(n, _)| *n == digest), "{files:?}");
    let mode = std::fs::metadata(blobs_dir(&daemon).join(&digest)).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o644);

    // `show --modelfile` recreates the same model (the same id).
    let modelfile = stdout(&daemon.ctl(&["show", "tiny", "--modelfile"]));
    assert!(
        modelfile.contains("FROM tiny:latest") && modelfile.contains("PARAMETER stop User:"),
        "{modelfile}"
    );
    let again = workdir(&[], &modelfile);
    let out = create(&daemon, "tiny-again", again.path());
    assert!(out.status.success(), "{}", text(&out));
    assert!(stderr(&out).contains("using existing layer"), "{}", text(&out));
    let list = stdout(&daemon.ctl(&["list"]));
    assert_eq!(id_of(&list, "tiny:latest"), id_of(&list, "tiny-again:latest"), "{list}");

    if is_root() {
        let user = TestUser::create(&[]);
        let listed = stdout(&daemon.ctl_as(&user, &["list"]));
        assert!(listed.contains("tiny:latest"), "every user sees the shared store: {listed}");
    }
}

fn hex_sha256(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(bytes))
}

#[test]
fn create_refuses_what_the_client_may_not_read_and_bad_requests() {
    let admins = if is_root() { Some(TestGroup::create()) } else { None };
    let options =
        DaemonOptions { admin_group: admins.as_ref().map(|g| g.name.clone()), ..DaemonOptions::default() };
    let daemon = start_daemon("", &options);
    let dir = workdir(&[], "FROM /dev/zero\n");
    let out = create(&daemon, "zero", dir.path());
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(stderr(&out).contains("not a regular file"), "{}", text(&out));

    let fifo = dir.path().join("pipe.gguf");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    std::fs::write(dir.path().join("Modelfile"), "FROM ./pipe.gguf\n").unwrap();
    let out = create(&daemon, "fifo", dir.path());
    assert!(stderr(&out).contains("not a regular file"), "{}", text(&out));

    std::fs::write(dir.path().join("Modelfile"), "FROM ./tiny.gguf\n").unwrap();
    std::fs::write(dir.path().join("tiny.gguf"), GgufBuilder::tiny_llama("q").build()).unwrap();
    let out =
        daemon.ctl(&["create", "q", "-f", dir.path().join("Modelfile").to_str().unwrap(), "-q", "q4_K_M"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(stderr(&out).contains("quantization is not supported yet"), "{}", text(&out));

    std::fs::write(dir.path().join("Modelfile"), "FROM ./tiny.gguf\nSYSTEM ok\nSHOUT loud\n").unwrap();
    let out = create(&daemon, "bad", dir.path());
    assert!(
        stderr(&out).contains("line 3") && stderr(&out).contains("unknown instruction"),
        "{}",
        text(&out)
    );
    std::fs::write(dir.path().join("Modelfile"), "FROM no-such-model\n").unwrap();
    let out = create(&daemon, "orphan", dir.path());
    assert_eq!(out.status.code(), Some(5), "{}", text(&out));
    assert!(blob_files(&daemon).is_empty(), "nothing was stored: {:?}", blob_files(&daemon));

    if let Some(admins) = &admins {
        // An administrator who cannot read /etc/shadow cannot make the daemon read it either.
        let admin = TestUser::create(&[&admins.name]);
        let shared_dir = tempfile::Builder::new().prefix("hyperllama-shadow-").tempdir().unwrap();
        std::fs::set_permissions(shared_dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let modelfile = shared_dir.path().join("Modelfile");
        std::fs::write(&modelfile, "FROM /etc/shadow\n").unwrap();
        std::fs::set_permissions(&modelfile, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::os::unix::fs::symlink("/etc/shadow", shared_dir.path().join("link.gguf")).unwrap();
        let tiny = shared_dir.path().join("tiny.gguf");
        std::fs::write(&tiny, GgufBuilder::tiny_llama("shadow").build()).unwrap();
        std::fs::set_permissions(&tiny, std::fs::Permissions::from_mode(0o644)).unwrap();
        for text_in in ["FROM /etc/shadow\n", "FROM ./link.gguf\n", "FROM ./tiny.gguf\nADAPTER /etc/shadow\n"]
        {
            std::fs::write(&modelfile, text_in).unwrap();
            let out = daemon.ctl_as(&admin, &["create", "shadow", "-f", modelfile.to_str().unwrap()]);
            assert_eq!(out.status.code(), Some(1), "{text_in}: {}", text(&out));
            assert!(stderr(&out).contains("cannot read it as you"), "{text_in}: {}", text(&out));
        }
        assert!(!daemon.log().contains("shadow"), "the request never reached the daemon:\n{}", daemon.log());
    }
}

#[test]
fn hostile_model_files_are_refused_and_the_daemon_lives_on() {
    let daemon = start_daemon("", &DaemonOptions::default());
    let pid = daemon.pid();
    for case in hostile_files() {
        let dir = workdir(&[("model.gguf", &case.bytes)], "FROM ./model.gguf\n");
        let out = create(&daemon, "hostile", dir.path());
        assert_eq!(out.status.code(), Some(1), "{}: {}", case.name, text(&out));
        let err = stderr(&out);
        let last = err.lines().last().unwrap_or_default();
        assert!(last.starts_with("Error: ") && last.contains(case.expect), "{}: {err}", case.name);
    }
    let status: serde_json::Value =
        serde_json::from_str(&stdout(&daemon.ctl(&["status", "--json"]))).unwrap();
    assert_eq!(status["pid"], pid, "the daemon never crashed");
    assert!(blob_files(&daemon).is_empty(), "{:?}", blob_files(&daemon));
    let staging = daemon.dir.path().join("state/staging");
    assert_eq!(std::fs::read_dir(&staging).unwrap().count(), 0, "no upload left in staging");
    assert!(!stdout(&daemon.ctl(&["list"])).contains("hostile"));
}

#[test]
fn cp_and_rm_count_references() {
    let daemon = start_daemon("", &DaemonOptions::default());
    let gguf = GgufBuilder::tiny_llama("refs").build();
    let a = workdir(&[("tiny.gguf", &gguf)], "FROM ./tiny.gguf\nSYSTEM a\n");
    let b = workdir(&[("tiny.gguf", &gguf)], "FROM ./tiny.gguf\nSYSTEM b\n");
    assert!(create(&daemon, "a", a.path()).status.success());
    assert!(create(&daemon, "b", b.path()).status.success());
    let model_blob = format!("sha256-{}", hex_sha256(&gguf));
    let has_model = |d: &Daemon| blob_files(d).iter().any(|(n, _)| *n == model_blob);
    assert_eq!(stdout(&daemon.ctl(&["cp", "a", "c"])).trim(), "copied 'a' to 'c'");
    let list = stdout(&daemon.ctl(&["list"]));
    assert_eq!(id_of(&list, "a:latest"), id_of(&list, "c:latest"));
    assert!(daemon.ctl(&["rm", "a"]).status.success());
    assert!(has_model(&daemon), "c and b still use it");
    assert!(daemon.ctl(&["rm", "c"]).status.success());
    assert!(has_model(&daemon), "b still uses it");
    assert!(stdout(&daemon.ctl(&["show", "b", "--system"])).contains('b'));
    assert!(daemon.ctl(&["rm", "b"]).status.success());
    assert!(blob_files(&daemon).is_empty(), "the last reference took every blob: {:?}", blob_files(&daemon));
    let again = daemon.ctl(&["rm", "b"]);
    assert_eq!(again.status.code(), Some(5), "{}", text(&again));
    let missing = daemon.ctl(&["cp", "nothing", "x"]);
    assert_eq!(missing.status.code(), Some(5), "{}", text(&missing));
}

#[test]
fn a_missing_blob_marks_the_model_broken() {
    let daemon = start_daemon("", &DaemonOptions::default());
    let gguf = GgufBuilder::tiny_llama("broken").build();
    let dir = workdir(&[("tiny.gguf", &gguf)], "FROM ./tiny.gguf\nSYSTEM s\n");
    assert!(create(&daemon, "fragile", dir.path()).status.success());
    let blob = blobs_dir(&daemon).join(format!("sha256-{}", hex_sha256(&gguf)));
    let stopped = stop(daemon, false);
    std::fs::remove_file(&blob).unwrap();
    let daemon = stopped.start(&DaemonOptions::default());
    let list = stdout(&daemon.ctl(&["list"]));
    assert!(list.contains("fragile:latest (broken)"), "{list}");
    let status: serde_json::Value =
        serde_json::from_str(&stdout(&daemon.ctl(&["status", "--json"]))).unwrap();
    assert_eq!(status["broken_models"], 1, "{status}");
    assert!(daemon.log().contains("blob file is missing"), "{}", daemon.log());
    assert!(daemon.ctl(&["rm", "fragile"]).status.success());
    assert!(blob_files(&daemon).is_empty(), "{:?}", blob_files(&daemon));
}

#[test]
fn orphaned_blobs_are_removed_at_start() {
    let daemon = start_daemon("", &DaemonOptions::default());
    let stopped = stop(daemon, true);
    let blobs = stopped.path().join("state/blobs");
    let orphan = blobs.join(format!("sha256-{}", hex_sha256(b"orphan")));
    std::fs::write(&orphan, b"orphan").unwrap();
    std::fs::write(blobs.join("stray-file"), b"x").unwrap();
    let daemon = stopped.start(&DaemonOptions::default());
    assert!(blob_files(&daemon).is_empty(), "{:?}", blob_files(&daemon));
    assert!(daemon.log().contains("orphans_removed=2"), "{}", daemon.log());
}

#[test]
fn kill_9_during_metadata_writes_loses_no_acknowledged_model() {
    let options = DaemonOptions::default();
    let mut daemon = start_daemon("", &options);
    let dir = workdir(&[("tiny.gguf", &GgufBuilder::tiny_llama("crash").build())], "FROM ./tiny.gguf\n");
    assert!(create(&daemon, "base", dir.path()).status.success());
    let acknowledged = Arc::new(Mutex::new(Vec::<String>::new()));
    for round in 0..4u64 {
        let hyperctl = daemon.hyperctl.clone();
        let socket = daemon.socket.clone();
        let acked = Arc::clone(&acknowledged);
        let writer = std::thread::spawn(move || {
            for i in 0.. {
                let name = format!("copy-{round}-{i}");
                let out = std::process::Command::new(&hyperctl)
                    .arg("--host")
                    .arg(&socket)
                    .args(["cp", "base", &name])
                    .output()
                    .unwrap();
                if !out.status.success() {
                    break;
                }
                acked.lock().unwrap().push(name);
            }
        });
        std::thread::sleep(Duration::from_millis(300 + 170 * round));
        daemon = restart(daemon, &options, true);
        writer.join().unwrap();
    }
    let (check, _) = integrity_check(&daemon);
    assert_eq!(check, "ok");
    let list = stdout(&daemon.ctl(&["list"]));
    let acked = acknowledged.lock().unwrap();
    assert!(acked.len() >= 4, "the writers made progress: {acked:?}");
    for name in acked.iter() {
        assert!(list.contains(&format!("{name}:latest")), "acknowledged {name} was lost:\n{list}");
    }
    assert!(blob_files(&daemon).iter().all(|(_, ok)| *ok));
}

#[test]
fn gemma_3_270m_creates_and_shows() {
    // (It looked in .cache/gemma/, where nothing puts the file, so it was skipped in every run.)
    let Some(gguf) = hyperllama_tests::gemma_model() else {
        return skip(
            "gemma_3_270m_creates_and_shows",
            "no Gemma 3 270M file: set HYPERLLAMA_TEST_GEMMA (scripts/test.sh fetches it)",
        );
    };
    let daemon = start_daemon("", &DaemonOptions::default());
    let dir = workdir(&[], &format!("FROM {}\nPARAMETER stop \"<end_of_turn>\"\n", gguf.display()));
    let out = create(&daemon, "gemma3-270m", dir.path());
    assert!(out.status.success(), "{}", text(&out));
    let list = stdout(&daemon.ctl(&["list"]));
    assert!(list.contains("gemma3-270m:latest") && list.contains("253 MB"), "{list}");
    let show = stdout(&daemon.ctl(&["show", "gemma3-270m"]));
    for fact in [
        "architecture        gemma3",
        "context length      32768",
        "embedding length    640",
        "quantization        Q4_K_M",
        "268M",
    ] {
        assert!(show.contains(fact), "{fact}: {show}");
    }
    let name = "sha256-a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818";
    assert!(blobs_dir(&daemon).join(name).exists(), "stored under its published sha256");
}
