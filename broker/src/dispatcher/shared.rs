//! Shared: messages go round robin to the consumers that have permits; no ordering.

/// The next consumer with permits, starting at `*next` (in subscription order) and moving it
/// past the one chosen, so consumers take turns.
pub fn pick_round_robin(permits: &[(u64, i64)], next: &mut usize) -> Option<u64> {
    let count = permits.len();
    for step in 0..count {
        let index = (*next + step) % count;
        if permits[index].1 > 0 {
            *next = (index + 1) % count;
            return Some(permits[index].0);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consumers_take_turns_and_those_without_permits_are_skipped() {
        let mut next = 0;
        let permits = [(1, 5), (2, 0), (3, 5)];
        let picks: Vec<u64> = (0..4).filter_map(|_| pick_round_robin(&permits, &mut next)).collect();
        assert_eq!(picks, vec![1, 3, 1, 3]);
        assert_eq!(pick_round_robin(&[(1, 0)], &mut next), None);
        assert_eq!(pick_round_robin(&[], &mut next), None);
    }
}
