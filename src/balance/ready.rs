//! The snapshot of ready instances that every call reads, and the pick itself.

use std::sync::Arc;

use super::instance::{Instance, State};
use crate::discovery::Placement;

/// The ready instances (connected and not ejected, or ejected when no other is connected) of
/// the lowest priority that has any, with their weights summed for weighted draws. Built when instances change, read lock-free by every call.
#[derive(Debug, Default)]
pub(crate) struct Ready {
    instances: Vec<Arc<Instance>>,
    /// Running sums of the weights: `cumulative[i]` is the total weight of `instances[..=i]`.
    /// Empty when every weight is equal, so draws are uniform.
    cumulative: Vec<u64>,
    /// The hash of each instance's address, for picks by key.
    hashes: Vec<u64>,
}

impl Ready {
    pub(crate) fn build(all: &[Arc<Instance>]) -> Self {
        // One look at each instance: its state and placement can change while this runs (a
        // call reporting a failure, a reconnect, DNS), and two looks could disagree.
        // Ejected instances are left out, unless they are all that is connected: an ejected
        // instance is better than none (the one that took the other's place may have gone).
        let connected: Vec<(&Arc<Instance>, bool)> = all
            .iter()
            .filter(|i| i.state() == State::Ready)
            .map(|i| (i, i.is_ejected()))
            .collect();
        let any_not_ejected = connected.iter().any(|(_, ejected)| !ejected);
        let ready: Vec<(Arc<Instance>, Placement)> = connected
            .into_iter()
            .filter(|(_, ejected)| !ejected || !any_not_ejected)
            .map(|(i, _)| (i.clone(), i.placement()))
            .collect();
        let Some(best) = ready.iter().map(|(_, p)| p.priority).min() else {
            return Self::default();
        };
        let (instances, weights): (Vec<_>, Vec<_>) = ready
            .into_iter()
            .filter(|(_, p)| p.priority == best)
            .map(|(i, p)| (i, p.weight))
            .unzip();
        let cumulative = if weights.windows(2).all(|pair| pair[0] == pair[1]) {
            Vec::new()
        } else {
            weights
                .iter()
                .scan(0u64, |sum, weight| {
                    *sum += draw_weight(*weight);
                    Some(*sum)
                })
                .collect()
        };
        let hashes = instances.iter().map(|instance| instance.key_hash).collect();
        Self {
            instances,
            cumulative,
            hashes,
        }
    }

    pub(crate) fn contains(&self, instance: &Arc<Instance>) -> bool {
        self.instances
            .iter()
            .any(|ready| Arc::ptr_eq(ready, instance))
    }

    /// How many instances calls can go to.
    pub(crate) fn len(&self) -> usize {
        self.instances.len()
    }

    /// Power of two choices: of two distinct instances drawn at random (in proportion to
    /// their weights), the less loaded (see [`less_loaded`]).
    pub(crate) fn pick(&self) -> Option<&Arc<Instance>> {
        let n = self.instances.len();
        if n <= 1 {
            return self.instances.first();
        }
        let a = self.draw();
        let mut b = self.draw();
        if b == a {
            b = (a + 1 + fastrand::usize(..n - 1)) % n;
        }
        let (a, b) = (&self.instances[a], &self.instances[b]);
        Some(if less_loaded(a, b) { a } else { b })
    }

    /// [`pick`](Self::pick), but another instance than those in `avoid` when there is one.
    pub(crate) fn pick_avoiding(&self, avoid: &[Arc<Instance>]) -> Option<&Arc<Instance>> {
        let avoided = |i: &Arc<Instance>| avoid.iter().any(|a| Arc::ptr_eq(a, i));
        if avoid.is_empty() || self.instances.iter().all(avoided) {
            return self.pick();
        }
        // A few draws find another almost always; the walk settles it otherwise.
        for _ in 0..4 {
            match self.pick() {
                Some(instance) if !avoided(instance) => return Some(instance),
                _ => {}
            }
        }
        self.instances.iter().find(|i| !avoided(i))
    }

    /// The instance that ranks highest for `key` by rendezvous hashing of the key and the
    /// instances' addresses, other than those in `avoid` when there is one: every client picks
    /// the same instance for a key, and an instance that comes or goes moves only the keys it
    /// ranks highest for. Weights and load play no part.
    pub(crate) fn pick_for_key(&self, key: u64, avoid: &[Arc<Instance>]) -> Option<&Arc<Instance>> {
        let avoided = |i: &Arc<Instance>| avoid.iter().any(|a| Arc::ptr_eq(a, i));
        let best = |avoiding: bool| {
            self.instances
                .iter()
                .zip(&self.hashes)
                .filter(|(instance, _)| !avoiding || !avoided(instance))
                .max_by_key(|(_, hash)| crate::keys::score(key, **hash))
                .map(|(instance, _)| instance)
        };
        best(true).or_else(|| best(false))
    }

    fn draw(&self) -> usize {
        match self.cumulative.last() {
            None => fastrand::usize(..self.instances.len()),
            Some(&total) => {
                let point = fastrand::u64(..total);
                self.cumulative.partition_point(|&sum| sum <= point)
            }
        }
    }
}

/// An SRV weight as a share of the draws: weight 0 gets a very small one beside the others
/// (RFC 2782), a thousandth of weight 1's. (Instances that all weigh the same, 0 included, are
/// drawn uniformly without this.)
fn draw_weight(weight: u16) -> u64 {
    match weight {
        0 => 1,
        weight => u64::from(weight) * 1000,
    }
}

/// How much slower one instance must answer than the other before response times count.
const SLOWER: f64 = 4.0;

/// Whether `a` is no more loaded than `b`. Instances that answer within a factor of
/// [`SLOWER`] of each other compare by calls in flight per unit of weight (ties: the weighted
/// draw decides, so SRV weights hold); beyond it, the one that answers faster wins, however
/// busy: its response times already include the wait behind its calls in flight, and would
/// come within the factor if it became the slower. (Weighing response times by calls in flight
/// too, as Finagle does, counts that wait twice: a busy fast instance then loses to an idle
/// one ten times slower, and the slow one's answers set the tail latency.) Response times
/// alone, at any factor, would let noise override weights: on a busy machine equal instances
/// differ by tens of percent from one moment to the next.
///
/// An avoided instance's response time decays while it gets no calls, so it is tried again
/// within a second or two, and back in favour if it answers quickly.
fn less_loaded(a: &Instance, b: &Instance) -> bool {
    let now = super::latency::now_nanos();
    let (rtt_a, rtt_b) = (a.latency_nanos_at(now), b.latency_nanos_at(now));
    if rtt_a <= rtt_b * SLOWER && rtt_b <= rtt_a * SLOWER {
        a.in_flight_per_weight() <= b.in_flight_per_weight()
    } else {
        rtt_a < rtt_b
    }
}

#[cfg(test)]
mod test {
    use tonic::transport::Endpoint;

    use super::*;

    fn ready_instance(key: &str, priority: u16, weight: u16) -> Arc<Instance> {
        let instance = Instance::new(
            key.into(),
            Endpoint::from_static("http://127.0.0.1:1"),
            Placement { priority, weight },
        );
        let lazy = Endpoint::from_static("http://127.0.0.1:1").connect_lazy();
        instance.connected(crate::balance::connection::Connection::Tonic(lazy));
        Arc::new(instance)
    }

    fn counts(ready: &Ready, draws: usize) -> std::collections::HashMap<String, usize> {
        let mut counts = std::collections::HashMap::new();
        for _ in 0..draws {
            *counts.entry(ready.pick().unwrap().key.clone()).or_default() += 1;
        }
        counts
    }

    #[tokio::test]
    async fn a_key_goes_to_one_instance_and_to_the_next_in_rank_when_that_one_was_tried() {
        let all: Vec<Arc<Instance>> = (1..=3)
            .map(|i| ready_instance(&format!("10.0.0.{i}:80"), 0, 1))
            .collect();
        let ready = Ready::build(&all);
        let mut owners = std::collections::HashSet::new();
        for key in 0..300u64 {
            let key = crate::keys::hash(key.to_string().as_bytes());
            let first = ready.pick_for_key(key, &[]).unwrap().clone();
            for _ in 0..3 {
                assert!(Arc::ptr_eq(ready.pick_for_key(key, &[]).unwrap(), &first));
            }
            owners.insert(first.key.clone());
            // A retry avoids the instance tried, and keeps to the next in rank.
            let second = ready
                .pick_for_key(key, std::slice::from_ref(&first))
                .unwrap()
                .clone();
            assert!(!Arc::ptr_eq(&first, &second));
            let without_first: Vec<Arc<Instance>> = all
                .iter()
                .filter(|i| !Arc::ptr_eq(i, &first))
                .cloned()
                .collect();
            let rebuilt = Ready::build(&without_first);
            assert!(Arc::ptr_eq(
                rebuilt.pick_for_key(key, &[]).unwrap(),
                &second
            ));
            // Every instance tried: one is picked all the same.
            assert!(ready.pick_for_key(key, &all).is_some());
        }
        assert_eq!(owners.len(), 3, "keys spread over every instance");
    }

    #[tokio::test]
    async fn building_never_panics_while_instances_change_state_and_priority() {
        let instance = ready_instance("flapping", 0, 1);
        let channel = Endpoint::from_static("http://127.0.0.1:1").connect_lazy();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flipper = {
            let (instance, stop) = (instance.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut turn = 0u16;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    instance.report_failure("flap".into());
                    instance.connected(crate::balance::connection::Connection::Tonic(
                        channel.clone(),
                    ));
                    instance.set_placement(Placement {
                        priority: turn % 2,
                        weight: 1,
                    });
                    turn = turn.wrapping_add(1);
                }
            })
        };
        let all = [instance];
        for _ in 0..200_000 {
            assert!(Ready::build(&all).len() <= 1);
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        flipper.join().expect("the flipping thread");
    }

    #[tokio::test]
    async fn the_less_loaded_of_two_wins() {
        let instances = [ready_instance("busy", 0, 1), ready_instance("idle", 0, 1)];
        let _busy = [instances[0].start_call(), instances[0].start_call()];
        let ready = Ready::build(&instances);
        // With two instances both are always drawn: the idle one wins every time.
        assert_eq!(counts(&ready, 100)["idle"], 100);
    }

    #[tokio::test]
    async fn weights_skew_the_draws() {
        let instances = [ready_instance("light", 0, 1), ready_instance("heavy", 0, 3)];
        let ready = Ready::build(&instances);
        let counts = counts(&ready, 40_000);
        // Idle instances that answer alike tie, so the first draw decides: 3 in 4 for the
        // heavy one.
        let heavy = counts["heavy"] as f64 / 40_000.0;
        assert!((0.72..0.78).contains(&heavy), "{counts:?}");
    }

    #[tokio::test]
    async fn a_slow_instance_loses_even_when_idle() {
        let instances = [ready_instance("slow", 0, 1), ready_instance("fast", 0, 1)];
        instances[0].observe_latency(std::time::Duration::from_millis(20));
        instances[1].observe_latency(std::time::Duration::from_micros(200));
        // Three calls on the fast one still cost less than none on the slow one.
        let _calls = [
            instances[1].start_call(),
            instances[1].start_call(),
            instances[1].start_call(),
        ];
        let ready = Ready::build(&instances);
        assert_eq!(counts(&ready, 100)["fast"], 100);
    }

    #[tokio::test]
    async fn a_busy_instance_beats_an_idle_one_ten_times_slower() {
        let instances = [ready_instance("slow", 0, 1), ready_instance("busy", 0, 1)];
        // Response times measured under load: the busy one's include its queue.
        instances[0].observe_latency(std::time::Duration::from_micros(7_000));
        instances[1].observe_latency(std::time::Duration::from_micros(700));
        let _calls: Vec<_> = (0..40).map(|_| instances[1].start_call()).collect();
        let ready = Ready::build(&instances);
        assert_eq!(counts(&ready, 100)["busy"], 100);
    }

    #[tokio::test]
    async fn an_instance_of_weight_0_is_picked_rarely_beside_weighted_ones() {
        let instances = [
            ready_instance("drained", 0, 0),
            ready_instance("weighted", 0, 1),
        ];
        let ready = Ready::build(&instances);
        let counts = counts(&ready, 10_000);
        let drained = counts.get("drained").copied().unwrap_or(0);
        assert!(drained < 50, "{counts:?}");
        // Alone (or beside other instances of weight 0), it is picked as any other.
        let alone = [ready_instance("a", 0, 0), ready_instance("b", 0, 0)];
        let counts = self::counts(&Ready::build(&alone), 1_000);
        assert!(counts["a"] > 300 && counts["b"] > 300, "{counts:?}");
    }

    #[tokio::test]
    async fn load_is_compared_per_unit_of_weight() {
        let instances = [ready_instance("light", 0, 1), ready_instance("heavy", 0, 4)];
        // 3 calls on a weight of 4 is less loaded than 1 call on a weight of 1.
        let _calls = [
            instances[1].start_call(),
            instances[1].start_call(),
            instances[1].start_call(),
            instances[0].start_call(),
        ];
        let ready = Ready::build(&instances);
        assert_eq!(counts(&ready, 100)["heavy"], 100);
    }

    #[tokio::test]
    async fn only_the_lowest_ready_priority_is_used() {
        let backup = ready_instance("backup", 20, 1);
        let primary = ready_instance("primary", 10, 1);
        let ready = Ready::build(&[backup.clone(), primary.clone()]);
        assert_eq!(counts(&ready, 50)["primary"], 50);

        primary.report_failure("gone".into());
        let ready = Ready::build(&[backup, primary]);
        assert_eq!(counts(&ready, 50)["backup"], 50);
    }
}
