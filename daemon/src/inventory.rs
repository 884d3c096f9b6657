//! What this machine offers the service: GPUs (through the kernels crate, which probes for a CUDA
//! driver before touching it), the huge-page pool, and which engines can run here.

use std::path::Path;

use hyperllama_proto::v1 as pb;

/// GPUs found, or why none could be probed.
pub fn gpus() -> (Vec<pb::GpuInfo>, String) {
    match hyperllama_kernels::gpus() {
        Ok(gpus) => (
            gpus.into_iter()
                .map(|g| pb::GpuInfo {
                    index: g.index,
                    name: g.name,
                    total_bytes: g.total_bytes,
                    free_bytes: g.free_bytes,
                    compute_capability: format!("{}.{}", g.compute_capability.0, g.compute_capability.1),
                    pci_bus_id: g.pci_bus_id,
                    numa_node: g.numa_node.unwrap_or(-1),
                })
                .collect(),
            String::new(),
        ),
        Err(error) => (Vec::new(), error.to_string()),
    }
}

/// The CPUs local to the NUMA node of GPU `index` (sysfs `local_cpulist`), for pinning the
/// runner that drives it.
pub fn gpu_local_cpus(index: u32) -> Option<String> {
    let gpus = hyperllama_kernels::gpus().ok()?;
    let bus = &gpus.iter().find(|g| g.index == index)?.pci_bus_id;
    let address = hyperllama_kernels::sysfs_pci_address(bus)?;
    let list = std::fs::read_to_string(format!("/sys/bus/pci/devices/{address}/local_cpulist")).ok()?;
    Some(list.trim().to_string()).filter(|l| !l.is_empty())
}

/// The default huge-page pool and the transparent huge page mode.
pub fn huge_pages() -> pb::HugePages {
    huge_pages_from(Path::new("/proc/meminfo"), Path::new("/sys/kernel/mm/transparent_hugepage/enabled"))
}

fn huge_pages_from(meminfo: &Path, thp: &Path) -> pb::HugePages {
    let text = std::fs::read_to_string(meminfo).unwrap_or_default();
    let field = |name: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    let transparent_mode = std::fs::read_to_string(thp)
        .ok()
        .and_then(|t| {
            let start = t.find('[')?;
            let end = t[start..].find(']')?;
            Some(t[start + 1..start + end].to_string())
        })
        .unwrap_or_default();
    pb::HugePages {
        page_size_bytes: field("Hugepagesize") * 1024,
        total_pages: field("HugePages_Total"),
        free_pages: field("HugePages_Free"),
        reserved_pages: field("HugePages_Rsvd"),
        transparent_mode,
    }
}

/// The engines and whether each can serve on this machine.
pub fn engines(
    gpu_probe_error: &str,
    gpu_count: usize,
    served: &crate::engine::served::EnginesConfig,
) -> Vec<pb::EngineInfo> {
    use crate::engine::served::ServedKind;
    let supervised = |kind: ServedKind| {
        let venv = &served.install(kind).virtualenv;
        let venv = Some(std::path::Path::new(venv)).filter(|p| !p.as_os_str().is_empty());
        let (available, detail) = match kind.locate(venv) {
            Ok(program) => (
                true,
                format!("supervised server ({}); serves Hugging Face folder models", program.display()),
            ),
            // The reason alone: "cannot load model: ..." would blame a model nobody asked for.
            Err(crate::engine::EngineError::Load(reason)) => (false, reason),
            Err(error) => (false, error.to_string()),
        };
        pb::EngineInfo { name: kind.name().into(), available, detail }
    };
    vec![
        pb::EngineInfo {
            name: "llama.cpp".into(),
            available: true,
            detail: "CPU, built in (llama-cpp-2)".into(),
        },
        pb::EngineInfo {
            name: "native".into(),
            available: gpu_probe_error.is_empty() && gpu_count > 0,
            detail: if !gpu_probe_error.is_empty() {
                gpu_probe_error.to_string()
            } else if gpu_count == 0 {
                "no GPU found".into()
            } else {
                format!("{gpu_count} GPU(s); CUDA kernels compiled by NVRTC at load (Llama/Mistral GGUF)")
            },
        },
        supervised(ServedKind::Vllm),
        supervised(ServedKind::Max),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_meminfo_and_thp_mode() {
        let dir = tempfile::tempdir().unwrap();
        let meminfo = dir.path().join("meminfo");
        std::fs::write(
            &meminfo,
            "MemTotal: 100 kB\nHugePages_Total:      16\nHugePages_Free:       12\n\
             HugePages_Rsvd:        2\nHugepagesize:       2048 kB\n",
        )
        .unwrap();
        let thp = dir.path().join("enabled");
        std::fs::write(&thp, "always [madvise] never\n").unwrap();
        let pages = huge_pages_from(&meminfo, &thp);
        assert_eq!(pages.page_size_bytes, 2 * 1024 * 1024);
        assert_eq!((pages.total_pages, pages.free_pages, pages.reserved_pages), (16, 12, 2));
        assert_eq!(pages.transparent_mode, "madvise");
    }

    #[test]
    fn engines_say_why_they_are_unavailable() {
        let mut served = crate::engine::served::EnginesConfig::default();
        served.max.virtualenv = "/nonexistent".into();
        let engines = engines("no CUDA driver found", 0, &served);
        let max = engines.iter().find(|e| e.name == "max").unwrap();
        assert!(!max.available && max.detail.contains("max[serve]"), "{}", max.detail);
        assert!(max.detail.starts_with("the max engine is not installed"), "{}", max.detail);
        let native = engines.iter().find(|e| e.name == "native").unwrap();
        assert!(!native.available);
        assert_eq!(native.detail, "no CUDA driver found");
        let no_gpu = super::engines("", 0, &served);
        let native = no_gpu.iter().find(|e| e.name == "native").unwrap();
        assert!(!native.available && native.detail.contains("no GPU"));
        let two_gpus = super::engines("", 2, &served);
        assert!(two_gpus.iter().any(|e| e.name == "native" && e.available));
        assert!(engines.iter().any(|e| e.name == "llama.cpp" && e.available));
    }
}
