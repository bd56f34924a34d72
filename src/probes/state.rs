//! Per-target status with flap suppression: turns a stream of check results into confirmed
//! status changes.
//!
//! Rules: the confirmed status changes only after `confirm` consecutive results agreeing on a
//! new value (one lost packet is not an alert); a target whose confirmed status changed
//! `flap_changes` times within `flap_window_s` is *flapping*: its changes are still recorded
//! but marked not to notify, and one `FlappingStarted` event is raised; flapping ends after
//! `flap_window_s` without a change (`FlappingEnded`, which notifies the current status).
//!
//! Invariants: pure (the caller passes the time); a tracker seeded with the cluster's
//! replicated status (a target that moved here from another node) raises no change when its
//! first confirmed result agrees, so a move never produces a duplicate alert.

use std::collections::VecDeque;

use serde::Serialize;

use super::Health;

/// Flap-suppression settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rules {
    pub confirm: u32,
    pub flap_changes: usize,
    pub flap_window_s: i64,
}

impl Default for Rules {
    fn default() -> Rules {
        Rules { confirm: 2, flap_changes: 4, flap_window_s: 3600 }
    }
}

/// What a result changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// The confirmed status changed (`from` is `None` for a target never confirmed before).
    Changed {
        from: Option<Health>,
        to: Health,
        at: i64,
        notify: bool,
    },
    FlappingStarted {
        at: i64,
    },
    FlappingEnded {
        status: Health,
        at: i64,
    },
}

/// One target's tracker.
#[derive(Debug, Clone, Default)]
pub struct Tracker {
    status: Option<Health>,
    candidate: Option<Health>,
    streak: u32,
    changes: VecDeque<i64>,
    flapping: bool,
}

impl Tracker {
    /// A tracker that already knows the target's confirmed status (from the cluster).
    pub fn seeded(status: Health) -> Tracker {
        Tracker { status: Some(status), ..Tracker::default() }
    }

    /// The confirmed status, `None` until `confirm` results agreed.
    pub fn status(&self) -> Option<Health> {
        self.status
    }

    pub fn flapping(&self) -> bool {
        self.flapping
    }

    /// Feeds one result taken at `at` (unix seconds); returns the events it caused.
    pub fn observe(&mut self, health: Health, at: i64, rules: &Rules) -> Vec<Event> {
        let mut events = Vec::new();
        while self.changes.front().is_some_and(|t| at - t > rules.flap_window_s) {
            self.changes.pop_front();
        }
        if self.flapping && self.changes.is_empty() {
            self.flapping = false;
            if let Some(status) = self.status {
                events.push(Event::FlappingEnded { status, at });
            }
        }
        if Some(health) == self.status {
            self.candidate = None;
            self.streak = 0;
            return events;
        }
        if self.candidate == Some(health) {
            self.streak += 1;
        } else {
            self.candidate = Some(health);
            self.streak = 1;
        }
        if self.streak < rules.confirm.max(1) {
            return events;
        }
        let from = self.status.replace(health);
        self.candidate = None;
        self.streak = 0;
        if from.is_some() {
            self.changes.push_back(at);
        }
        let start_flapping = !self.flapping && self.changes.len() >= rules.flap_changes.max(1);
        events.push(Event::Changed { from, to: health, at, notify: !self.flapping && !start_flapping });
        if start_flapping {
            self.flapping = true;
            events.push(Event::FlappingStarted { at });
        }
        events
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Health::*;

    fn feed(t: &mut Tracker, seq: &[(Health, i64)]) -> Vec<Event> {
        seq.iter().flat_map(|(h, at)| t.observe(*h, *at, &Rules::default())).collect()
    }

    #[test]
    fn a_change_needs_two_agreeing_results() {
        let mut t = Tracker::default();
        assert_eq!(feed(&mut t, &[(Up, 0)]), vec![]);
        assert_eq!(feed(&mut t, &[(Up, 30)]), vec![Event::Changed { from: None, to: Up, at: 30, notify: true }]);
        // One lost check is ignored.
        assert_eq!(feed(&mut t, &[(Down, 60), (Up, 90), (Up, 120)]), vec![]);
        assert_eq!(t.status(), Some(Up));
        assert_eq!(feed(&mut t, &[(Down, 150), (Down, 180)]), vec![Event::Changed { from: Some(Up), to: Down, at: 180, notify: true }]);
        assert_eq!(
            feed(&mut t, &[(Degraded, 210), (Up, 240), (Up, 270)]),
            vec![Event::Changed { from: Some(Down), to: Up, at: 270, notify: true }]
        );
    }

    #[test]
    fn a_moved_target_seeded_with_the_cluster_status_raises_nothing() {
        let mut t = Tracker::seeded(Down);
        assert_eq!(feed(&mut t, &[(Down, 0), (Down, 30)]), vec![]);
        assert_eq!(feed(&mut t, &[(Up, 60), (Up, 90)]), vec![Event::Changed { from: Some(Down), to: Up, at: 90, notify: true }]);
    }

    #[test]
    fn flapping_is_announced_once_then_silent_until_stable() {
        let mut t = Tracker::seeded(Up);
        let mut at = 0;
        let mut notified = 0;
        let mut started = 0;
        for i in 0..10 {
            let h = if i % 2 == 0 { Down } else { Up };
            for _ in 0..2 {
                at += 30;
                for e in t.observe(h, at, &Rules::default()) {
                    match e {
                        Event::Changed { notify: true, .. } => notified += 1,
                        Event::FlappingStarted { .. } => started += 1,
                        _ => {}
                    }
                }
            }
        }
        assert_eq!(notified, 3, "the first three changes notify, then flapping silences them");
        assert_eq!(started, 1);
        assert!(t.flapping());
        // Stable for more than the window: flapping ends with the current status.
        let ev = feed(&mut t, &[(Up, at + 30), (Up, at + 3700)]);
        assert!(ev.contains(&Event::FlappingEnded { status: Up, at: at + 3700 }), "{ev:?}");
        assert!(!t.flapping());
    }
}
