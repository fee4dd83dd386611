//! Pacing publishes to a platform's rate windows. Sending faster gets a
//! device disconnected, so the session asks before every publish and
//! waits when a window is full; the records stay in the outbox meanwhile.
//!
//! A [`Budget`] is a set of meters, each a list of `N:seconds` limits over
//! weighted events, each limit a token bucket as ThingsBoard's own
//! (`TbRateLimits`) so that outpost sends what the server admits, no more
//! and, after a burst, not much less: messages (every publish counts 1), telemetry messages
//! (telemetry publishes count 1) and telemetry data points (a telemetry
//! publish counts its key-values), for the session and, on a gateway
//! connection, for each child device a publish speaks for (ThingsBoard's
//! `rateLimits` apply per device, `gatewayRateLimits` to the gateway's own
//! session). A publish goes when every meter it touches has room for it.

use std::time::Duration;

use tokio::time::Instant;

use crate::recent::Recent;
use crate::units::RateSpec;

/// Children with a meter of their own at most (the least recent go).
const MAX_CHILD_METERS: usize = 2_000;

/// What one publish costs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cost {
    /// A telemetry publish (counts against the telemetry meters).
    pub telemetry: bool,
    /// Telemetry data points (key-values) it carries.
    pub points: u64,
    /// Gateway mode: (child, its data points) for each child it speaks for.
    pub children: Vec<(String, u64)>,
}

impl Cost {
    /// A plain message: 1 against the message windows, nothing else.
    pub fn message() -> Cost {
        Cost::default()
    }
}

/// Windows of one kind of limit (`N:seconds`, all at once).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Limits {
    pub messages: RateSpec,
    pub telemetry_messages: RateSpec,
    pub telemetry_points: RateSpec,
}

impl Limits {
    /// Only a message rate (a platform that knows nothing else).
    pub fn messages(spec: &RateSpec) -> Limits {
        Limits {
            messages: spec.clone(),
            ..Limits::default()
        }
    }

    fn is_limited(&self) -> bool {
        self.messages.is_limited()
            || self.telemetry_messages.is_limited()
            || self.telemetry_points.is_limited()
    }

    /// The fewest data points one message may carry under these windows.
    pub fn max_points(&self) -> Option<u64> {
        self.telemetry_points
            .windows
            .iter()
            .map(|(n, _)| *n as u64)
            .min()
    }
}

/// What a platform says it allows: for the session, and per child device.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BudgetSpec {
    pub session: Limits,
    pub child: Option<Limits>,
}

impl BudgetSpec {
    pub fn messages(spec: &RateSpec) -> BudgetSpec {
        BudgetSpec {
            session: Limits::messages(spec),
            child: None,
        }
    }
}

/// Of ThingsBoard's refill rate, what outpost counts on: a little less,
/// so messages that reach the server bunched (network jitter) still find
/// tokens there.
const REFILL_SHARE: f64 = 0.95;

/// One `N:seconds` limit as ThingsBoard enforces it (`TbRateLimits`: a
/// bucket4j bandwidth of capacity N with `refillGreedy(N, seconds)`): a
/// bucket that starts full and refills continuously, N every `seconds`.
/// A burst may use the whole bucket; after it, messages go at the refill
/// rate, never held back for a whole window.
#[derive(Debug, Clone)]
struct Bucket {
    /// The platform's capacity, and the one in force (halved by
    /// [`Budget::tighten`]).
    full: u64,
    capacity: u64,
    len: Duration,
    /// For status: `telemetryDataPoints 200:1`.
    name: String,
    /// Tokens now (below zero after a forced oversize message).
    tokens: f64,
    /// When `tokens` was last brought up to date (`None`: never used, full).
    at: Option<Instant>,
}

impl Bucket {
    /// Tokens per second outpost counts on.
    fn rate(&self) -> f64 {
        self.capacity as f64 / self.len.as_secs_f64().max(1e-3) * REFILL_SHARE
    }

    fn refill(&mut self, now: Instant) {
        let cap = self.capacity as f64;
        match self.at {
            None => self.tokens = cap,
            Some(at) => {
                let secs = now.saturating_duration_since(at).as_secs_f64();
                self.tokens = (self.tokens + secs * self.rate()).min(cap);
            }
        }
        self.at = Some(now);
    }

    /// When `cost` tokens are there (`None`: now). A cost above the
    /// capacity waits for a full bucket (the platform's admission refuses
    /// such readings before they are stored, so this is a last resort).
    fn next_allowed(&mut self, now: Instant, cost: u64) -> Option<Instant> {
        self.refill(now);
        let cost = cost.min(self.capacity) as f64;
        if self.tokens >= cost {
            return None;
        }
        // At least a millisecond: rounding never makes a wait of nothing.
        let wait = ((cost - self.tokens) / self.rate().max(1e-9)).clamp(1e-3, 1e9);
        Some(
            now.checked_add(Duration::from_secs_f64(wait))
                .unwrap_or(now),
        )
    }

    fn record(&mut self, now: Instant, cost: u64) {
        self.refill(now);
        self.tokens -= cost as f64;
    }

    /// Tokens used and not refilled yet.
    fn spent(&self) -> f64 {
        if self.at.is_none() {
            0.0
        } else {
            (self.capacity as f64 - self.tokens).max(0.0)
        }
    }
}

/// The buckets of one kind of event (messages, telemetry messages, data
/// points), all of which a publish must find room in.
#[derive(Debug, Clone, Default)]
struct Meter {
    buckets: Vec<Bucket>,
}

impl Meter {
    fn new(spec: &RateSpec, kind: &str) -> Meter {
        Meter {
            buckets: spec
                .windows
                .iter()
                .map(|(n, d)| Bucket {
                    full: *n as u64,
                    capacity: *n as u64,
                    len: *d,
                    name: format!("{kind} {n}:{}", d.as_secs()),
                    tokens: *n as f64,
                    at: None,
                })
                .collect(),
        }
    }

    fn set_shift(&mut self, shift: u32) {
        for b in &mut self.buckets {
            b.capacity = b.full.checked_shr(shift).unwrap_or(0).max(1);
            b.tokens = b.tokens.min(b.capacity as f64);
        }
    }

    /// When `cost` more fits in every bucket (`None`: now), and the bucket
    /// that holds it back.
    fn next_allowed(&mut self, now: Instant, cost: u64) -> Option<(Instant, &str)> {
        let mut worst: Option<(Instant, usize)> = None;
        for (i, b) in self.buckets.iter_mut().enumerate() {
            if let Some(at) = b.next_allowed(now, cost) {
                if worst.map_or(true, |(w, _)| at > w) {
                    worst = Some((at, i));
                }
            }
        }
        let (at, i) = worst?;
        self.buckets.get(i).map(|b| (at, b.name.as_str()))
    }

    /// New limits (a platform's answer, early in a session) count what
    /// was sent so far: the server's buckets were the new limits all along.
    fn take_events(&mut self, old: Meter) {
        let spent = old.buckets.iter().map(Bucket::spent).fold(0.0f64, f64::max);
        let now = old.buckets.iter().filter_map(|b| b.at).max();
        for b in &mut self.buckets {
            if let Some(now) = now {
                b.tokens = b.capacity as f64 - spent;
                b.at = Some(now);
            }
        }
    }

    fn record(&mut self, now: Instant, cost: u64) {
        if cost == 0 {
            return;
        }
        for b in &mut self.buckets {
            b.record(now, cost);
        }
    }
}

/// The three meters of one scope.
#[derive(Debug, Clone, Default)]
struct Meters {
    messages: Meter,
    telemetry: Meter,
    points: Meter,
}

impl Meters {
    fn new(l: &Limits) -> Meters {
        Meters {
            messages: Meter::new(&l.messages, "messages"),
            telemetry: Meter::new(&l.telemetry_messages, "telemetryMessages"),
            points: Meter::new(&l.telemetry_points, "telemetryDataPoints"),
        }
    }

    fn shifted(l: &Limits, shift: u32) -> Meters {
        let mut m = Meters::new(l);
        m.messages.set_shift(shift);
        m.telemetry.set_shift(shift);
        m.points.set_shift(shift);
        m
    }

    /// When a message of `points` (telemetry or not) fits; and what holds it.
    fn next_allowed(
        &mut self,
        now: Instant,
        telemetry: bool,
        points: u64,
    ) -> Option<(Instant, String)> {
        let mut worst: Option<(Instant, String)> = None;
        let mut consider = |x: Option<(Instant, &str)>| {
            if let Some((at, why)) = x {
                if worst.as_ref().map_or(true, |(w, _)| at > *w) {
                    worst = Some((at, why.to_string()));
                }
            }
        };
        consider(self.messages.next_allowed(now, 1));
        if telemetry {
            consider(self.telemetry.next_allowed(now, 1));
            consider(self.points.next_allowed(now, points));
        }
        worst
    }

    fn record(&mut self, now: Instant, telemetry: bool, points: u64) {
        self.messages.record(now, 1);
        if telemetry {
            self.telemetry.record(now, 1);
            self.points.record(now, points);
        }
    }
}

/// Why the next publish waits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub until: Instant,
    /// The window, e.g. `telemetryDataPoints 200:1`, with the child it is
    /// for if it is a child's.
    pub by: String,
}

#[derive(Debug, Clone)]
pub struct Budget {
    spec: BudgetSpec,
    session: Meters,
    children: Recent<Meters>,
    /// Every capacity is divided by 2^shift: the platform hung up while
    /// the budget held outpost back, so its count of what was sent is
    /// higher than ours (see [`Budget::tighten`]).
    shift: u32,
    /// PUBACKs since the last hang-up, toward relaxing one step.
    calm: u32,
}

/// Halvings of the budget at most.
pub const MAX_SHIFT: u32 = 3;

/// PUBACKs without a hang-up before a halving is undone.
const CALM_ACKS: u32 = 500;

impl Default for Budget {
    fn default() -> Budget {
        Budget::none()
    }
}

impl Budget {
    /// No limit.
    pub fn none() -> Budget {
        Budget::new(BudgetSpec::default())
    }

    pub fn new(spec: BudgetSpec) -> Budget {
        Budget {
            session: Meters::new(&spec.session),
            children: Recent::new(MAX_CHILD_METERS),
            spec,
            shift: 0,
            calm: 0,
        }
    }

    /// Halves every capacity, after the platform hung up while this budget
    /// held outpost back; false once it is at its smallest (the hang-up is
    /// then not the limit's doing).
    pub fn tighten(&mut self) -> bool {
        self.calm = 0;
        if !self.is_limited() || self.shift >= MAX_SHIFT {
            return false;
        }
        self.shift = self.shift.saturating_add(1);
        self.apply_shift();
        true
    }

    /// A PUBACK: after enough of them, one halving is undone.
    pub fn acked(&mut self) {
        if self.shift == 0 {
            return;
        }
        self.calm = self.calm.saturating_add(1);
        if self.calm >= CALM_ACKS {
            self.calm = 0;
            self.shift = self.shift.saturating_sub(1);
            self.apply_shift();
        }
    }

    /// How many halvings are in force.
    pub fn shift(&self) -> u32 {
        self.shift
    }

    fn apply_shift(&mut self) {
        let shift = self.shift;
        for m in [
            &mut self.session.messages,
            &mut self.session.telemetry,
            &mut self.session.points,
        ] {
            m.set_shift(shift);
        }
        // Children's meters pick the shift up when they are made again.
        self.children = Recent::new(MAX_CHILD_METERS);
    }

    pub fn spec(&self) -> &BudgetSpec {
        &self.spec
    }

    pub fn is_limited(&self) -> bool {
        self.spec.session.is_limited() || self.spec.child.as_ref().is_some_and(Limits::is_limited)
    }

    /// When `cost` may go: `None` means now.
    pub fn next_allowed(&mut self, now: Instant, cost: &Cost) -> Option<Held> {
        let mut worst = self
            .session
            .next_allowed(now, cost.telemetry, cost.points)
            .map(|(until, by)| Held { until, by });
        if let Some(limits) = &self.spec.child {
            for (child, points) in &cost.children {
                let shift = self.shift;
                let meters = self
                    .children
                    .entry(child, || Meters::shifted(limits, shift));
                if let Some((until, by)) = meters.next_allowed(now, cost.telemetry, *points) {
                    if worst.as_ref().map_or(true, |w| until > w.until) {
                        let child: String = child.chars().take(64).collect();
                        worst = Some(Held {
                            until,
                            by: format!("{by} of child {child}"),
                        });
                    }
                }
            }
        }
        worst
    }

    /// Keeps what `old` counted for the session: new windows (a platform's
    /// answer) over the same history. Children start afresh: they are
    /// met again within one publish.
    pub fn inherit(&mut self, old: Budget) {
        self.shift = old.shift;
        self.calm = old.calm;
        self.apply_shift();
        self.session.messages.take_events(old.session.messages);
        self.session.telemetry.take_events(old.session.telemetry);
        self.session.points.take_events(old.session.points);
    }

    /// `cost` was sent at `now`.
    pub fn record(&mut self, now: Instant, cost: &Cost) {
        if !self.is_limited() {
            return;
        }
        self.session.record(now, cost.telemetry, cost.points);
        if let Some(limits) = &self.spec.child {
            for (child, points) in &cost.children {
                self.children.entry(child, || Meters::new(limits)).record(
                    now,
                    cost.telemetry,
                    *points,
                );
            }
        }
    }

    /// Records a second the session's windows let through in the long
    /// run, for a backlog of records that each carry `points` data points
    /// and go `per_message` to a publish (the strictest window decides).
    pub fn records_per_second(&self, per_message: f64, points: f64) -> Option<f64> {
        let rate = |spec: &RateSpec, per_unit: f64| {
            spec.windows
                .iter()
                .map(|(n, d)| *n as f64 / d.as_secs_f64().max(1e-3) * per_unit)
                .fold(None, |m: Option<f64>, r| Some(m.map_or(r, |m| m.min(r))))
        };
        let l = &self.spec.session;
        [
            rate(&l.messages, per_message),
            rate(&l.telemetry_messages, per_message),
            rate(&l.telemetry_points, 1.0 / points.max(1.0)),
        ]
        .into_iter()
        .flatten()
        .fold(None, |m: Option<f64>, r| Some(m.map_or(r, |m| m.min(r))))
    }
}

impl<E: crate::sink::Platform> super::Uplink<E> {
    /// Says in the sink's counters whether (and by which window) the rate
    /// limit holds the next publish back.
    pub(super) fn note_held(&self, held: Option<&Held>) {
        use std::sync::atomic::Ordering;
        let until = held.map_or(0, |h| {
            let wait = h.until.saturating_duration_since(Instant::now());
            crate::clock::mono_ms()
                .saturating_add(i64::try_from(wait.as_millis()).unwrap_or(i64::MAX))
                .max(1)
        });
        let was = self.stats.held_until_ms.swap(until, Ordering::Relaxed);
        if (was == 0) != (until == 0) || held.is_some() {
            if let Ok(mut by) = self.stats.held_by.lock() {
                *by = held.map(|h| h.by.clone());
            }
        }
    }

    /// Keeps the moving averages the drain estimate uses.
    pub(super) fn note_shape(&mut self, records: usize, cost: &Cost) {
        if !cost.telemetry || records == 0 {
            return;
        }
        let records = records as f64;
        let points = cost.points as f64 / records;
        self.shape.0 = self.shape.0 * 0.9 + records * 0.1;
        self.shape.1 = self.shape.1 * 0.9 + points * 0.1;
        let rate = self
            .rate
            .records_per_second(self.shape.0, self.shape.1)
            .unwrap_or(0.0);
        self.stats
            .budget_rate_bits
            .store(rate.to_bits(), std::sync::atomic::Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests;
