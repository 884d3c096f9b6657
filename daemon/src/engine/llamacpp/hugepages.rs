//! Huge pages for the llama.cpp context's memory (KV cache and compute buffers).
//!
//! What llama.cpp lets us control: nothing directly. ggml allocates CPU buffers with
//! `posix_memalign` (`ggml_aligned_malloc`), which glibc serves from fresh `mmap`s for large
//! sizes; there is no `GGML_*` switch, no hook for the allocation, and the KV buffer's address
//! is not exposed. So there are two levers, used together:
//!
//! 1. **At allocation (runner environment)**: glibc's `glibc.malloc.hugetlb` tunable, set in the
//!    runner's environment before it starts ([`runner_env`]). `2` makes malloc's large `mmap`s
//!    use `MAP_HUGETLB` from the reserved 2 MiB pool (falling back to normal pages when the
//!    pool is empty); `1` makes them `madvise(MADV_HUGEPAGE)` (transparent huge pages).
//!    This covers the KV cache, compute buffers and any other large allocation.
//! 2. **After allocation (in process)**: [`advise_new`] finds the anonymous mappings that
//!    appeared while the context was created (diffing `/proc/self/maps`), marks them
//!    `MADV_HUGEPAGE` and asks the kernel to collapse them right away (`MADV_COLLAPSE`, Linux
//!    6.1+), so THP backs them even when the runner was started without the tunable.
//!
//! Weights are file-backed (`mmap` of the GGUF): they live in the page cache and are not
//! huge-page backed unless the file system provides large folios.
//!
//! [`usage_of`] measures what is really backed (`AnonHugePages`, `Private_Hugetlb` in
//! `/proc/self/smaps`), which is what `hyperctl ps` reports.

use std::collections::HashSet;

const HUGE_PAGE: usize = 2 << 20;
/// `MADV_COLLAPSE` (Linux 6.1).
const MADV_COLLAPSE: libc::c_int = 25;

/// An address range `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Mapping {
    /// First byte.
    pub start: usize,
    /// One past the last byte.
    pub end: usize,
}

impl Mapping {
    /// Size in bytes.
    pub fn len(&self) -> usize {
        self.end - self.start
    }

    /// Whether the range is empty.
    pub fn is_empty(&self) -> bool {
        self.end <= self.start
    }
}

/// Memory of a set of mappings, bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HugePageUsage {
    /// Resident.
    pub rss: u64,
    /// Backed by transparent huge pages.
    pub anon_huge: u64,
    /// Backed by reserved (hugetlbfs) huge pages.
    pub hugetlb: u64,
}

/// Private writable anonymous mappings of this process (heap included).
pub fn anonymous_mappings() -> Vec<Mapping> {
    let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else { return Vec::new() };
    maps.lines().filter_map(parse_anonymous).collect()
}

fn parse_anonymous(line: &str) -> Option<Mapping> {
    let mut fields = line.split_whitespace();
    let range = fields.next()?;
    let perms = fields.next()?;
    let _offset = fields.next()?;
    let _dev = fields.next()?;
    let inode = fields.next()?;
    let path = fields.next();
    // MAP_HUGETLB memory shows as "/anon_hugepage (deleted)" with an inode of the internal mount.
    let anonymous = (inode == "0" && matches!(path, None | Some("[heap]"))) || path == Some("/anon_hugepage");
    if !anonymous || !perms.starts_with("rw") || !perms.ends_with('p') {
        return None;
    }
    let (start, end) = range.split_once('-')?;
    Some(Mapping { start: usize::from_str_radix(start, 16).ok()?, end: usize::from_str_radix(end, 16).ok()? })
}

/// Mappings in `after` that were not in `before` and hold at least one aligned huge page.
pub fn new_mappings(before: &[Mapping], after: &[Mapping]) -> Vec<Mapping> {
    let old: HashSet<&Mapping> = before.iter().collect();
    after.iter().filter(|m| !old.contains(m) && aligned_len(m) >= HUGE_PAGE).copied().collect()
}

/// Bytes of `m` that lie in whole, aligned 2 MiB pages.
fn aligned_len(m: &Mapping) -> usize {
    let start = m.start.div_ceil(HUGE_PAGE) * HUGE_PAGE;
    let end = m.end / HUGE_PAGE * HUGE_PAGE;
    end.saturating_sub(start)
}

/// Marks the mappings for transparent huge pages (later faults get huge pages directly) and,
/// with `collapse`, copies what is already resident into huge pages now (`MADV_COLLAPSE`, one
/// 2 MiB extent at a time: the kernel refuses a whole range when part of it is not resident,
/// and untouched compute buffers are). Returns the bytes collapsed. Failures (old kernels, THP
/// disabled, no free huge pages) leave memory as it was.
pub fn advise(mappings: &[Mapping], collapse: bool) -> usize {
    let mut collapsed = 0;
    for m in mappings {
        let start = m.start.div_ceil(HUGE_PAGE) * HUGE_PAGE;
        let len = aligned_len(m);
        if len == 0 {
            continue;
        }
        // SAFETY: the range lies inside an anonymous private mapping of this process read from
        // /proc/self/maps; MADV_HUGEPAGE only changes how the kernel backs the pages (contents
        // are preserved), and if the mapping vanished meanwhile the call fails with ENOMEM
        // without touching memory.
        let advised = unsafe { libc::madvise(start as *mut libc::c_void, len, libc::MADV_HUGEPAGE) } == 0;
        if !advised || !collapse {
            continue;
        }
        for chunk in (start..start + len).step_by(HUGE_PAGE) {
            // SAFETY: as above, one aligned 2 MiB extent of that range; the kernel copies the
            // resident pages into a huge page under its own locks, preserving contents, and
            // fails harmlessly (EINVAL, EAGAIN, ENOMEM) when it cannot.
            if unsafe { libc::madvise(chunk as *mut libc::c_void, HUGE_PAGE, MADV_COLLAPSE) } == 0 {
                collapsed += HUGE_PAGE;
            }
        }
    }
    collapsed
}

/// Snapshot, create, diff, advise: runs `create` and applies huge pages to what it mapped.
pub fn advise_new<T>(create: impl FnOnce() -> T, collapse: bool) -> (T, Vec<Mapping>) {
    let before = anonymous_mappings();
    let value = create();
    let new = new_mappings(&before, &anonymous_mappings());
    let started = std::time::Instant::now();
    let collapsed = advise(&new, collapse);
    tracing::debug!(mappings = new.len(), collapsed_mib = collapsed >> 20, took = ?started.elapsed(), "huge pages advised");
    (value, new)
}

/// What backs these mappings now (from `/proc/self/smaps`).
pub fn usage_of(mappings: &[Mapping]) -> HugePageUsage {
    let Ok(smaps) = std::fs::read_to_string("/proc/self/smaps") else { return HugePageUsage::default() };
    let mut usage = HugePageUsage::default();
    let mut current: Option<Mapping> = None;
    for line in smaps.lines() {
        if let Some(range) = line.split_whitespace().next().filter(|f| f.contains('-') && !f.ends_with(':')) {
            current = range.split_once('-').and_then(|(s, e)| {
                Some(Mapping {
                    start: usize::from_str_radix(s, 16).ok()?,
                    end: usize::from_str_radix(e, 16).ok()?,
                })
            });
            continue;
        }
        let Some(cur) = current else { continue };
        if !mappings.iter().any(|m| m.start < cur.end && cur.start < m.end) {
            continue;
        }
        add_field(&mut usage, line);
    }
    usage
}

/// Whole-process totals (from `/proc/<pid>/smaps_rollup`; `pid` `None` is this process).
pub fn process_usage(pid: Option<u32>) -> HugePageUsage {
    let path =
        pid.map_or_else(|| "/proc/self/smaps_rollup".to_owned(), |p| format!("/proc/{p}/smaps_rollup"));
    let mut usage = HugePageUsage::default();
    if let Ok(text) = std::fs::read_to_string(path) {
        for line in text.lines() {
            add_field(&mut usage, line);
        }
    }
    usage
}

fn add_field(usage: &mut HugePageUsage, line: &str) {
    let Some((key, value)) = line.split_once(':') else { return };
    let kb: u64 = value.trim().trim_end_matches("kB").trim().parse().unwrap_or(0);
    match key {
        "Rss" => usage.rss += kb * 1024,
        "AnonHugePages" => usage.anon_huge += kb * 1024,
        "Private_Hugetlb" | "Shared_Hugetlb" => usage.hugetlb += kb * 1024,
        _ => {}
    }
}

/// Free pages in the host's reserved 2 MiB huge page pool.
pub fn hugetlb_pool_free_pages() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines().find_map(|l| l.strip_prefix("HugePages_Free:")).and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// The environment variable a runner should be started with so that its large allocations
/// (KV cache included) get huge pages at allocation: reserved 2 MiB pages when the host has a
/// free pool, transparent huge pages otherwise.
pub fn runner_env() -> (&'static str, String) {
    let value =
        if hugetlb_pool_free_pages() > 0 { "glibc.malloc.hugetlb=2" } else { "glibc.malloc.hugetlb=1" };
    ("GLIBC_TUNABLES", value.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_anonymous_lines() {
        assert_eq!(
            parse_anonymous("7f0000000000-7f0000400000 rw-p 00000000 00:00 0 "),
            Some(Mapping { start: 0x7f00_0000_0000, end: 0x7f00_0040_0000 })
        );
        assert!(parse_anonymous("55d000000000-55d000021000 rw-p 00000000 00:00 0   [heap]").is_some());
        assert!(
            parse_anonymous("7f4a00000000-7f4a1e000000 rw-p 00000000 00:10 1234  /anon_hugepage (deleted)")
                .is_some()
        );
        assert!(
            parse_anonymous("7f0000000000-7f0000400000 r--p 00000000 08:01 1234 /usr/lib/x.so").is_none()
        );
        assert!(parse_anonymous("7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0   [stack]").is_none());
    }

    #[test]
    fn new_large_mappings_are_found_and_collapsed() {
        // 64 MiB of touched memory, like a KV buffer: above glibc's largest mmap threshold
        // (32 MiB), so it is a fresh mapping whatever the test threads freed before.
        // (black_box: otherwise the optimizer may elide the allocation altogether.)
        let (buf, new) = advise_new(|| std::hint::black_box(vec![1u8; 64 << 20]), true);
        assert!(!new.is_empty(), "the allocation was not seen as a new mapping");
        let usage = usage_of(&new);
        assert!(usage.rss >= 8 << 20, "{usage:?}");
        let thp = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap_or_default();
        if !thp.contains("[never]") {
            assert!(usage.anon_huge > 0, "no huge pages after MADV_COLLAPSE: {usage:?}");
        }
        assert_eq!(buf[12345], 1);
        assert!(process_usage(None).rss > 0);
    }
}
