//! The paged KV block pool (vLLM's `BlockPool`, PagedAttention paper §4.2): fixed-size device
//! blocks with reference counts, a free list, and the prefix cache over them.
//!
//! A block is in exactly one of three states:
//! - **used**: `ref_count > 0`, in some sequence's block table (several when shared);
//! - **free**: `ref_count == 0`, holds nothing worth keeping, on the `free` stack;
//! - **evictable**: `ref_count == 0` but registered in the prefix cache under a [`BlockKey`];
//!   kept in LRU order (released longest ago first) and reused only when no free block is left.
//!
//! A cache hit on an evictable block takes it back (`ref_count` 0 → 1); a hit on a used block
//! shares it (`ref_count + 1`). Writing into a shared block goes through copy-on-write
//! ([`BlockPool::make_writable`]). Costs: allocate, release, share O(log n) (LRU is a B-tree keyed
//! by release stamp); a cache lookup is one hash-map probe plus a token comparison.
//!
//! Host blocks (swap space) are a plain free list ([`HostPool`]); they are never shared.

use std::collections::{BTreeMap, HashMap};

use super::executor::{BlockCopy, BlockId};
use super::prefix::{BlockKey, PrefixHash};

#[derive(Debug, Clone, Default)]
struct BlockMeta {
    ref_count: u32,
    /// The prefix-cache entry this block holds, if registered.
    key: Option<BlockKey>,
    /// Release stamp while evictable.
    lru_stamp: Option<u64>,
}

/// Counters of the prefix cache.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheCounters {
    /// Blocks found by lookups.
    pub hits: u64,
    /// Lookups that found nothing.
    pub misses: u64,
    /// Cached blocks dropped to make room.
    pub evictions: u64,
}

/// Device KV blocks: reference counts, free list, LRU of evictable cached blocks.
#[derive(Debug)]
pub struct BlockPool {
    blocks: Vec<BlockMeta>,
    free: Vec<BlockId>,
    evictable: BTreeMap<u64, BlockId>,
    cached: HashMap<PrefixHash, BlockId>,
    next_stamp: u64,
    counters: CacheCounters,
}

impl BlockPool {
    /// A pool of `num_blocks` free blocks.
    pub fn new(num_blocks: usize) -> Self {
        let ids = u32::try_from(num_blocks).expect("block count fits u32");
        Self {
            blocks: vec![BlockMeta::default(); num_blocks],
            // Popped from the end: hand out low ids first.
            free: (0..ids).rev().collect(),
            evictable: BTreeMap::new(),
            cached: HashMap::new(),
            next_stamp: 0,
            counters: CacheCounters::default(),
        }
    }

    /// Total blocks.
    pub fn num_blocks(&self) -> usize {
        self.blocks.len()
    }

    /// Blocks that can be allocated now (free + evictable).
    pub fn num_available(&self) -> usize {
        self.free.len() + self.evictable.len()
    }

    /// Blocks registered in the prefix cache (used or evictable).
    pub fn num_cached(&self) -> usize {
        self.cached.len()
    }

    /// Cache counters so far.
    pub fn counters(&self) -> CacheCounters {
        self.counters
    }

    /// The reference count of a block.
    pub fn ref_count(&self, block: BlockId) -> u32 {
        self.blocks[block as usize].ref_count
    }

    /// Takes one block (ref 1): a free one, else the least recently released cached one.
    pub fn allocate(&mut self) -> Option<BlockId> {
        let block = match self.free.pop() {
            Some(b) => b,
            None => {
                let (_, b) = self.evictable.pop_first()?;
                let meta = &mut self.blocks[b as usize];
                meta.lru_stamp = None;
                if let Some(key) = meta.key.take() {
                    self.cached.remove(&key.hash);
                }
                self.counters.evictions += 1;
                b
            }
        };
        self.blocks[block as usize].ref_count = 1;
        Some(block)
    }

    /// Takes `n` blocks, or none at all.
    pub fn allocate_n(&mut self, n: usize) -> Option<Vec<BlockId>> {
        if self.num_available() < n {
            return None;
        }
        Some((0..n).map(|_| self.allocate().expect("counted")).collect())
    }

    /// Adds a reference to a used block (sharing it with another table).
    pub fn share(&mut self, block: BlockId) {
        let meta = &mut self.blocks[block as usize];
        assert!(meta.ref_count > 0, "sharing unused block {block}");
        meta.ref_count += 1;
    }

    /// Drops one reference; at zero the block becomes free, or evictable if it is cached.
    pub fn release(&mut self, block: BlockId) {
        let meta = &mut self.blocks[block as usize];
        assert!(meta.ref_count > 0, "releasing unused block {block}");
        meta.ref_count -= 1;
        if meta.ref_count == 0 {
            if meta.key.is_some() {
                let stamp = self.next_stamp;
                self.next_stamp += 1;
                meta.lru_stamp = Some(stamp);
                self.evictable.insert(stamp, block);
            } else {
                self.free.push(block);
            }
        }
    }

    /// Releases every block of a table, last block first (so a sequence's tail is evicted before
    /// its head, which more requests share).
    pub fn release_table(&mut self, table: &mut Vec<BlockId>) {
        while let Some(b) = table.pop() {
            self.release(b);
        }
    }

    /// Finds the block holding exactly `key` and takes a reference to it.
    pub fn lookup(&mut self, key: &BlockKey) -> Option<BlockId> {
        let found = self
            .cached
            .get(&key.hash)
            .copied()
            .filter(|&b| self.blocks[b as usize].key.as_ref() == Some(key));
        let Some(block) = found else {
            self.counters.misses += 1;
            return None;
        };
        self.counters.hits += 1;
        let meta = &mut self.blocks[block as usize];
        if let Some(stamp) = meta.lru_stamp.take() {
            self.evictable.remove(&stamp);
        }
        meta.ref_count += 1;
        Some(block)
    }

    /// Whether a lookup of `key` would hit, without taking anything.
    pub fn contains(&self, key: &BlockKey) -> bool {
        self.cached.get(&key.hash).is_some_and(|&b| self.blocks[b as usize].key.as_ref() == Some(key))
    }

    /// Registers a used, fully written block under `key`. Does nothing when the block is already
    /// registered or another block holds that key (two sequences computed the same prefix).
    pub fn register(&mut self, block: BlockId, key: &BlockKey) {
        let meta = &self.blocks[block as usize];
        if meta.ref_count == 0 || meta.key.is_some() || self.cached.contains_key(&key.hash) {
            return;
        }
        self.cached.insert(key.hash, block);
        self.blocks[block as usize].key = Some(key.clone());
    }

    /// Makes `table[index]` private before a write: a shared block is copied into a new one
    /// (the copy is pushed to `copies` for the executor) and the table points at the copy.
    /// A private block that is registered in the cache is unregistered (its contents are about
    /// to change). Returns false when no block is available for the copy.
    pub fn make_writable(
        &mut self,
        table: &mut [BlockId],
        index: usize,
        copies: &mut Vec<BlockCopy>,
    ) -> bool {
        let block = table[index];
        if self.blocks[block as usize].ref_count == 1 {
            if let Some(key) = self.blocks[block as usize].key.take() {
                self.cached.remove(&key.hash);
            }
            return true;
        }
        let Some(copy) = self.allocate() else {
            return false;
        };
        copies.push(BlockCopy { src: block, dst: copy });
        self.release(block);
        table[index] = copy;
        true
    }

    /// Checks every invariant of the pool (tests and debug builds).
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut seen = vec![0u8; self.blocks.len()];
        for &b in &self.free {
            seen[b as usize] += 1;
            let m = &self.blocks[b as usize];
            if m.ref_count != 0 || m.key.is_some() || m.lru_stamp.is_some() {
                return Err(format!("free block {b} has state {m:?}"));
            }
        }
        for (&stamp, &b) in &self.evictable {
            seen[b as usize] += 1;
            let m = &self.blocks[b as usize];
            if m.ref_count != 0 || m.key.is_none() || m.lru_stamp != Some(stamp) {
                return Err(format!("evictable block {b} has state {m:?}"));
            }
        }
        for (b, m) in self.blocks.iter().enumerate() {
            let listed = seen[b];
            if (m.ref_count == 0) != (listed == 1) || listed > 1 {
                return Err(format!("block {b} (ref {}) listed {listed} times", m.ref_count));
            }
            if let Some(key) = &m.key
                && self.cached.get(&key.hash) != Some(&(b as BlockId))
            {
                return Err(format!("block {b} holds a key the cache does not map to it"));
            }
        }
        for (hash, &b) in &self.cached {
            if self.blocks[b as usize].key.as_ref().map(|k| k.hash) != Some(*hash) {
                return Err(format!("cache maps {hash:?} to block {b} which holds another key"));
            }
        }
        Ok(())
    }
}

/// Host swap blocks: a free list; never shared, never cached.
#[derive(Debug)]
pub struct HostPool {
    free: Vec<BlockId>,
    total: usize,
}

impl HostPool {
    /// `num_blocks` free host blocks.
    pub fn new(num_blocks: usize) -> Self {
        let ids = u32::try_from(num_blocks).expect("block count fits u32");
        Self { free: (0..ids).rev().collect(), total: num_blocks }
    }

    /// Free host blocks.
    pub fn num_available(&self) -> usize {
        self.free.len()
    }

    /// Total host blocks.
    pub fn num_blocks(&self) -> usize {
        self.total
    }

    /// Takes `n` blocks, or none.
    pub fn allocate_n(&mut self, n: usize) -> Option<Vec<BlockId>> {
        if self.free.len() < n {
            return None;
        }
        Some(self.free.split_off(self.free.len() - n))
    }

    /// Returns blocks.
    pub fn release_all(&mut self, blocks: &mut Vec<BlockId>) {
        self.free.append(blocks);
    }
}

#[cfg(test)]
mod tests;
