//! Which of the group committer's slots count as busy (C4): the groups
//! begun within the last [`STALL`] that still run. A group stuck longer
//! holds back nobody, and nothing is kept for it.

use std::collections::VecDeque;

use tokio::time::Instant;

use super::group::STALL;

/// The groups begun within the last [`STALL`] that still run, counted in
/// constant time however many groups are stuck (a million parked requests
/// make a million): a stuck group ages out of the count, nothing is kept
/// for it, and nothing is left behind when it ends.
pub(super) struct Starts {
    /// How many groups may be in flight at once.
    slots: usize,
    /// Group starts not yet aged out, in order of their numbers: when, and
    /// whether that group has ended.
    recent: VecDeque<(Instant, bool)>,
    /// The number of `recent`'s first start.
    first: u64,
    /// Starts in `recent` whose group still runs.
    fresh: usize,
}

impl Starts {
    /// No group in flight yet; at most `slots` at once.
    pub(super) fn new(slots: usize) -> Self {
        Self {
            slots: slots.max(1),
            recent: VecDeque::new(),
            first: 0,
            fresh: 0,
        }
    }

    /// A group begins `now`; returns its start's number.
    pub(super) fn begin(&mut self, now: Instant) -> u64 {
        self.recent.push_back((now, false));
        self.fresh += 1;
        self.first + self.recent.len() as u64 - 1
    }

    /// The group of start `number` ended (a no-op once it aged out).
    pub(super) fn end(&mut self, number: u64) {
        let recent = number
            .checked_sub(self.first)
            .and_then(|i| self.recent.get_mut(i as usize));
        if let Some((_, ended)) = recent
            && !std::mem::replace(ended, true)
        {
            self.fresh -= 1;
        }
    }

    /// A slot may open while fewer than `slots` groups began
    /// within [`STALL`] and still run: one stuck on a slow database holds
    /// back nobody for long.
    pub(super) fn slot_free(&mut self, now: Instant) -> bool {
        while let Some(&(began, ended)) = self.recent.front() {
            if now.saturating_duration_since(began) < STALL {
                break;
            }
            self.recent.pop_front();
            self.first += 1;
            if !ended {
                self.fresh -= 1;
            }
        }
        self.fresh < self.slots
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_running_groups_begun_within_the_stall_hold_a_slot() {
        let mut starts = Starts::new(2);
        let t0 = Instant::now();
        let first = starts.begin(t0);
        assert!(starts.slot_free(t0));
        let second = starts.begin(t0);
        assert!(!starts.slot_free(t0), "both slots are fresh");
        starts.end(first);
        assert!(starts.slot_free(t0), "an ended group holds nothing");
        starts.end(first);
        assert_eq!(starts.fresh, 1, "ending twice counts once");
        assert!(starts.slot_free(t0 + STALL), "a stuck group ages out");
        starts.end(second);
        assert_eq!(starts.fresh, 0);
    }

    #[test]
    fn a_million_stuck_groups_leave_nothing_behind() {
        let mut starts = Starts::new(1);
        let t0 = Instant::now();
        let numbers: Vec<u64> = (0..1_000_000).map(|_| starts.begin(t0)).collect();
        assert!(!starts.slot_free(t0));
        assert!(starts.slot_free(t0 + STALL));
        assert!(starts.recent.is_empty(), "aged-out starts are not kept");
        for number in numbers {
            starts.end(number);
        }
        assert_eq!(starts.fresh, 0);
        let next = starts.begin(t0 + STALL);
        assert_eq!(next, 1_000_000, "numbers go on");
    }
}
