//! `ModuleCache`: compiles kernel families with NVRTC for one GPU architecture and keeps the
//! images on disk, so a second process (or the next start) loads them without compiling.
//!
//! Layout: `<cache_dir>/<target>/<family>-<key>.<cubin|ptx>`, where `<target>` is `sm_90` for
//! exact-architecture CUBIN (the normal case) or `compute_90` for PTX (only when the device is
//! newer than the loaded NVRTC knows, so the driver JIT-compiles it), and `<key>` is the SHA-256
//! of the family name, source, headers, NVRTC options, NVRTC version and image kind.
//! Each file is `MAGIC | sha256(payload) | payload`; a short, foreign or corrupt file is a miss.
//! Files are written to a temporary name in the same directory, fsynced, then renamed, so
//! readers never see a partial image and concurrent writers simply race to an identical file.
//! The cache directory must be writable only by the service user: images in it run on the GPU.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest, Sha256};

use crate::error::KernelError;
use crate::family::{HEADERS, KernelFamily};
use crate::nvrtc::{self, CompileJob, ImageKind};

/// Overrides the default cache directory.
pub const KERNEL_CACHE_ENV: &str = "HYPERLLAMA_KERNEL_CACHE";

const MAGIC: &[u8; 8] = b"HLKC\x01\0\0\0";
const DIGEST_LEN: usize = 32;

/// `$HYPERLLAMA_KERNEL_CACHE`, else `$XDG_CACHE_HOME/hyperllama/kernels`, else
/// `~/.cache/hyperllama/kernels`, else `<tmp>/hyperllama-kernels`.
pub fn default_cache_dir() -> PathBuf {
    let env_dir = |name: &str| std::env::var_os(name).map(PathBuf::from).filter(|p| p.is_absolute());
    if let Some(dir) = env_dir(KERNEL_CACHE_ENV) {
        return dir;
    }
    if let Some(dir) = env_dir("XDG_CACHE_HOME") {
        return dir.join("hyperllama").join("kernels");
    }
    if let Some(home) = env_dir("HOME") {
        return home.join(".cache").join("hyperllama").join("kernels");
    }
    std::env::temp_dir().join("hyperllama-kernels")
}

/// What to compile a family into: the NVRTC `--gpu-architecture` value and the image kind.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Target {
    /// `sm_90` (with `ImageKind::Cubin`) or `compute_90` (with `ImageKind::Ptx`).
    pub arch: String,
    /// CUBIN for an exact architecture, PTX for a virtual one.
    pub kind: ImageKind,
}

impl Target {
    /// Picks the target for a device of compute capability `(major, minor)` given the real
    /// architectures NVRTC supports: CUBIN for the exact architecture when NVRTC knows it,
    /// otherwise PTX for the newest older architecture it knows (the driver JITs it forward).
    pub fn for_device(capability: (u32, u32), supported: &[u32]) -> Option<Target> {
        let arch = capability.0 * 10 + capability.1;
        if supported.contains(&arch) {
            return Some(Target { arch: format!("sm_{arch}"), kind: ImageKind::Cubin });
        }
        supported
            .iter()
            .copied()
            .filter(|&a| a < arch)
            .max()
            .map(|a| Target { arch: format!("compute_{a}"), kind: ImageKind::Ptx })
    }

    /// The NVRTC options for this target.
    pub fn options(&self) -> Vec<String> {
        vec![format!("--gpu-architecture={}", self.arch), "--std=c++17".to_string()]
    }
}

/// A compiled (or cached) image for one family and target.
#[derive(Clone, Debug)]
pub struct CompiledImage {
    /// CUBIN bytes, or PTX text with its trailing NUL.
    pub bytes: Vec<u8>,
    /// Which of the two `bytes` holds.
    pub kind: ImageKind,
    /// The cache file it was read from or written to.
    pub path: PathBuf,
    /// True when read from disk, false when compiled now.
    pub from_cache: bool,
}

/// The inputs that decide an image's bytes; their hash names the cache file.
#[derive(Clone, Debug)]
pub struct CacheKeyInputs<'a> {
    /// Family name (`norm`).
    pub family: &'a str,
    /// The `.cu` source.
    pub source: &'a str,
    /// In-memory headers, `(include name, text)`.
    pub headers: &'a [(&'a str, &'a str)],
    /// NVRTC options, in order.
    pub options: &'a [String],
    /// `(major, minor)` of the NVRTC that compiles it.
    pub nvrtc_version: (i32, i32),
    /// CUBIN or PTX.
    pub kind: ImageKind,
}

/// Hex SHA-256 over all `inputs`, each length-prefixed so no two input lists collide.
pub fn cache_key(inputs: &CacheKeyInputs<'_>) -> String {
    let mut h = Sha256::new();
    let mut field = |bytes: &[u8]| {
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    };
    field(b"hyperllama-kernels cache v1");
    field(inputs.family.as_bytes());
    field(inputs.source.as_bytes());
    for (name, text) in inputs.headers {
        field(name.as_bytes());
        field(text.as_bytes());
    }
    field(b"--options--");
    for o in inputs.options {
        field(o.as_bytes());
    }
    field(&inputs.nvrtc_version.0.to_le_bytes());
    field(&inputs.nvrtc_version.1.to_le_bytes());
    field(inputs.kind.extension().as_bytes());
    hex(&h.finalize())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Disk cache of NVRTC output under one directory; cheap to clone and share between GPUs.
#[derive(Clone, Debug)]
pub struct ModuleCache {
    dir: PathBuf,
}

impl ModuleCache {
    /// A cache rooted at `cache_dir` (created on first write).
    pub fn new(cache_dir: PathBuf) -> Self {
        ModuleCache { dir: cache_dir }
    }

    /// The root directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file an image with this key lives in.
    pub fn entry_path(&self, target: &Target, family: &str, key: &str) -> PathBuf {
        self.dir.join(&target.arch).join(format!("{family}-{key}.{}", target.kind.extension()))
    }

    /// The image of `family` for a device of compute capability `capability`: from disk when
    /// present and intact, else compiled with NVRTC and stored.
    pub fn image(&self, family: KernelFamily, capability: (u32, u32)) -> Result<CompiledImage, KernelError> {
        let nvrtc = nvrtc::nvrtc()?;
        let supported = nvrtc.supported_archs()?;
        let target = Target::for_device(capability, &supported).ok_or_else(|| KernelError::Nvrtc {
            op: "target selection",
            message: format!(
                "compute capability {}.{} is older than every architecture this NVRTC supports ({supported:?})",
                capability.0, capability.1
            ),
        })?;
        let options = target.options();
        let key = cache_key(&CacheKeyInputs {
            family: family.name(),
            source: family.source(),
            headers: HEADERS,
            options: &options,
            nvrtc_version: nvrtc.version(),
            kind: target.kind,
        });
        let path = self.entry_path(&target, family.name(), &key);
        self.get_or_insert_with(&path, target.kind, || {
            nvrtc.compile(&CompileJob {
                family: family.name(),
                source: family.source(),
                headers: HEADERS,
                options: &options,
                arch_label: &target.arch,
                kind: target.kind,
            })
        })
    }

    /// Reads `path` if it holds an intact image, otherwise calls `compile` and stores its
    /// result atomically. Exposed so the cache logic can be tested without NVRTC.
    pub fn get_or_insert_with(
        &self,
        path: &Path,
        kind: ImageKind,
        compile: impl FnOnce() -> Result<Vec<u8>, KernelError>,
    ) -> Result<CompiledImage, KernelError> {
        if let Some(bytes) = read_entry(path)? {
            return Ok(CompiledImage { bytes, kind, path: path.to_path_buf(), from_cache: true });
        }
        let bytes = compile()?;
        write_entry(path, &bytes)?;
        Ok(CompiledImage { bytes, kind, path: path.to_path_buf(), from_cache: false })
    }
}

/// The payload of a cache file, or `None` if it is missing, truncated or corrupt.
pub fn read_entry(path: &Path) -> Result<Option<Vec<u8>>, KernelError> {
    let data = match fs::read(path) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(KernelError::cache_io(path)(e)),
    };
    let header = MAGIC.len() + DIGEST_LEN;
    if data.len() < header || &data[..MAGIC.len()] != MAGIC {
        return Ok(None);
    }
    let (digest, payload) = data[MAGIC.len()..].split_at(DIGEST_LEN);
    if Sha256::digest(payload)[..] != *digest {
        return Ok(None);
    }
    Ok(Some(payload.to_vec()))
}

/// Writes `payload` to `path` atomically: temporary file in the same directory, fsync, rename.
pub fn write_entry(path: &Path, payload: &[u8]) -> Result<(), KernelError> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let dir = path.parent().ok_or_else(|| {
        KernelError::cache_io(path)(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "cache path has no parent directory",
        ))
    })?;
    fs::create_dir_all(dir).map_err(KernelError::cache_io(dir))?;
    let file_name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(
        ".{file_name}.{}.{}.tmp",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut f = fs::OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        f.write_all(MAGIC)?;
        f.write_all(&Sha256::digest(payload))?;
        f.write_all(payload)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(KernelError::cache_io(path)(e));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_prefers_exact_cubin_then_older_ptx() {
        let supported = [75, 80, 86, 89, 90, 100, 120];
        let t = Target::for_device((9, 0), &supported).unwrap();
        assert_eq!((t.arch.as_str(), t.kind), ("sm_90", ImageKind::Cubin));
        let t = Target::for_device((12, 1), &supported).unwrap();
        assert_eq!((t.arch.as_str(), t.kind), ("compute_120", ImageKind::Ptx));
        assert!(Target::for_device((7, 0), &supported).is_none());
        assert_eq!(
            Target::for_device((9, 0), &supported).unwrap().options(),
            vec!["--gpu-architecture=sm_90", "--std=c++17"]
        );
    }
}
