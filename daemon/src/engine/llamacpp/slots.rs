//! Where a new request goes: the slot (llama.cpp sequence id / KV stream) whose resident
//! tokens give the longest reusable prompt prefix under the same cache salt.
//!
//! Each slot remembers the tokens whose KV it holds (positions `0..len`) and the salt they
//! were computed for. A request may reuse up to `prompt.len() - 1` of them (one token must be
//! decoded to get logits). A different salt never matches, so one user's prompt never reveals
//! through timing that another user sent it (vLLM CVE-2025-46570).
//!
//! Placement, in order:
//! 1. the idle slot with the longest match, used in place (its tail is trimmed);
//! 2. if a busy slot holds a longer match (at least `min_copy` tokens), an idle slot receives a
//!    copy of its KV (`llama_memory_seq_cp`) and is trimmed;
//! 3. otherwise an idle slot with nothing cached, lowest id first (keeps active sequences on
//!    consecutive ids, which llama.cpp batches into one micro-batch), else the least recently
//!    used one.
//!
//! Cost: O(slots × prompt) token comparisons per request.

/// What placement needs to know about a slot.
#[derive(Debug, Clone, Copy)]
pub(super) struct SlotInfo<'a, T> {
    /// Tokens whose KV is resident, from position 0.
    pub cached: &'a [T],
    /// Salt of the request that computed them.
    pub salt: Option<u64>,
    /// Whether a sequence is running in it.
    pub busy: bool,
    /// Step counter when it was last released (LRU).
    pub last_used: u64,
}

/// Where a request goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Placement {
    /// The slot to run in.
    pub slot: usize,
    /// Prompt tokens whose KV is reused.
    pub reuse: usize,
    /// Copy the KV of this slot into `slot` first.
    pub copy_from: Option<usize>,
}

/// Length of the common prefix.
pub(super) fn common_prefix<T: PartialEq>(a: &[T], b: &[T]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// Picks a slot for `prompt` under `salt`, or `None` when every slot is busy.
pub(super) fn place<T: PartialEq>(
    slots: &[SlotInfo<'_, T>],
    salt: u64,
    prompt: &[T],
    min_copy: usize,
) -> Option<Placement> {
    let max_reuse = prompt.len().saturating_sub(1);
    let reusable = |s: &SlotInfo<'_, T>| {
        if s.salt == Some(salt) { common_prefix(s.cached, prompt).min(max_reuse) } else { 0 }
    };
    // Longest match first, then the lowest id.
    let best_idle = slots
        .iter()
        .enumerate()
        .filter(|(_, s)| !s.busy)
        .map(|(i, s)| (reusable(s), i))
        .max_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)))?;
    let best_busy = slots
        .iter()
        .enumerate()
        .filter(|(_, s)| s.busy)
        .map(|(i, s)| (reusable(s), i))
        .max_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));

    if let Some((busy_reuse, source)) = best_busy
        && busy_reuse > best_idle.0
        && busy_reuse >= min_copy
    {
        let target = free_slot(slots);
        return Some(Placement { slot: target, reuse: busy_reuse, copy_from: Some(source) });
    }
    if best_idle.0 > 0 {
        return Some(Placement { slot: best_idle.1, reuse: best_idle.0, copy_from: None });
    }
    Some(Placement { slot: free_slot(slots), reuse: 0, copy_from: None })
}

/// An idle slot to overwrite: one with nothing cached (lowest id), else the least recently
/// used. Callers make sure one is idle.
fn free_slot<T>(slots: &[SlotInfo<'_, T>]) -> usize {
    let idle = || slots.iter().enumerate().filter(|(_, s)| !s.busy);
    if let Some((i, _)) = idle().find(|(_, s)| s.cached.is_empty()) {
        return i;
    }
    idle().min_by_key(|(i, s)| (s.last_used, *i)).map_or(0, |(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(cached: &[u32], salt: Option<u64>, busy: bool, last_used: u64) -> SlotInfo<'_, u32> {
        SlotInfo { cached, salt, busy, last_used }
    }

    #[test]
    fn reuses_the_idle_slot_with_the_longest_match() {
        let a = [1, 2, 3, 9];
        let b = [1, 2, 3, 4, 5];
        let slots = [slot(&a, Some(7), false, 1), slot(&b, Some(7), false, 2), slot(&[], None, false, 0)];
        let p = place(&slots, 7, &[1, 2, 3, 4, 5, 6], 8).unwrap();
        assert_eq!(p, Placement { slot: 1, reuse: 5, copy_from: None });
    }

    #[test]
    fn identical_prompt_reuses_all_but_the_last_token() {
        let a = [1, 2, 3, 4, 10, 11];
        let slots = [slot(&a, Some(7), false, 1)];
        let p = place(&slots, 7, &[1, 2, 3, 4], 8).unwrap();
        assert_eq!(p.reuse, 3);
    }

    #[test]
    fn another_salt_never_matches() {
        let a = [1, 2, 3, 4];
        let slots = [slot(&a, Some(7), false, 1), slot(&[], None, false, 0)];
        let p = place(&slots, 8, &[1, 2, 3, 4, 5], 1).unwrap();
        assert_eq!(p, Placement { slot: 1, reuse: 0, copy_from: None });
    }

    #[test]
    fn copies_from_a_busy_slot_with_a_long_match() {
        let a: Vec<u32> = (0..100).collect();
        let prompt: Vec<u32> = (0..50).chain([999]).collect();
        let slots = [slot(&a, Some(7), true, 1), slot(&[5], Some(7), false, 0), slot(&[], None, false, 0)];
        let p = place(&slots, 7, &prompt, 32).unwrap();
        assert_eq!(p, Placement { slot: 2, reuse: 50, copy_from: Some(0) });
        // A short match is not worth a copy.
        let p = place(&slots, 7, &prompt[..10], 32).unwrap();
        assert_eq!(p, Placement { slot: 2, reuse: 0, copy_from: None });
    }

    #[test]
    fn evicts_least_recently_used_when_all_hold_caches() {
        let (a, b) = ([1u32], [2u32]);
        let slots = [slot(&a, Some(1), false, 9), slot(&b, Some(1), false, 3)];
        assert_eq!(place(&slots, 5, &[7, 8], 1).unwrap().slot, 1);
    }

    #[test]
    fn none_when_all_busy() {
        let slots = [slot(&[], None, true, 0)];
        assert_eq!(place(&slots, 1, &[1, 2], 1), None);
    }
}
