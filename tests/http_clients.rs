//! Conformance with the official clients: starts the real daemon with tiny models and the test
//! registry, then runs the pytest suite in `tests/clients/` with the `ollama` and `openai`
//! Python packages (pinned in `tests/clients/requirements.txt`, installed into the repository's
//! `.venv` by `scripts/test.sh`). Skipped, saying why, when that virtualenv is missing.

use std::path::{Path, PathBuf};
use std::process::Command;

use hyperllama_tests::registry::TestRegistry;
use hyperllama_tests::tiny_model::{TinyModelSpec, tiny_llama_bytes, write_tiny_llama};
use hyperllama_tests::{Daemon, DaemonOptions, is_root, skip, text};

const CHAT_TEMPLATE: &str = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}\
                             {% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

fn python() -> Option<PathBuf> {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let python = std::env::var_os("HYPERLLAMA_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo.join(".venv/bin/python"));
    let ok = Command::new(&python)
        .args(["-c", "import ollama, openai, pytest, httpx"])
        .output()
        .is_ok_and(|o| o.status.success());
    ok.then_some(python)
}

fn create(daemon: &Daemon, name: &str, spec: &TinyModelSpec) -> PathBuf {
    let file = daemon.dir.path().join(format!("{name}.gguf"));
    write_tiny_llama(&file, spec).unwrap();
    let modelfile = daemon.dir.path().join(format!("{name}.Modelfile"));
    std::fs::write(&modelfile, format!("FROM {}\n", file.display())).unwrap();
    let out = daemon.ctl(&["create", name, "-f", modelfile.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    file
}

#[test]
fn official_python_clients() {
    let Some(python) = python() else {
        return skip(
            "official_python_clients",
            "no .venv with the ollama and openai packages (scripts/test.sh installs tests/clients/requirements.txt)",
        );
    };
    let registry = TestRegistry::start();
    let published =
        TinyModelSpec { seed: 7, chat_template: Some(CHAT_TEMPLATE.into()), ..TinyModelSpec::default() };
    registry
        .publish("tinyreg:latest", &[("application/vnd.ollama.image.model", tiny_llama_bytes(&published))]);
    let daemon = Daemon::start(DaemonOptions { config: registry.config(""), ..Default::default() });
    let chat = TinyModelSpec { chat_template: Some(CHAT_TEMPLATE.into()), ..TinyModelSpec::default() };
    create(&daemon, "tiny", &chat);
    create(
        &daemon,
        "tiny-embed",
        &TinyModelSpec { seed: 3, pooling_type: Some(1), ..TinyModelSpec::default() },
    );
    let upload =
        create(&daemon, "tiny-upload-source", &TinyModelSpec { seed: 11, ..TinyModelSpec::default() });
    // Root over TCP is anonymous, so store changes go through root's own socket (SO_PEERCRED).
    let socket = if is_root() {
        let out = daemon.ctl(&["endpoint"]);
        assert!(out.status.success(), "{}", text(&out));
        daemon.dir.path().join(format!("run/users/{}.sock", nix::unistd::Uid::effective().as_raw()))
    } else {
        PathBuf::new()
    };
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new(&python)
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/clients"])
        .current_dir(&repo)
        .env("HL_HOST", format!("http://{}", daemon.http_addr()))
        .env("HL_SOCKET", &socket)
        .env("HL_MODEL", "tiny")
        .env("HL_EMBED_MODEL", "tiny-embed")
        .env("HL_REGISTRY_MODEL", "tinyreg")
        .env("HL_GGUF", &upload)
        .env("HL_ROOT", if is_root() { "1" } else { "0" })
        .env_remove("OLLAMA_HOST")
        .env_remove("OLLAMA_API_KEY")
        .env_remove("OPENAI_API_KEY")
        .env_remove("OPENAI_BASE_URL")
        .output()
        .unwrap();
    let report =
        format!("{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    println!("{report}");
    let log = daemon.log();
    let tail: Vec<&str> = log.lines().filter(|l| !l.contains("llama.cpp::")).collect();
    let tail = tail[tail.len().saturating_sub(80)..].join("\n");
    assert!(out.status.success(), "pytest failed:\n{report}\n--- daemon log (end) ---\n{tail}");
}
