//! A window of message ids, each with the time it was added and a value, expiring oldest first:
//! the embedded transport's duplicate window and [`MemoryDedup`](crate::dedup::MemoryDedup)'s
//! marks.
//!
//! Message ids are UUID v7: a publisher's ids increase with time. An id greater than every id
//! added before it goes to the end of a sorted run: finding an id past the run's end is one
//! comparison, and adding it is a push at the end, with no hashing and no random memory access
//! (a hash map of a few hundred thousand ids misses the cache on every probe). Any other id (ids
//! of several publishers interleaved, a foreign publisher's text) goes to a hash map. Both are
//! kept in the order added, so expiry takes from their fronts.

use crate::fast_hash::FastMap;
use std::collections::VecDeque;
use std::hash::Hash;
use std::time::Duration;
use tokio::time::Instant;

/// Ids with the time each was added and a value; see the [module](self). Times are expected not
/// to decrease in the order ids are added (an id added with an earlier time than the one before
/// it expires with that one).
#[derive(Debug)]
pub(crate) struct IdWindow<K, V> {
    /// Ids in increasing order, each greater than every id added before it; `None`: added again
    /// later, now in `others` (a renewed id keeps no place in the middle of the run).
    run: VecDeque<(K, Instant, Option<V>)>,
    /// The other ids, and their order of adding (for expiry).
    others: FastMap<K, (Instant, V)>,
    others_order: VecDeque<(Instant, K)>,
}

impl<K, V> Default for IdWindow<K, V> {
    fn default() -> Self {
        Self {
            run: VecDeque::new(),
            others: FastMap::default(),
            others_order: VecDeque::new(),
        }
    }
}

impl<K: Ord + Hash + Clone, V> IdWindow<K, V> {
    /// When `id` was added, and its value.
    pub(crate) fn get(&self, id: &K) -> Option<(Instant, &V)> {
        if !self.others.is_empty()
            && let Some((at, v)) = self.others.get(id)
        {
            return Some((*at, v));
        }
        // Past the run's end (the common case): one comparison.
        if self.run.back().is_none_or(|(last, _, _)| id > last) {
            return None;
        }
        let i = self.search_run(id).ok()?;
        self.run.get(i).and_then(|(_, at, v)| v.as_ref().map(|v| (*at, v)))
    }

    /// Where `id` is in the run (`Err`: where it would go), searched from the end: first
    /// backwards in doubling steps, then by halves between the last two steps. An id out of
    /// order by a little (the ids one millisecond of several publishers, or of derived ids,
    /// interleave) is found in a few probes of the run's hot end, not a search of all of it
    /// (one cache miss per probe in a run of a few hundred thousand ids); any other id in at
    /// most twice the probes of a plain binary search.
    fn search_run(&self, id: &K) -> Result<usize, usize> {
        let len = self.run.len();
        // Everything at or after `hi` is greater than `id`.
        let (mut lo, mut hi) = (0, len);
        let mut step = 1;
        while step <= len {
            let probe = len - step;
            match self.run[probe].0.cmp(id) {
                std::cmp::Ordering::Equal => return Ok(probe),
                std::cmp::Ordering::Greater => hi = probe,
                std::cmp::Ordering::Less => {
                    lo = probe + 1;
                    break;
                }
            }
            step *= 2;
        }
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.run[mid].0.cmp(id) {
                std::cmp::Ordering::Equal => return Ok(mid),
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Less => lo = mid + 1,
            }
        }
        Err(lo)
    }

    /// Adds `id` at `at` with `value`; an id already there takes the new time and value.
    pub(crate) fn insert(&mut self, id: K, at: Instant, value: V) {
        let in_others = !self.others.is_empty() && self.others.contains_key(&id);
        if !in_others {
            if self.run.back().is_none_or(|(last, _, _)| id > *last) {
                self.run.push_back((id, at, Some(value)));
                return;
            }
            if let Ok(i) = self.search_run(&id)
                && let Some(entry) = self.run.get_mut(i)
            {
                entry.2 = None;
            }
        }
        self.others_order.push_back((at, id.clone()));
        self.others.insert(id, (at, value));
    }

    /// Removes the ids added `keep` or longer before `now`, oldest first.
    pub(crate) fn expire(&mut self, now: Instant, keep: Duration) {
        let Some(until) = now.checked_sub(keep) else {
            return;
        };
        while self.run.front().is_some_and(|(_, at, _)| *at <= until) {
            self.run.pop_front();
        }
        while let Some((at, _)) = self.others_order.front() {
            if *at > until {
                break;
            }
            // An id renewed since stays (its newer place in the order removes it).
            if let Some((_, id)) = self.others_order.pop_front()
                && self.others.get(&id).is_some_and(|(at, _)| *at <= until)
            {
                self.others.remove(&id);
            }
        }
    }

    /// The time of the oldest entry (nothing expires before it).
    pub(crate) fn oldest(&self) -> Option<Instant> {
        let run = self.run.front().map(|(_, at, _)| *at);
        run.into_iter()
            .chain(self.others_order.front().map(|(at, _)| *at))
            .min()
    }

    /// How many ids are kept.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.run.iter().filter(|(_, _, v)| v.is_some()).count() + self.others.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// Random operations against a reference map with the same meaning.
    #[test]
    fn agrees_with_a_map() {
        let t0 = Instant::now();
        let mut rng = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        for round in 0..50 {
            let mut w = IdWindow::<u64, u64>::default();
            let mut reference: BTreeMap<u64, (Instant, u64)> = BTreeMap::new();
            let mut clock = 0u64;
            let mut top = 0u64;
            for step in 0..2_000u64 {
                clock += next(3);
                let at = t0 + Duration::from_millis(clock);
                match next(10) {
                    // Mostly increasing ids, as one v7 publisher makes them.
                    0..=5 => {
                        top += 1 + next(3);
                        w.insert(top, at, step);
                        reference.insert(top, (at, step));
                    }
                    // Any id, new or seen.
                    6 | 7 => {
                        let id = next(top + 10);
                        w.insert(id, at, step);
                        reference.insert(id, (at, step));
                    }
                    8 => {
                        let keep = Duration::from_millis(40 + next(40));
                        w.expire(at, keep);
                        if let Some(until) = at.checked_sub(keep) {
                            reference.retain(|_, (a, _)| *a > until);
                        }
                    }
                    _ => {}
                }
                // Lookups: an id is found with its time and value unless expired; the window
                // may keep an expired id renewed behind a newer one, never a wrong value.
                for _ in 0..4 {
                    let id = next(top + 10);
                    let got = w.get(&id).map(|(a, v)| (a, *v));
                    match reference.get(&id) {
                        Some(want) => assert_eq!(got, Some(*want), "round {round} step {step} id {id}"),
                        None => assert!(got.is_none(), "round {round} step {step} id {id}: {got:?}"),
                    }
                }
                assert_eq!(w.len(), reference.len(), "round {round} step {step}");
                let oldest = reference.values().map(|(a, _)| *a).min();
                if let (Some(want), Some(got)) = (oldest, w.oldest()) {
                    assert!(got <= want, "round {round} step {step}");
                }
            }
        }
    }

    /// The search from the run's end agrees with a binary search of all of it, for every id
    /// below, between and above the run's, near its end and far from it.
    #[test]
    fn the_search_from_the_end_finds_what_a_binary_search_finds() {
        let t0 = Instant::now();
        for len in [0u64, 1, 2, 3, 7, 8, 9, 100, 1000] {
            let mut w = IdWindow::<u64, ()>::default();
            for i in 0..len {
                w.insert(10 * i + 5, t0, ());
            }
            for id in 0..10 * len + 20 {
                let whole = w.run.binary_search_by(|(k, _, _)| k.cmp(&id));
                assert_eq!(w.search_run(&id), whole, "len {len} id {id}");
            }
        }
    }

    /// Ids that arrive slightly out of order, as derived ids within one millisecond do: each
    /// block of 16 increasing ids comes shuffled. Every one is found; none is lost.
    #[test]
    fn ids_shuffled_within_blocks_are_all_found() {
        let t0 = Instant::now();
        let mut w = IdWindow::<u64, u64>::default();
        let mut rng = 0x2545_f491_4f6c_dd1d_u64;
        for block in 0..500u64 {
            let mut ids: Vec<u64> = (0..16).map(|i| block * 16 + i).collect();
            for i in (1..ids.len()).rev() {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                ids.swap(i, usize::try_from(rng % (i as u64 + 1)).unwrap());
            }
            for id in ids {
                assert!(w.get(&id).is_none(), "{id} is new");
                w.insert(id, t0, id);
            }
        }
        for id in 0..8000u64 {
            assert_eq!(w.get(&id).map(|(_, v)| *v), Some(id));
        }
        assert_eq!(w.len(), 8000);
    }

    #[test]
    fn increasing_ids_stay_in_the_run() {
        let t0 = Instant::now();
        let mut w = IdWindow::<u32, ()>::default();
        for i in 0..1000 {
            w.insert(i, t0, ());
        }
        assert!(w.others.is_empty());
        assert_eq!(w.len(), 1000);
        let later = t0 + Duration::from_secs(1);
        w.insert(500, later, ());
        assert_eq!(w.others.len(), 1, "a renewed id moves out of the run");
        assert_eq!(w.len(), 1000);
        w.expire(later, Duration::from_secs(1));
        assert_eq!(w.len(), 1, "only the renewed id is left");
        assert_eq!(w.get(&500).map(|(at, _)| at), Some(later));
        assert!(w.get(&499).is_none());
    }
}
