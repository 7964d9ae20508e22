//! Backend health checking as a state machine that does no I/O.
//!
//! Owns, per target, the up/down state with rise/fall thresholds, the check
//! schedule (interval) and the check in flight with its deadline (timeout). The
//! poll loop asks `due(now)` which checks to start, performs them (a TCP connect
//! through smoltcp, a UDP probe) and hands the outcome to `report`. Must never
//! read a clock or touch a socket.

use alloc::vec::Vec;

use serde::{Deserialize, Serialize};
use smoltcp::time::{Duration, Instant};

/// Check timing and thresholds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HealthConfig {
    /// From the start of one check to the start of the next.
    pub interval: Duration,
    /// A check with no outcome by then has failed.
    pub timeout: Duration,
    /// Consecutive successes that bring a down target up.
    pub rise: u32,
    /// Consecutive failures that take an up target down.
    pub fall: u32,
}

impl Default for HealthConfig {
    /// HAProxy's defaults: every 2 s, up after 2 successes, down after 3 failures.
    fn default() -> Self {
        HealthConfig {
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            rise: 2,
            fall: 3,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    Up,
    Down,
}

/// Names one started check, so that a late outcome of an older one is ignored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CheckId(u64);

/// A check the caller must start now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Check<T> {
    pub id: CheckId,
    pub target: T,
    /// When it counts as failed without an outcome.
    pub deadline: Instant,
}

/// A target whose state changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transition<T> {
    pub target: T,
    pub health: Health,
}

/// What `due` asks of the caller and what changed meanwhile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Due<T> {
    pub start: Vec<Check<T>>,
    /// Changes caused by checks that timed out.
    pub transitions: Vec<Transition<T>>,
}

/// One target's state, for `status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TargetState<T> {
    pub target: T,
    pub health: Health,
    /// Consecutive successes (when positive) or failures of the latest checks.
    pub ok_streak: u32,
    pub fail_streak: u32,
    /// Checks that succeeded, and that failed (timeouts included), since it was added.
    pub checks_ok: u64,
    pub checks_failed: u64,
}

#[derive(Clone, Copy, Debug)]
struct Entry<T> {
    state: TargetState<T>,
    next_due: Instant,
    in_flight: Option<(CheckId, Instant)>,
}

/// The checker for a set of targets sharing one configuration.
#[derive(Clone, Debug)]
pub struct HealthChecker<T> {
    config: HealthConfig,
    entries: Vec<Entry<T>>,
    next_id: u64,
}

impl<T: Copy + PartialEq> HealthChecker<T> {
    pub fn new(config: HealthConfig) -> Self {
        HealthChecker {
            config,
            entries: Vec::new(),
            next_id: 0,
        }
    }

    pub fn config(&self) -> &HealthConfig {
        &self.config
    }

    /// Starts checking `target` (its first check is due at `now`), in the
    /// `initial` state. Adding a target twice keeps the first.
    pub fn add(&mut self, target: T, initial: Health, now: Instant) {
        if self.entries.iter().any(|e| e.state.target == target) {
            return;
        }
        self.entries.push(Entry {
            state: TargetState {
                target,
                health: initial,
                ok_streak: 0,
                fail_streak: 0,
                checks_ok: 0,
                checks_failed: 0,
            },
            next_due: now,
            in_flight: None,
        });
    }

    pub fn remove(&mut self, target: T) -> bool {
        let before = self.entries.len();
        self.entries.retain(|e| e.state.target != target);
        self.entries.len() != before
    }

    pub fn health(&self, target: T) -> Option<Health> {
        self.entries
            .iter()
            .find(|e| e.state.target == target)
            .map(|e| e.state.health)
    }

    pub fn states(&self) -> impl Iterator<Item = &TargetState<T>> {
        self.entries.iter().map(|e| &e.state)
    }

    pub fn state(&self, target: T) -> Option<&TargetState<T>> {
        self.states().find(|s| s.target == target)
    }

    /// Fails the checks past their deadline, then returns the checks to start.
    pub fn due(&mut self, now: Instant) -> Due<T> {
        let mut due = Due {
            start: Vec::new(),
            transitions: Vec::new(),
        };
        let config = self.config;
        for e in &mut self.entries {
            if let Some((_, deadline)) = e.in_flight {
                if now >= deadline {
                    e.in_flight = None;
                    if let Some(t) = outcome(&config, &mut e.state, false) {
                        due.transitions.push(t);
                    }
                }
            }
            if e.in_flight.is_none() && now >= e.next_due {
                let id = CheckId(self.next_id);
                self.next_id += 1;
                let deadline = now + config.timeout;
                e.in_flight = Some((id, deadline));
                // Checks start on a fixed cadence even when one ran late.
                e.next_due = now + config.interval;
                due.start.push(Check {
                    id,
                    target: e.state.target,
                    deadline,
                });
            }
        }
        due
    }

    /// The outcome of a started check, known at `now`. An outcome at the deadline
    /// still counts (a UDP probe succeeds by staying unanswered until then); one
    /// after it is a failure, and one for a check `due` already failed or for a
    /// removed target is ignored.
    pub fn report(&mut self, id: CheckId, ok: bool, now: Instant) -> Option<Transition<T>> {
        let config = self.config;
        let e = self
            .entries
            .iter_mut()
            .find(|e| matches!(e.in_flight, Some((i, _)) if i == id))?;
        let (_, deadline) = e.in_flight.take()?;
        let ok = ok && now <= deadline;
        outcome(&config, &mut e.state, ok)
    }

    /// When `due` next has work: a check to start or a deadline to enforce.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.entries
            .iter()
            .map(|e| match e.in_flight {
                Some((_, deadline)) => deadline,
                None => e.next_due,
            })
            .min()
    }
}

fn outcome<T: Copy>(c: &HealthConfig, s: &mut TargetState<T>, ok: bool) -> Option<Transition<T>> {
    if ok {
        s.checks_ok = s.checks_ok.saturating_add(1);
        s.fail_streak = 0;
        s.ok_streak = s.ok_streak.saturating_add(1);
        if s.health == Health::Down && s.ok_streak >= c.rise {
            s.health = Health::Up;
            return Some(Transition {
                target: s.target,
                health: Health::Up,
            });
        }
    } else {
        s.checks_failed = s.checks_failed.saturating_add(1);
        s.ok_streak = 0;
        s.fail_streak = s.fail_streak.saturating_add(1);
        if s.health == Health::Up && s.fail_streak >= c.fall {
            s.health = Health::Down;
            return Some(Transition {
                target: s.target,
                health: Health::Down,
            });
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    fn ms(n: u64) -> Instant {
        Instant::from_millis(n as i64)
    }

    fn cfg() -> HealthConfig {
        HealthConfig {
            interval: Duration::from_millis(1000),
            timeout: Duration::from_millis(300),
            rise: 2,
            fall: 3,
        }
    }

    /// Runs one check round at `at` for the single target, reporting `ok`.
    fn round(h: &mut HealthChecker<u8>, at: u64, ok: bool) -> Option<Transition<u8>> {
        let due = h.due(ms(at));
        assert!(due.transitions.is_empty());
        assert_eq!(due.start.len(), 1, "a check is due at {at}");
        h.report(due.start[0].id, ok, ms(at + 10))
    }

    #[test]
    fn falls_after_fall_failures_and_rises_after_rise_successes() {
        let mut h = HealthChecker::new(cfg());
        h.add(7u8, Health::Up, ms(0));
        assert_eq!(round(&mut h, 0, false), None);
        assert_eq!(round(&mut h, 1000, false), None);
        // A success resets the failure streak.
        assert_eq!(round(&mut h, 2000, true), None);
        assert_eq!(round(&mut h, 3000, false), None);
        assert_eq!(round(&mut h, 4000, false), None);
        assert_eq!(
            round(&mut h, 5000, false),
            Some(Transition {
                target: 7,
                health: Health::Down
            })
        );
        assert_eq!(h.health(7), Some(Health::Down));
        assert_eq!(round(&mut h, 6000, false), None);
        assert_eq!(round(&mut h, 7000, true), None);
        assert_eq!(
            round(&mut h, 8000, true),
            Some(Transition {
                target: 7,
                health: Health::Up
            })
        );
        assert_eq!(round(&mut h, 9000, true), None);
    }

    #[test]
    fn checks_follow_the_interval_and_one_at_a_time() {
        let mut h = HealthChecker::new(cfg());
        h.add(1u8, Health::Down, ms(0));
        let first = h.due(ms(0)).start;
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].deadline, ms(300));
        // Nothing new while the check is in flight or before the interval.
        assert!(h.due(ms(100)).start.is_empty());
        assert_eq!(h.next_deadline(), Some(ms(300)));
        h.report(first[0].id, true, ms(100));
        assert_eq!(h.next_deadline(), Some(ms(1000)));
        assert!(h.due(ms(999)).start.is_empty());
        assert_eq!(h.due(ms(1000)).start.len(), 1);
    }

    #[test]
    fn a_silent_check_times_out_as_a_failure_and_late_reports_are_ignored() {
        let mut h = HealthChecker::new(HealthConfig { fall: 1, ..cfg() });
        h.add(3u8, Health::Up, ms(0));
        let c = h.due(ms(0)).start[0];
        let due = h.due(ms(300));
        assert_eq!(
            due.transitions,
            vec![Transition {
                target: 3,
                health: Health::Down
            }]
        );
        assert!(due.start.is_empty());
        // The late outcome of the timed-out check changes nothing.
        assert_eq!(h.report(c.id, true, ms(310)), None);
        assert_eq!(h.health(3), Some(Health::Down));
        // An outcome that arrives after its deadline is a failure; one at it counts.
        let c = h.due(ms(1000)).start[0];
        assert_eq!(h.report(c.id, true, ms(1301)), None);
        let s = h.states().next().unwrap();
        assert_eq!((s.ok_streak, s.fail_streak), (0, 2));
        assert_eq!((s.checks_ok, s.checks_failed), (0, 2));
        let c = h.due(ms(2000)).start[0];
        assert_eq!(h.report(c.id, true, ms(2300)), None);
        let s = h.state(3).unwrap();
        assert_eq!((s.ok_streak, s.checks_ok, s.checks_failed), (1, 1, 2));
    }

    #[test]
    fn targets_are_independent_and_removable() {
        let mut h = HealthChecker::new(HealthConfig {
            fall: 1,
            rise: 1,
            ..cfg()
        });
        h.add(1u8, Health::Up, ms(0));
        h.add(2u8, Health::Up, ms(0));
        h.add(2u8, Health::Down, ms(0));
        let checks = h.due(ms(0)).start;
        assert_eq!(checks.len(), 2);
        let t1 = h.report(checks[0].id, false, ms(1));
        assert_eq!(
            t1,
            Some(Transition {
                target: 1,
                health: Health::Down
            })
        );
        assert_eq!(h.report(checks[1].id, true, ms(1)), None);
        assert_eq!(h.health(2), Some(Health::Up));
        assert!(h.remove(1));
        assert!(!h.remove(1));
        assert_eq!(h.health(1), None);
        assert_eq!(h.due(ms(1000)).start.len(), 1);
    }
}
