//! `hyperctl create`: reads the Modelfile and every local file it names (FROM, ADAPTER) with the
//! invoking user's own rights, and streams them to the daemon, which never opens a client's path.

use std::io::Read;
use std::path::{Path, PathBuf};

use hyperllama_proto::v1 as pb;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::cli::CreateArgs;
use crate::client::Client;
use crate::commands::models::render_progress;
use crate::error::{CtlError, Result};

const CHUNK: usize = 1 << 20;

/// A local file the Modelfile refers to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalFile {
    /// Where it is.
    pub path: PathBuf,
    /// Its size in bytes.
    pub size: u64,
}

/// Rewrites FROM/ADAPTER lines naming local files to `@file:<n>` and returns those files.
/// Lines inside `"""` blocks are left alone. Relative paths are relative to the Modelfile.
pub fn rewrite_modelfile(text: &str, base: &Path) -> Result<(String, Vec<LocalFile>)> {
    let mut out = String::with_capacity(text.len());
    let mut files = Vec::new();
    let mut in_block = false;
    for line in text.lines() {
        let trimmed = line.trim_start();
        let (keyword, value) = trimmed.split_once(char::is_whitespace).unwrap_or((trimmed, ""));
        let value = value.trim();
        let is_file_ref =
            !in_block && (keyword.eq_ignore_ascii_case("FROM") || keyword.eq_ignore_ascii_case("ADAPTER"));
        if is_file_ref && keyword.eq_ignore_ascii_case("FROM") && resolve(value, base).is_dir() {
            let first = files.len();
            files.extend(folder_files(&resolve(value, base))?);
            if files.len() == first {
                return Err(CtlError::File {
                    path: resolve(value, base),
                    message: "the folder has no model files".into(),
                });
            }
            out.push_str(&format!("FROM @folder:{first}-{}\n", files.len() - 1));
            continue;
        }
        if is_file_ref && looks_like_path(value, base) {
            let path = resolve(value, base);
            let size = check_file(&path)?;
            out.push_str(&format!("{} @file:{}\n", keyword.to_ascii_uppercase(), files.len()));
            files.push(LocalFile { path, size });
            continue;
        }
        if line.matches("\"\"\"").count() % 2 == 1 {
            in_block = !in_block;
        }
        out.push_str(line);
        out.push('\n');
    }
    Ok((out, files))
}

fn looks_like_path(value: &str, base: &Path) -> bool {
    value.starts_with('/')
        || value.starts_with("./")
        || value.starts_with("../")
        || value.starts_with('~')
        || value.to_ascii_lowercase().ends_with(".gguf")
        || value.to_ascii_lowercase().ends_with(".safetensors")
        || base.join(value).is_file()
}

fn resolve(value: &str, base: &Path) -> PathBuf {
    if let Some(rest) = value.strip_prefix("~/") {
        return std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default().join(rest);
    }
    base.join(value)
}

/// Weight formats that can run code when loaded; a folder's copies of them are not sent (its
/// safetensors or GGUF weights are), and hyperllamad refuses them anyway.
const NOT_SENT: [&str; 9] = ["bin", "pt", "pth", "pkl", "ckpt", "py", "msgpack", "h5", "onnx"];

/// The files of a Hugging Face model folder, in name order: regular files at its top level,
/// leaving out hidden files and pickled or other code-carrying weights (with a note).
fn folder_files(dir: &Path) -> Result<Vec<LocalFile>> {
    let folder_error = |message: String| CtlError::File { path: dir.to_path_buf(), message };
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map_err(|e| folder_error(format!("cannot read the folder as you: {e}")))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    names.sort();
    let mut files = Vec::new();
    for name in names {
        let path = dir.join(&name);
        if path.is_dir() {
            eprintln!("skipping {} (only the folder's top-level files are imported)", path.display());
            continue;
        }
        let ext = name.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase()).unwrap_or_default();
        if NOT_SENT.contains(&ext.as_str()) {
            eprintln!("skipping {name} (only safetensors and GGUF weights are imported)");
            continue;
        }
        let size = check_file(&path)?;
        files.push(LocalFile { path, size });
    }
    Ok(files)
}

/// A file we can stream: it exists, we may read it, and it is a regular file (not a device or
/// FIFO that never ends).
fn check_file(path: &Path) -> Result<u64> {
    let file_error = |message: &str| CtlError::File { path: path.to_path_buf(), message: message.into() };
    let meta = std::fs::metadata(path).map_err(|e| file_error(&format!("cannot use this file: {e}")))?;
    if !meta.is_file() {
        return Err(file_error("not a regular file; FROM and ADAPTER must name model files"));
    }
    std::fs::File::open(path).map_err(|e| file_error(&format!("cannot read it as you: {e}")))?;
    Ok(meta.len())
}

/// Runs `create`.
pub async fn create(client: &mut Client, args: &CreateArgs) -> Result<()> {
    let text = std::fs::read_to_string(&args.file).map_err(|e| CtlError::File {
        path: args.file.clone(),
        message: format!("cannot read the Modelfile: {e}"),
    })?;
    let base = args.file.parent().map(Path::to_path_buf).unwrap_or_default();
    let (modelfile, files) = rewrite_modelfile(&text, &base)?;
    let (tx, rx) = mpsc::channel::<pb::CreateRequest>(4);
    let header = pb::CreateHeader {
        model: args.model.clone(),
        modelfile,
        quantize: args.quantize.clone().unwrap_or_default(),
    };
    let send = |item| pb::CreateRequest { item: Some(item) };
    tx.send(send(pb::create_request::Item::Header(header))).await.ok();
    // Read on a blocking thread; a full channel applies back-pressure to the disk reads.
    let reader = tokio::task::spawn_blocking(move || -> Result<()> {
        for (index, file) in files.iter().enumerate() {
            let start = pb::FileStart {
                index: u32::try_from(index).unwrap_or(u32::MAX),
                size: file.size,
                display_name: file
                    .path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
            };
            if tx.blocking_send(send(pb::create_request::Item::FileStart(start))).is_err() {
                return Ok(());
            }
            let mut handle = std::fs::File::open(&file.path)
                .map_err(|e| CtlError::File { path: file.path.clone(), message: e.to_string() })?;
            let mut buf = vec![0u8; CHUNK];
            loop {
                let n = handle.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                if tx.blocking_send(send(pb::create_request::Item::Chunk(buf[..n].to_vec()))).is_err() {
                    return Ok(());
                }
            }
        }
        Ok(())
    });
    let response = client.create(ReceiverStream::new(rx)).await;
    let outcome = match response {
        Ok(stream) => render_progress(stream.into_inner()).await,
        Err(status) => Err(status.into()),
    };
    // The reader ends once the request stream is gone; a local read error explains a failure
    // better than the daemon's view of a short upload.
    match (outcome, tokio::time::timeout(std::time::Duration::from_secs(5), reader).await) {
        (Err(_), Ok(Ok(Err(local)))) => Err(local),
        (outcome, _) => outcome,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_paths_are_replaced_and_blocks_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("m.gguf"), b"GGUF").unwrap();
        let text = "FROM ./m.gguf\nSYSTEM \"\"\"\nFROM ./m.gguf\n\"\"\"\nPARAMETER temperature 0\n";
        let (out, files) = rewrite_modelfile(text, dir.path()).unwrap();
        assert_eq!(files.len(), 1);
        assert_eq!(files[0].size, 4);
        assert!(out.starts_with("FROM @file:0\n"));
        assert!(out.contains("\nFROM ./m.gguf\n"), "inside a block stays: {out}");
    }

    #[test]
    fn folders_are_sent_file_by_file_without_pickles() {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("model");
        std::fs::create_dir_all(model.join("sub")).unwrap();
        for name in ["config.json", "model.safetensors", "pytorch_model.bin", ".gitattributes"] {
            std::fs::write(model.join(name), b"{}").unwrap();
        }
        let (out, files) = rewrite_modelfile("FROM ./model\nPARAMETER temperature 0\n", dir.path()).unwrap();
        assert!(out.starts_with("FROM @folder:0-1\n"), "{out}");
        let names: Vec<_> =
            files.iter().map(|f| f.path.file_name().unwrap().to_string_lossy().into_owned()).collect();
        assert_eq!(names, ["config.json", "model.safetensors"]);
    }

    #[test]
    fn model_names_are_not_paths() {
        let dir = tempfile::tempdir().unwrap();
        let (out, files) = rewrite_modelfile("FROM llama3.2:1b\n", dir.path()).unwrap();
        assert!(files.is_empty());
        assert_eq!(out, "FROM llama3.2:1b\n");
    }

    #[test]
    fn devices_and_missing_files_fail_on_the_client() {
        let dir = tempfile::tempdir().unwrap();
        let err = rewrite_modelfile("FROM /dev/zero\n", dir.path()).unwrap_err().to_string();
        assert!(err.contains("not a regular file"), "{err}");
        let err = rewrite_modelfile("FROM ./absent.gguf\n", dir.path()).unwrap_err().to_string();
        assert!(err.contains("absent.gguf"), "{err}");
    }
}
