//! Our own dynamic loader for NVRTC (the CUDA run-time compiler) and the one call we need from
//! it: compile a `.cu` source with in-memory headers to a CUBIN or PTX image.
//!
//! Why not `cudarc::nvrtc`: cudarc built with `cuda-12080` looks only for `libnvrtc.so`,
//! `libnvrtc.so.12` and older names, so on a CUDA 13 machine without the unversioned dev
//! symlink it cannot find `libnvrtc.so.13`, and it panics instead of returning an error.
//! Search order here (first that loads wins):
//! 1. `$HYPERLLAMA_NVRTC_PATH`: a library file, or a directory holding one;
//! 2. the dynamic loader's own search (`LD_LIBRARY_PATH`, ld.so cache) for `libnvrtc.so.13`,
//!    `libnvrtc.so.12`, `libnvrtc.so.11.2`, `libnvrtc.so`;
//! 3. the same names in `$CUDA_HOME/lib64`, `$CUDA_PATH/lib64`, `/usr/local/cuda/lib64`,
//!    `/usr/local/cuda/targets/<arch>-linux/lib` and `/usr/local/cuda-*/lib64` (newest first).
//!
//! The library is opened once per process and never unloaded.

use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use libloading::Library;

use crate::error::KernelError;

type NvrtcResult = c_int;
type Program = *mut c_void;

/// The environment variable that names libnvrtc (a file) or the directory that holds it.
pub const NVRTC_PATH_ENV: &str = "HYPERLLAMA_NVRTC_PATH";

const SONAMES: [&str; 4] = ["libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so.11.2", "libnvrtc.so"];

/// What NVRTC should produce.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ImageKind {
    /// Machine code for exactly one architecture (`-arch=sm_XY`).
    Cubin,
    /// PTX for a virtual architecture (`-arch=compute_XY`), JIT-compiled by the driver.
    Ptx,
}

impl ImageKind {
    /// File extension and cache-key tag.
    pub fn extension(self) -> &'static str {
        match self {
            ImageKind::Cubin => "cubin",
            ImageKind::Ptx => "ptx",
        }
    }
}

/// One compilation: source, in-memory headers (`#include "name"`), options.
pub(crate) struct CompileJob<'a> {
    pub family: &'static str,
    pub source: &'a str,
    pub headers: &'a [(&'static str, &'static str)],
    pub options: &'a [String],
    pub arch_label: &'a str,
    pub kind: ImageKind,
}

type VersionFn = unsafe extern "C" fn(*mut c_int, *mut c_int) -> NvrtcResult;
type ErrorStringFn = unsafe extern "C" fn(NvrtcResult) -> *const c_char;
type CreateFn = unsafe extern "C" fn(
    *mut Program,
    *const c_char,
    *const c_char,
    c_int,
    *const *const c_char,
    *const *const c_char,
) -> NvrtcResult;
type DestroyFn = unsafe extern "C" fn(*mut Program) -> NvrtcResult;
type CompileFn = unsafe extern "C" fn(Program, c_int, *const *const c_char) -> NvrtcResult;
type SizeFn = unsafe extern "C" fn(Program, *mut usize) -> NvrtcResult;
type BytesFn = unsafe extern "C" fn(Program, *mut c_char) -> NvrtcResult;
type IntFn = unsafe extern "C" fn(*mut c_int) -> NvrtcResult;

/// The loaded library and the entry points we use.
pub(crate) struct Nvrtc {
    _lib: Library,
    path: String,
    version: (i32, i32),
    error_string: ErrorStringFn,
    create: CreateFn,
    destroy: DestroyFn,
    compile: CompileFn,
    log_size: SizeFn,
    log: BytesFn,
    ptx_size: SizeFn,
    ptx: BytesFn,
    cubin_size: SizeFn,
    cubin: BytesFn,
    num_archs: IntFn,
    archs: IntFn,
}

static NVRTC: OnceLock<Result<Nvrtc, String>> = OnceLock::new();

/// The process-wide NVRTC, loaded on first use.
pub(crate) fn nvrtc() -> Result<&'static Nvrtc, KernelError> {
    NVRTC.get_or_init(load).as_ref().map_err(|tried| KernelError::NvrtcNotFound { tried: tried.clone() })
}

/// Where libnvrtc was loaded from and its version, or why it could not be loaded.
pub fn nvrtc_info() -> Result<(String, (i32, i32)), KernelError> {
    let n = nvrtc()?;
    Ok((n.path.clone(), n.version))
}

fn candidates() -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(p) = std::env::var_os(NVRTC_PATH_ENV).filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        if p.is_dir() {
            out.extend(SONAMES.iter().map(|n| p.join(n)));
        } else {
            out.push(p);
        }
    }
    out.extend(SONAMES.iter().map(PathBuf::from));
    let mut dirs: Vec<PathBuf> = ["CUDA_HOME", "CUDA_PATH"]
        .iter()
        .filter_map(std::env::var_os)
        .filter(|v| !v.is_empty())
        .map(|v| PathBuf::from(v).join("lib64"))
        .collect();
    dirs.push(PathBuf::from("/usr/local/cuda/lib64"));
    dirs.push(PathBuf::from(format!(
        "/usr/local/cuda/targets/{}-linux/lib",
        if cfg!(target_arch = "aarch64") { "sbsa" } else { std::env::consts::ARCH }
    )));
    let mut versioned: Vec<PathBuf> = std::fs::read_dir("/usr/local")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("cuda-")))
        .map(|p| p.join("lib64"))
        .collect();
    versioned.sort_by(|a, b| b.cmp(a));
    dirs.extend(versioned);
    for d in dirs {
        out.extend(SONAMES.iter().map(|n| d.join(n)));
    }
    out
}

fn load() -> Result<Nvrtc, String> {
    let mut tried = Vec::new();
    for candidate in candidates() {
        // A bare name goes to the dynamic loader's search; a path with '/' must exist.
        if candidate.components().count() > 1 && !candidate.exists() {
            continue;
        }
        // SAFETY: loading libnvrtc runs only its ELF initialisers, which have no preconditions
        // on our side; the Library is kept alive (in a static) as long as any symbol from it.
        match unsafe { Library::new(&candidate) } {
            Ok(lib) => match Nvrtc::from_library(lib, &candidate) {
                Ok(n) => return Ok(n),
                Err(e) => tried.push(format!("{} ({e})", candidate.display())),
            },
            Err(e) => {
                if candidate.components().count() > 1 {
                    tried.push(format!("{} ({e})", candidate.display()));
                } else {
                    tried.push(candidate.display().to_string());
                }
            }
        }
    }
    Err(tried.join(", "))
}

/// Copies a function pointer of type `T` out of `lib`.
///
/// # Safety
/// `T` must be the exact C signature of the symbol `name` in NVRTC's public API.
unsafe fn symbol<T: Copy>(lib: &Library, name: &str) -> Result<T, String> {
    // SAFETY: the caller guarantees the signature; the pointer is only used while `lib` lives
    // (both are stored together in `Nvrtc`, which lives in a static).
    unsafe { lib.get::<T>(name.as_bytes()) }.map(|s| *s).map_err(|e| format!("missing {name}: {e}"))
}

impl Nvrtc {
    fn from_library(lib: Library, path: &Path) -> Result<Nvrtc, String> {
        // SAFETY: each type alias above is the documented C prototype of the named NVRTC
        // function (nvrtc.h, stable since CUDA 11.1).
        let n = unsafe {
            let version: VersionFn = symbol(&lib, "nvrtcVersion")?;
            let (mut major, mut minor) = (0, 0);
            if version(&mut major, &mut minor) != 0 {
                return Err("nvrtcVersion failed".into());
            }
            Nvrtc {
                path: path.display().to_string(),
                version: (major, minor),
                error_string: symbol(&lib, "nvrtcGetErrorString")?,
                create: symbol(&lib, "nvrtcCreateProgram")?,
                destroy: symbol(&lib, "nvrtcDestroyProgram")?,
                compile: symbol(&lib, "nvrtcCompileProgram")?,
                log_size: symbol(&lib, "nvrtcGetProgramLogSize")?,
                log: symbol(&lib, "nvrtcGetProgramLog")?,
                ptx_size: symbol(&lib, "nvrtcGetPTXSize")?,
                ptx: symbol(&lib, "nvrtcGetPTX")?,
                cubin_size: symbol(&lib, "nvrtcGetCUBINSize")?,
                cubin: symbol(&lib, "nvrtcGetCUBIN")?,
                num_archs: symbol(&lib, "nvrtcGetNumSupportedArchs")?,
                archs: symbol(&lib, "nvrtcGetSupportedArchs")?,
                _lib: lib,
            }
        };
        Ok(n)
    }

    /// `(major, minor)` of the loaded NVRTC.
    pub(crate) fn version(&self) -> (i32, i32) {
        self.version
    }

    fn message(&self, code: NvrtcResult) -> String {
        // SAFETY: nvrtcGetErrorString accepts any code and returns a static NUL-terminated
        // string (or NULL, handled).
        let p = unsafe { (self.error_string)(code) };
        if p.is_null() {
            return format!("NVRTC error {code}");
        }
        // SAFETY: non-null, NUL-terminated, static storage owned by libnvrtc.
        unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
    }

    fn check(&self, op: &'static str, code: NvrtcResult) -> Result<(), KernelError> {
        if code == 0 { Ok(()) } else { Err(KernelError::Nvrtc { op, message: self.message(code) }) }
    }

    /// The real architectures (`75`, `80`, `90`, ...) this NVRTC can emit CUBIN for.
    pub(crate) fn supported_archs(&self) -> Result<Vec<u32>, KernelError> {
        let mut count: c_int = 0;
        // SAFETY: writes one int through a valid pointer.
        self.check("nvrtcGetNumSupportedArchs", unsafe { (self.num_archs)(&mut count) })?;
        let mut archs = vec![0 as c_int; usize::try_from(count).unwrap_or(0)];
        if !archs.is_empty() {
            // SAFETY: `archs` has room for exactly the `count` ints NVRTC reported.
            self.check("nvrtcGetSupportedArchs", unsafe { (self.archs)(archs.as_mut_ptr()) })?;
        }
        Ok(archs.into_iter().filter_map(|a| u32::try_from(a).ok()).collect())
    }

    /// Compiles `job` and returns the image bytes (CUBIN, or PTX with its trailing NUL).
    pub(crate) fn compile(&self, job: &CompileJob<'_>) -> Result<Vec<u8>, KernelError> {
        let cstr = |s: &str, what: &'static str| {
            CString::new(s).map_err(|_| KernelError::Nvrtc { op: what, message: "interior NUL byte".into() })
        };
        let source = cstr(job.source, "source")?;
        let name = cstr(&format!("{}.cu", job.family), "program name")?;
        let header_src: Vec<CString> =
            job.headers.iter().map(|(_, src)| cstr(src, "header")).collect::<Result<_, _>>()?;
        let header_names: Vec<CString> =
            job.headers.iter().map(|(n, _)| cstr(n, "header name")).collect::<Result<_, _>>()?;
        let options: Vec<CString> =
            job.options.iter().map(|o| cstr(o, "option")).collect::<Result<_, _>>()?;
        let header_src_ptrs: Vec<*const c_char> = header_src.iter().map(|s| s.as_ptr()).collect();
        let header_name_ptrs: Vec<*const c_char> = header_names.iter().map(|s| s.as_ptr()).collect();
        let option_ptrs: Vec<*const c_char> = options.iter().map(|s| s.as_ptr()).collect();
        let num_headers = c_int::try_from(header_src_ptrs.len()).unwrap_or(c_int::MAX);
        let num_options = c_int::try_from(option_ptrs.len()).unwrap_or(c_int::MAX);

        let mut program = ProgramGuard { nvrtc: self, raw: std::ptr::null_mut() };
        // SAFETY: every pointer is a live NUL-terminated CString (or an array of them with the
        // stated length) that outlives the call; NVRTC copies what it keeps.
        self.check("nvrtcCreateProgram", unsafe {
            (self.create)(
                &mut program.raw,
                source.as_ptr(),
                name.as_ptr(),
                num_headers,
                header_src_ptrs.as_ptr(),
                header_name_ptrs.as_ptr(),
            )
        })?;
        // SAFETY: `program.raw` was created above; the options array holds `num_options`
        // live CStrings.
        let rc = unsafe { (self.compile)(program.raw, num_options, option_ptrs.as_ptr()) };
        if rc != 0 {
            return Err(KernelError::Compile {
                family: job.family,
                arch: job.arch_label.to_string(),
                message: self.message(rc),
                log: program
                    .bytes(self.log_size, self.log, "nvrtcGetProgramLog")
                    .map(|b| trim_c_string(&b))
                    .unwrap_or_default(),
            });
        }
        match job.kind {
            ImageKind::Cubin => program.bytes(self.cubin_size, self.cubin, "nvrtcGetCUBIN"),
            ImageKind::Ptx => program.bytes(self.ptx_size, self.ptx, "nvrtcGetPTX"),
        }
    }
}

/// Destroys the NVRTC program on every exit path.
struct ProgramGuard<'a> {
    nvrtc: &'a Nvrtc,
    raw: Program,
}

impl ProgramGuard<'_> {
    fn bytes(&self, size: SizeFn, get: BytesFn, op: &'static str) -> Result<Vec<u8>, KernelError> {
        let mut len = 0usize;
        // SAFETY: `self.raw` is a live program; writes one size_t.
        self.nvrtc.check(op, unsafe { size(self.raw, &mut len) })?;
        let mut buf = vec![0u8; len];
        if len > 0 {
            // SAFETY: `buf` holds exactly the `len` bytes NVRTC just reported for this output.
            let rc = unsafe { get(self.raw, buf.as_mut_ptr().cast()) };
            self.nvrtc.check(op, rc)?;
        }
        Ok(buf)
    }
}

impl Drop for ProgramGuard<'_> {
    fn drop(&mut self) {
        if !self.raw.is_null() {
            // SAFETY: `raw` came from nvrtcCreateProgram and is destroyed exactly once.
            unsafe { (self.nvrtc.destroy)(&mut self.raw) };
        }
    }
}

fn trim_c_string(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).trim_end().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_start_with_sonames_and_cover_usr_local_cuda() {
        let c = candidates();
        assert!(c.iter().any(|p| p == Path::new("libnvrtc.so.13")));
        assert!(c.iter().any(|p| p == Path::new("/usr/local/cuda/lib64/libnvrtc.so.13")));
    }

    #[test]
    fn trims_log_at_nul() {
        assert_eq!(trim_c_string(b"error: x\n\0junk"), "error: x");
        assert_eq!(trim_c_string(b""), "");
    }
}
