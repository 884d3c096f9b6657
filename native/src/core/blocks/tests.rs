use super::*;
use crate::core::prefix::extend_keys;
use crate::core::rng::SplitMix64;

fn keys(salt: u64, tokens: &[u32]) -> Vec<BlockKey> {
    let mut k = Vec::new();
    extend_keys(&mut k, salt, tokens, 4);
    k
}

#[test]
fn allocate_release_round_trip() {
    let mut pool = BlockPool::new(4);
    let got = pool.allocate_n(4).unwrap();
    assert_eq!(got, vec![0, 1, 2, 3]);
    assert!(pool.allocate().is_none());
    assert!(pool.allocate_n(1).is_none());
    for b in got {
        pool.release(b);
    }
    assert_eq!(pool.num_available(), 4);
    pool.check_invariants().unwrap();
}

#[test]
fn cached_blocks_survive_release_and_are_evicted_lru() {
    let mut pool = BlockPool::new(3);
    let k = keys(1, &[1, 2, 3, 4, 5, 6, 7, 8]);
    let a = pool.allocate().unwrap();
    let b = pool.allocate().unwrap();
    pool.register(a, &k[0]);
    pool.register(b, &k[1]);
    pool.release(a); // released first: evicted first
    pool.release(b);
    assert_eq!(pool.num_available(), 3);
    assert_eq!(pool.num_cached(), 2);
    pool.check_invariants().unwrap();
    // The plain free block goes before any cached one.
    let c = pool.allocate().unwrap();
    assert!(c != a && c != b);
    assert_eq!(pool.num_cached(), 2);
    let d = pool.allocate().unwrap();
    assert_eq!(d, a);
    assert!(!pool.contains(&k[0]));
    assert!(pool.contains(&k[1]));
    assert_eq!(pool.counters().evictions, 1);
    pool.check_invariants().unwrap();
}

#[test]
fn lookup_takes_back_evictable_and_shares_used() {
    let mut pool = BlockPool::new(2);
    let k = keys(1, &[1, 2, 3, 4]);
    let a = pool.allocate().unwrap();
    pool.register(a, &k[0]);
    assert_eq!(pool.lookup(&k[0]), Some(a));
    assert_eq!(pool.ref_count(a), 2);
    pool.release(a);
    pool.release(a);
    assert_eq!(pool.lookup(&k[0]), Some(a));
    assert_eq!(pool.ref_count(a), 1);
    assert_eq!(pool.num_available(), 1);
    pool.check_invariants().unwrap();
}

#[test]
fn lookup_compares_contents_not_only_hash() {
    let mut pool = BlockPool::new(2);
    let k = keys(1, &[1, 2, 3, 4]);
    let a = pool.allocate().unwrap();
    pool.register(a, &k[0]);
    // A forged key with the same hash but other tokens (a collision) must miss.
    let mut forged = k[0].clone();
    forged.tokens[0] = 99;
    assert_eq!(pool.lookup(&forged), None);
    // Another salt misses.
    assert_eq!(pool.lookup(&keys(2, &[1, 2, 3, 4])[0]), None);
}

#[test]
fn copy_on_write_only_for_shared_blocks() {
    let mut pool = BlockPool::new(3);
    let k = keys(1, &[1, 2, 3, 4]);
    let a = pool.allocate().unwrap();
    pool.register(a, &k[0]);
    pool.share(a);
    let mut t1 = vec![a];
    let mut copies = Vec::new();
    assert!(pool.make_writable(&mut t1, 0, &mut copies));
    assert_ne!(t1[0], a);
    assert_eq!(copies, vec![BlockCopy { src: a, dst: t1[0] }]);
    assert_eq!(pool.ref_count(a), 1);
    assert!(pool.contains(&k[0]), "the shared original stays cached");
    // Now `a` is private: writable in place, and unregistered since it will change.
    let mut t2 = vec![a];
    assert!(pool.make_writable(&mut t2, 0, &mut copies));
    assert_eq!(t2[0], a);
    assert_eq!(copies.len(), 1);
    assert!(!pool.contains(&k[0]));
    pool.check_invariants().unwrap();
}

#[test]
fn copy_on_write_fails_cleanly_when_full() {
    let mut pool = BlockPool::new(1);
    let a = pool.allocate().unwrap();
    pool.share(a);
    let mut t = vec![a];
    let mut copies = Vec::new();
    assert!(!pool.make_writable(&mut t, 0, &mut copies));
    assert_eq!(t, vec![a]);
    assert_eq!(pool.ref_count(a), 2);
    pool.check_invariants().unwrap();
}

#[test]
fn host_pool() {
    let mut host = HostPool::new(3);
    let mut got = host.allocate_n(2).unwrap();
    assert!(host.allocate_n(2).is_none());
    host.release_all(&mut got);
    assert_eq!(host.num_available(), 3);
}

/// Random operations against a shadow model of reference counts: after every operation the
/// pool's invariants hold, every table's blocks have the counts the shadow says, no block is
/// in two places, and cached contents found by lookup are what was registered.
#[test]
fn property_refcounts_cow_eviction() {
    for seed in 0..200u64 {
        let mut rng = SplitMix64::new(seed);
        let n = 1 + rng.below(12);
        let mut pool = BlockPool::new(n);
        let mut tables: Vec<Vec<BlockId>> = Vec::new();
        // What each registered block is supposed to contain.
        let mut contents: HashMap<BlockId, BlockKey> = HashMap::new();
        for _ in 0..300 {
            match rng.below(6) {
                0 => {
                    let want = rng.below(4);
                    let before = pool.num_available();
                    match pool.allocate_n(want) {
                        Some(t) => {
                            for b in &t {
                                contents.remove(b);
                            }
                            tables.push(t);
                        }
                        None => assert!(before < want),
                    }
                }
                1 if !tables.is_empty() => {
                    let i = rng.below(tables.len());
                    let mut t = tables.swap_remove(i);
                    pool.release_table(&mut t);
                }
                2 if !tables.is_empty() => {
                    // Fork: another table sharing all blocks.
                    let t = tables[rng.below(tables.len())].clone();
                    for &b in &t {
                        pool.share(b);
                    }
                    tables.push(t);
                }
                3 if !tables.is_empty() => {
                    let i = rng.below(tables.len());
                    if !tables[i].is_empty() {
                        let j = rng.below(tables[i].len());
                        let mut copies = Vec::new();
                        let old = tables[i][j];
                        let shared = pool.ref_count(old) > 1;
                        if pool.make_writable(&mut tables[i], j, &mut copies) {
                            assert_eq!(copies.len(), usize::from(shared));
                            let now = tables[i][j];
                            assert_eq!(pool.ref_count(now), 1);
                            contents.remove(&now);
                            if let Some(c) = copies.first() {
                                assert_eq!((c.src, c.dst), (old, now));
                            }
                        }
                    }
                }
                4 if !tables.is_empty() => {
                    let i = rng.below(tables.len());
                    if let Some(&b) = tables[i].last() {
                        let key = keys(rng.below(2) as u64, &[rng.below(3) as u32, 0, 0, 0]).remove(0);
                        let was = pool.contains(&key);
                        pool.register(b, &key);
                        if !was && pool.contains(&key) {
                            contents.insert(b, key);
                        }
                    }
                }
                _ => {
                    let key = keys(rng.below(2) as u64, &[rng.below(3) as u32, 0, 0, 0]).remove(0);
                    if let Some(b) = pool.lookup(&key) {
                        assert_eq!(contents.get(&b), Some(&key), "seed {seed}: wrong cache hit");
                        tables.push(vec![b]);
                    }
                }
            }
            pool.check_invariants().unwrap_or_else(|e| panic!("seed {seed}: {e}"));
            let mut refs = vec![0u32; n];
            for t in &tables {
                for &b in t {
                    refs[b as usize] += 1;
                }
            }
            for (b, &r) in refs.iter().enumerate() {
                assert_eq!(pool.ref_count(b as BlockId), r, "seed {seed}: block {b}");
            }
            let used = refs.iter().filter(|&&r| r > 0).count();
            assert_eq!(pool.num_available(), n - used, "seed {seed}");
        }
    }
}
