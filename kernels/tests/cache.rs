//! Kernel cache logic that runs without a GPU: cache keys, atomic writes, corruption handling,
//! hit/miss behaviour; plus an NVRTC compile of every family when libnvrtc is present, and the
//! no-driver behaviour of the device entry points.

use std::path::Path;

use hyperllama_kernels::{
    CacheKeyInputs, Gpu, ImageKind, KernelError, KernelFamily, ModuleCache, Target, cache_key,
    driver_present, gpus, nvrtc_info, read_entry, write_entry,
};

fn inputs<'a>(options: &'a [String]) -> CacheKeyInputs<'a> {
    CacheKeyInputs {
        family: "norm",
        source: "extern \"C\" __global__ void k() {}",
        headers: &[("hl_common.cuh", "// common")],
        options,
        nvrtc_version: (13, 0),
        kind: ImageKind::Cubin,
    }
}

#[test]
fn cache_key_is_stable_and_covers_every_input() {
    let opts = vec!["--gpu-architecture=sm_90".to_string()];
    let base = cache_key(&inputs(&opts));
    assert_eq!(base.len(), 64);
    assert!(base.chars().all(|c| c.is_ascii_hexdigit()));
    assert_eq!(base, cache_key(&inputs(&opts)), "same inputs, same key");

    let other_opts = vec!["--gpu-architecture=sm_80".to_string()];
    let variants = [
        cache_key(&inputs(&other_opts)),
        cache_key(&CacheKeyInputs { source: "// changed", ..inputs(&opts) }),
        cache_key(&CacheKeyInputs { family: "other", ..inputs(&opts) }),
        cache_key(&CacheKeyInputs { nvrtc_version: (12, 8), ..inputs(&opts) }),
        cache_key(&CacheKeyInputs { kind: ImageKind::Ptx, ..inputs(&opts) }),
        cache_key(&CacheKeyInputs { headers: &[("hl_common.cuh", "// v2")], ..inputs(&opts) }),
    ];
    for v in &variants {
        assert_ne!(&base, v);
    }
    // Length prefixes keep ("ab", "c") and ("a", "bc") apart.
    let split = vec!["ab".to_string(), "c".to_string()];
    let split2 = vec!["a".to_string(), "bc".to_string()];
    assert_ne!(cache_key(&inputs(&split)), cache_key(&inputs(&split2)));
}

fn no_temp_files(dir: &Path) -> bool {
    std::fs::read_dir(dir).unwrap().flatten().all(|e| !e.file_name().to_string_lossy().ends_with(".tmp"))
}

#[test]
fn entries_round_trip_and_corruption_is_a_miss() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sm_90").join("norm-abc.cubin");
    assert_eq!(read_entry(&path).unwrap(), None, "missing file is a miss");

    write_entry(&path, b"\x7fELF payload").unwrap();
    assert_eq!(read_entry(&path).unwrap().as_deref(), Some(&b"\x7fELF payload"[..]));
    assert!(no_temp_files(path.parent().unwrap()));

    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&path, &bytes).unwrap();
    assert_eq!(read_entry(&path).unwrap(), None, "flipped bit is a miss");

    std::fs::write(&path, &bytes[..10]).unwrap();
    assert_eq!(read_entry(&path).unwrap(), None, "truncated file is a miss");

    std::fs::write(&path, b"not a cache file at all, but long enough to hold a header....").unwrap();
    assert_eq!(read_entry(&path).unwrap(), None, "foreign file is a miss");

    write_entry(&path, b"fresh").unwrap();
    assert_eq!(read_entry(&path).unwrap().as_deref(), Some(&b"fresh"[..]), "rewrite replaces");
}

#[test]
fn get_or_insert_compiles_once_and_never_stores_failures() {
    let dir = tempfile::tempdir().unwrap();
    let cache = ModuleCache::new(dir.path().to_path_buf());
    let target = Target { arch: "sm_90".into(), kind: ImageKind::Cubin };
    let path = cache.entry_path(&target, "norm", "0123");
    assert_eq!(path, dir.path().join("sm_90").join("norm-0123.cubin"));

    let err = cache
        .get_or_insert_with(&path, ImageKind::Cubin, || {
            Err(KernelError::InvalidArgument("compile failed".into()))
        })
        .unwrap_err();
    assert!(matches!(err, KernelError::InvalidArgument(_)));
    assert!(!path.exists(), "a failed compile leaves no file");

    let mut calls = 0;
    let first = cache
        .get_or_insert_with(&path, ImageKind::Cubin, || {
            calls += 1;
            Ok(b"image".to_vec())
        })
        .unwrap();
    assert!(!first.from_cache);
    // A second cache object (as in a second process) reads the file instead of compiling.
    let second = ModuleCache::new(dir.path().to_path_buf())
        .get_or_insert_with(&path, ImageKind::Cubin, || {
            calls += 1;
            Ok(b"other".to_vec())
        })
        .unwrap();
    assert!(second.from_cache);
    assert_eq!(second.bytes, b"image");
    assert_eq!(calls, 1);
}

#[test]
fn concurrent_writers_leave_one_intact_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sm_80").join("norm-race.cubin");
    let payload: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| write_entry(&path, &payload).unwrap());
        }
    });
    assert_eq!(read_entry(&path).unwrap().as_deref(), Some(&payload[..]));
    assert!(no_temp_files(path.parent().unwrap()));
}

#[test]
fn nvrtc_compiles_every_family_for_common_architectures() {
    let (lib, version) = match nvrtc_info() {
        Ok(info) => info,
        Err(e) => {
            hyperllama_kernels::check::report_skip(&format!("NVRTC not available ({e})"));
            return;
        }
    };
    eprintln!("NVRTC {}.{} from {lib}", version.0, version.1);
    let dir = tempfile::tempdir().unwrap();
    let cache = ModuleCache::new(dir.path().to_path_buf());
    for &family in KernelFamily::ALL {
        for capability in [(8, 0), (8, 9), (9, 0)] {
            let image = cache.image(family, capability).unwrap_or_else(|e| panic!("{e}"));
            assert!(!image.from_cache);
            assert!(image.path.exists());
            if image.kind == ImageKind::Cubin {
                assert_eq!(&image.bytes[..4], b"\x7fELF", "CUBIN is an ELF image");
            }
            let again = cache.image(family, capability).unwrap();
            assert!(again.from_cache);
            assert_eq!(again.bytes, image.bytes);
        }
    }
}

#[test]
fn without_a_driver_entry_points_say_so() {
    if driver_present() {
        hyperllama_kernels::check::report_skip(
            "a CUDA driver is present (this test covers machines without one)",
        );
        return;
    }
    let err = gpus().unwrap_err();
    assert!(matches!(err, KernelError::NoDriver));
    assert_eq!(err.to_string(), "no CUDA driver found");
    let dir = tempfile::tempdir().unwrap();
    let err = Gpu::open(0, ModuleCache::new(dir.path().to_path_buf())).unwrap_err();
    assert!(matches!(err, KernelError::NoDriver));
}
