//! Prefix-cache keys: a chained hash per *full* KV block, as vLLM's automatic prefix caching
//! defines it. The hash of block `i` covers the salt, the hash of block `i - 1` and the block's own
//! tokens, so equal hashes mean equal prefixes (up to a 64-bit collision, which the block pool
//! rules out by also comparing the tokens and the parent hash, see [`BlockKey`]).
//!
//! The salt partitions the cache: requests of one user never match another user's blocks unless
//! both carry the same (admin-shared) salt.

use std::hash::{Hash, Hasher};

use super::executor::TokenId;

/// The chained hash of a full block and everything before it, under one salt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PrefixHash(pub u64);

/// Everything that identifies the contents of one full block: its chained hash, the parent's
/// hash (`None` for the first block), the salt and the tokens. Compared in full on lookup, so a
/// hash collision can only cause a miss, never a wrong hit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockKey {
    /// The chained hash.
    pub hash: PrefixHash,
    /// Hash of the previous block of the sequence.
    pub parent: Option<PrefixHash>,
    /// The cache partition.
    pub salt: u64,
    /// The block's tokens (`block_size` of them).
    pub tokens: Vec<TokenId>,
}

/// The hash of a block given its parent, salt and tokens. Deterministic across runs (SipHash
/// with fixed keys), so tests and logs are reproducible.
pub fn block_hash(parent: Option<PrefixHash>, salt: u64, tokens: &[TokenId]) -> PrefixHash {
    #[allow(deprecated)] // SipHasher's fixed keys are the point here: stable hashes.
    let mut h = std::hash::SipHasher::new_with_keys(0x6879_7065_726c_6c61, 0x6d61_5f70_7265_6678);
    parent.map(|p| p.0).hash(&mut h);
    salt.hash(&mut h);
    tokens.hash(&mut h);
    PrefixHash(h.finish())
}

/// Keys of the full blocks of `tokens`, extending `keys` (which already holds the first
/// `keys.len()` blocks' keys). Amortized O(new tokens).
pub fn extend_keys(keys: &mut Vec<BlockKey>, salt: u64, tokens: &[TokenId], block_size: usize) {
    let full = tokens.len() / block_size;
    while keys.len() < full {
        let i = keys.len();
        let chunk = &tokens[i * block_size..(i + 1) * block_size];
        let parent = keys.last().map(|k| k.hash);
        keys.push(BlockKey { hash: block_hash(parent, salt, chunk), parent, salt, tokens: chunk.to_vec() });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chained_hashes_depend_on_everything_before() {
        let mut a = Vec::new();
        extend_keys(&mut a, 1, &[1, 2, 3, 4, 5, 6, 7], 2);
        assert_eq!(a.len(), 3);
        let mut b = Vec::new();
        extend_keys(&mut b, 1, &[9, 2, 3, 4, 5, 6], 2);
        // Same tokens in block 1 and 2, different first block: every hash differs.
        for i in 0..3 {
            assert_ne!(a[i].hash, b[i].hash);
        }
        assert_eq!(a[1].tokens, b[1].tokens);
    }

    #[test]
    fn salt_partitions() {
        let mut a = Vec::new();
        let mut b = Vec::new();
        extend_keys(&mut a, 1, &[1, 2, 3, 4], 2);
        extend_keys(&mut b, 2, &[1, 2, 3, 4], 2);
        assert_ne!(a[0].hash, b[0].hash);
        assert_ne!(a[1].hash, b[1].hash);
    }

    #[test]
    fn incremental_equals_batch() {
        let tokens: Vec<u32> = (0..50).collect();
        let mut whole = Vec::new();
        extend_keys(&mut whole, 7, &tokens, 4);
        let mut step = Vec::new();
        for n in 0..=tokens.len() {
            extend_keys(&mut step, 7, &tokens[..n], 4);
        }
        assert_eq!(whole, step);
        assert_eq!(block_hash(None, 7, &[0, 1, 2, 3]), whole[0].hash);
    }
}
