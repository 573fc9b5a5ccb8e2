//! Where copies go: the one choice of bookies for new ensembles, ensemble-change replacements
//! and auto-recovery targets.
//!
//! Rule (soft, like BookKeeper's default `enforceMinNumRacksPerWriteQuorum=false`): a bookie
//! whose host holds no copy yet (not in the ensemble, not chosen in this call) is preferred;
//! a bookie on a host that already holds one is taken only when no other candidate is left,
//! and the [`Placement`] says so, for the caller to log. Among equally good candidates the
//! choice is uniform through the caller's seeded random source: with every candidate on its
//! own host, it draws exactly as a plain uniform choice would (a simulation replays the same).
//!
//! Pure code: no I/O, no clock.

use std::collections::BTreeSet;

use crate::registration::BookieRegistration;

/// A bookie that may be chosen, and the host (failure domain) it runs on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub bookie_id: String,
    pub host: String,
}

impl From<BookieRegistration> for Candidate {
    fn from(registration: BookieRegistration) -> Self {
        Candidate { bookie_id: registration.bookie_id, host: registration.host }
    }
}

/// The bookies chosen, in choice order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub chosen: Vec<String>,
    /// Hosts that got a second copy because no bookie on another host was left (empty when
    /// the rule held).
    pub shared_hosts: Vec<String>,
}

/// Chooses `count` different bookies among `candidates`, skipping the ids in `excluded`,
/// preferring hosts not in `occupied_hosts` and not chosen already in this call.
///
/// `None` when fewer than `count` candidates are left after the exclusions. Candidates should
/// come in a stable order (sorted by id) so that a seeded `random` replays.
pub fn choose(
    candidates: &[Candidate],
    count: usize,
    excluded: &BTreeSet<String>,
    occupied_hosts: &BTreeSet<String>,
    random: &mut dyn FnMut() -> u64,
) -> Option<Placement> {
    let mut pool: Vec<&Candidate> = Vec::with_capacity(candidates.len());
    for candidate in candidates {
        if !excluded.contains(&candidate.bookie_id) && !pool.iter().any(|c| c.bookie_id == candidate.bookie_id) {
            pool.push(candidate);
        }
    }
    if pool.len() < count {
        return None;
    }
    let mut hosts: BTreeSet<&str> = occupied_hosts.iter().map(String::as_str).collect();
    let mut placement = Placement { chosen: Vec::with_capacity(count), shared_hosts: Vec::new() };
    while placement.chosen.len() < count {
        let fresh: Vec<usize> = (0..pool.len()).filter(|&i| !hosts.contains(pool[i].host.as_str())).collect();
        let index = if fresh.is_empty() {
            let index = (random() % pool.len() as u64) as usize;
            placement.shared_hosts.push(pool[index].host.clone());
            index
        } else {
            fresh[(random() % fresh.len() as u64) as usize]
        };
        let chosen = pool.remove(index);
        hosts.insert(chosen.host.as_str());
        placement.chosen.push(chosen.bookie_id.clone());
    }
    Some(placement)
}

/// The hosts of the bookies in `bookie_ids` that are among `candidates` (a bookie that is not
/// registered has no known host and occupies none).
pub fn hosts_of(candidates: &[Candidate], bookie_ids: &[String]) -> BTreeSet<String> {
    candidates
        .iter()
        .filter(|candidate| bookie_ids.contains(&candidate.bookie_id))
        .map(|candidate| candidate.host.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{RngCore, SeedableRng};

    use super::*;

    fn candidates(hosts: &[(&str, &str)]) -> Vec<Candidate> {
        hosts.iter().map(|(id, host)| Candidate { bookie_id: (*id).to_owned(), host: (*host).to_owned() }).collect()
    }

    fn set(items: &[&str]) -> BTreeSet<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    fn host(all: &[Candidate], id: &str) -> String {
        all.iter().find(|c| c.bookie_id == id).map(|c| c.host.clone()).unwrap_or_default()
    }

    #[test]
    fn a_new_ensemble_avoids_sharing_a_host_when_it_can() {
        // Two bookies on host a, two on b, one on c: three copies fit on three hosts.
        let all = candidates(&[("b0", "a"), ("b1", "a"), ("b2", "b"), ("b3", "b"), ("b4", "c")]);
        for seed in 0..200 {
            let mut rng = StdRng::seed_from_u64(seed);
            let placement = choose(&all, 3, &set(&[]), &set(&[]), &mut || rng.next_u64()).expect("enough");
            let hosts: BTreeSet<String> = placement.chosen.iter().map(|id| host(&all, id)).collect();
            assert_eq!(hosts.len(), 3, "seed {seed}: {placement:?}");
            assert!(placement.shared_hosts.is_empty());
        }
    }

    #[test]
    fn hosts_are_shared_only_when_there_is_no_other_choice() {
        // Three copies, two hosts: exactly one host gets two, and the placement says which.
        let all = candidates(&[("b0", "a"), ("b1", "a"), ("b2", "b"), ("b3", "b")]);
        let mut rng = StdRng::seed_from_u64(7);
        let placement = choose(&all, 3, &set(&[]), &set(&[]), &mut || rng.next_u64()).expect("enough");
        let hosts: BTreeSet<String> = placement.chosen.iter().map(|id| host(&all, id)).collect();
        assert_eq!(hosts.len(), 2);
        assert_eq!(placement.shared_hosts.len(), 1);
    }

    #[test]
    fn a_replacement_avoids_the_hosts_of_the_ensemble() {
        // Ensemble b0 (host a), b2 (host b); b1 shares host a, b3 shares host b, b4 is alone.
        let all = candidates(&[("b0", "a"), ("b1", "a"), ("b2", "b"), ("b3", "b"), ("b4", "c")]);
        let ensemble = vec!["b0".to_owned(), "b2".to_owned()];
        let occupied = hosts_of(&all, &ensemble);
        for seed in 0..100 {
            let mut rng = StdRng::seed_from_u64(seed);
            let placement =
                choose(&all, 1, &ensemble.iter().cloned().collect(), &occupied, &mut || rng.next_u64()).expect("one");
            assert_eq!(placement.chosen, vec!["b4".to_owned()], "seed {seed}");
        }
        // Without b4, a shared host is the fallback, not a failure.
        let without = candidates(&[("b0", "a"), ("b1", "a"), ("b2", "b"), ("b3", "b")]);
        let mut rng = StdRng::seed_from_u64(1);
        let placement =
            choose(&without, 1, &ensemble.iter().cloned().collect(), &occupied, &mut || rng.next_u64()).expect("one");
        assert_eq!(placement.shared_hosts.len(), 1, "{placement:?}");
        assert!(placement.chosen[0] == "b1" || placement.chosen[0] == "b3");
    }

    #[test]
    fn too_few_candidates_is_none_and_excluded_ones_never_come_back() {
        let all = candidates(&[("b0", "a"), ("b1", "b"), ("b2", "c")]);
        let mut rng = StdRng::seed_from_u64(3);
        assert!(choose(&all, 3, &set(&["b1"]), &set(&[]), &mut || rng.next_u64()).is_none());
        let placement = choose(&all, 2, &set(&["b1"]), &set(&[]), &mut || rng.next_u64()).expect("two");
        assert!(!placement.chosen.contains(&"b1".to_owned()));
    }

    #[test]
    fn with_distinct_hosts_the_draw_is_a_plain_uniform_choice() {
        // What the writer drew before placement existed: `pool.remove(random % len)`.
        let all = candidates(&[("b0", "a"), ("b1", "b"), ("b2", "c"), ("b3", "d"), ("b4", "e")]);
        for seed in 0..50 {
            let mut rng = StdRng::seed_from_u64(seed);
            let placement = choose(&all, 3, &set(&[]), &set(&[]), &mut || rng.next_u64()).expect("enough");
            let mut rng = StdRng::seed_from_u64(seed);
            let mut pool: Vec<String> = all.iter().map(|c| c.bookie_id.clone()).collect();
            let plain: Vec<String> =
                (0..3).map(|_| pool.remove((rng.next_u64() % pool.len() as u64) as usize)).collect();
            assert_eq!(placement.chosen, plain, "seed {seed}");
        }
    }
}
