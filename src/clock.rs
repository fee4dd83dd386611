//! Two clocks, never confused.
//!
//! - **outpost's clock** ([`mono_ms`]) measures time outpost saw pass: the
//!   kernel's monotonic clock, resumed across restarts from the value the
//!   outbox saved ([`resume`]). Every age and duration comes from it:
//!   `store.max_age`, the oldest queued reading, uptime, backoffs, waits. A
//!   wall-clock step of any size, either way, does not move it. Time the
//!   process was not running is not counted (a reading does not age while
//!   outpost is down, and nothing can measure that time without a trusted
//!   clock).
//! - **the wall clock** ([`Now::wall`]) gives timestamps, and is only as
//!   good as the system clock. It is *trusted* when the kernel says it is
//!   synchronized (`adjtimex`: systemd-timesyncd, chrony and ntpd all clear
//!   `STA_UNSYNC`) or when the synchronization flag file exists
//!   (systemd-timesyncd's `/run/systemd/timesync/synchronized`, or
//!   `[clock] synchronized_file`), and never while it reads earlier than
//!   the day this binary was built.
//!
//! A stamp taken from an untrusted wall clock is *provisional*: it keeps the
//! offset between the two clocks at that moment, and once the wall clock is
//! trusted it is corrected by how far that offset moved (the step NTP
//! made), before the reading leaves (see `store`).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

include!(concat!(env!("OUT_DIR"), "/build_ms.rs"));

/// Where systemd-timesyncd says "synchronized" (it creates the file then).
pub const TIMESYNCD_FLAG: &str = "/run/systemd/timesync/synchronized";

/// How often the synchronization state is read again.
const RECHECK: Duration = Duration::from_secs(1);

/// The moment outpost's clock counts from in this process.
fn start() -> Instant {
    static START: OnceLock<Instant> = OnceLock::new();
    *START.get_or_init(Instant::now)
}

/// outpost's clock at [`start`]: raised by [`resume`], never lowered.
static BASE: AtomicI64 = AtomicI64::new(0);

/// outpost's clock, ms: time outpost saw pass, across restarts.
pub fn mono_ms() -> i64 {
    let since = i64::try_from(start().elapsed().as_millis()).unwrap_or(i64::MAX);
    BASE.load(Ordering::Relaxed).saturating_add(since)
}

/// Resumes outpost's clock from a value saved by an earlier run: from now
/// on [`mono_ms`] reads at least `saved`. It never goes back.
pub fn resume(saved: i64) {
    let since = i64::try_from(start().elapsed().as_millis()).unwrap_or(i64::MAX);
    BASE.fetch_max(saved.saturating_sub(since), Ordering::Relaxed);
}

/// outpost's clock when this process's run began: provisional stamps from
/// before it were taken in an earlier run, and the time outpost was down
/// between is unknown.
pub fn run_began_ms() -> i64 {
    BASE.load(Ordering::Relaxed)
}

/// The wall clock, ms since the epoch.
pub fn wall_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Both clocks at one moment, and whether the wall clock is trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    pub wall: i64,
    pub mono: i64,
    pub trusted: bool,
}

impl Now {
    /// The wall clock minus outpost's clock: what a provisional stamp
    /// keeps, and what moves by exactly the size of a step.
    pub fn offset(&self) -> i64 {
        self.wall.saturating_sub(self.mono)
    }
}

/// Both clocks now.
pub fn now() -> Now {
    let mono = mono_ms();
    let wall = wall_ms();
    Now {
        wall,
        mono,
        trusted: trusted(wall),
    }
}

/// Why the wall clock is or is not trusted, for status and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sync {
    /// The kernel says the clock is synchronized.
    Kernel,
    /// The synchronization flag file exists.
    Flag,
    /// Nothing says the clock is synchronized.
    Unsynchronized,
    /// It reads earlier than the day outpost was built.
    BeforeBuild,
}

impl Sync {
    pub fn trusted(self) -> bool {
        matches!(self, Sync::Kernel | Sync::Flag)
    }

    pub fn describe(self) -> &'static str {
        match self {
            Sync::Kernel => "synchronized (kernel)",
            Sync::Flag => "synchronized (flag file)",
            Sync::Unsynchronized => {
                "NOT synchronized: stamps are provisional until NTP sets the clock"
            }
            Sync::BeforeBuild => {
                "NOT synchronized: it reads earlier than the day outpost was built"
            }
        }
    }
}

/// The flag file to look for besides the kernel's state.
fn flag() -> &'static Mutex<PathBuf> {
    static FLAG: OnceLock<Mutex<PathBuf>> = OnceLock::new();
    FLAG.get_or_init(|| Mutex::new(PathBuf::from(TIMESYNCD_FLAG)))
}

/// Sets the synchronization flag file (`[clock] synchronized_file`).
pub fn set_flag_file(path: PathBuf) {
    match flag().lock() {
        Ok(mut f) => *f = path,
        Err(p) => *p.into_inner() = path,
    }
    CHECKED.store(i64::MIN, Ordering::Relaxed);
}

/// outpost's clock when [`SYNCED`] was read (`i64::MIN`: never).
static CHECKED: AtomicI64 = AtomicI64::new(i64::MIN);
static SYNCED: AtomicI64 = AtomicI64::new(0);

fn code(s: Sync) -> i64 {
    match s {
        Sync::Kernel => 1,
        Sync::Flag => 2,
        Sync::Unsynchronized => 0,
        Sync::BeforeBuild => 3,
    }
}

fn of_code(c: i64) -> Sync {
    match c {
        1 => Sync::Kernel,
        2 => Sync::Flag,
        _ => Sync::Unsynchronized,
    }
}

/// The synchronization state, read at most once a second.
pub fn sync_state() -> Sync {
    let wall = wall_ms();
    if wall < BUILD_MS {
        return Sync::BeforeBuild;
    }
    let mono = mono_ms();
    let checked = CHECKED.load(Ordering::Relaxed);
    let fresh = checked != i64::MIN
        && mono.saturating_sub(checked) < i64::try_from(RECHECK.as_millis()).unwrap_or(1000);
    if fresh {
        return of_code(SYNCED.load(Ordering::Relaxed));
    }
    let state = read_sync();
    SYNCED.store(code(state), Ordering::Relaxed);
    CHECKED.store(mono, Ordering::Relaxed);
    note_change(state);
    state
}

fn trusted(wall: i64) -> bool {
    wall >= BUILD_MS && sync_state().trusted()
}

fn read_sync() -> Sync {
    if kernel_synchronized() {
        return Sync::Kernel;
    }
    let path = match flag().lock() {
        Ok(f) => f.clone(),
        Err(p) => p.into_inner().clone(),
    };
    if path.exists() {
        Sync::Flag
    } else {
        Sync::Unsynchronized
    }
}

/// The kernel's view (`adjtimex`, read only): synchronized unless it says
/// `TIME_ERROR` or `STA_UNSYNC`.
fn kernel_synchronized() -> bool {
    // SAFETY: a zeroed `timex` with `modes = 0` only reads the kernel's
    // state into the struct we own.
    let (state, status) = unsafe {
        let mut t: libc::timex = std::mem::zeroed();
        let state = libc::adjtimex(&mut t);
        (state, t.status)
    };
    state >= 0 && state != libc::TIME_ERROR && status & libc::STA_UNSYNC == 0
}

/// Logs the moment the wall clock becomes trusted or stops being so.
fn note_change(state: Sync) {
    static WAS: AtomicBool = AtomicBool::new(false);
    static SAID: AtomicBool = AtomicBool::new(false);
    let now = state.trusted();
    let first = !SAID.swap(true, Ordering::Relaxed);
    if WAS.swap(now, Ordering::Relaxed) != now || first {
        if now {
            tracing::info!(
                clock = state.describe(),
                "the system clock is {}",
                state.describe()
            );
        } else {
            tracing::warn!(
                clock = state.describe(),
                "the system clock is {}",
                state.describe()
            );
        }
    }
}

/// A provisional stamp `ts`, taken when the clocks' offset was `offset`,
/// corrected to the wall clock of `now` (which must be trusted): the step
/// the wall clock made since is added.
pub fn correct(ts: i64, offset: i64, now: &Now) -> i64 {
    ts.saturating_add(now.offset().saturating_sub(offset))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_build_date_is_a_recent_time() {
        // 2026-01-01 .. 2100-01-01
        let built = BUILD_MS;
        assert!(built > 1_767_225_600_000 && built < 4_102_444_800_000);
    }

    #[test]
    fn outpost_clock_resumes_but_never_goes_back() {
        // Small steps: the clock is the process's, other tests read it.
        let a = mono_ms();
        resume(a.saturating_add(20));
        let b = mono_ms();
        assert!(b >= a + 20, "{a} {b}");
        resume(0);
        assert!(mono_ms() >= b);
    }

    #[test]
    fn a_provisional_stamp_moves_by_the_step_the_wall_clock_made() {
        // Stamped at 2025-01-01 while outpost's clock read 10 s.
        let stamped = Now {
            wall: 1_735_689_600_000,
            mono: 10_000,
            trusted: false,
        };
        // NTP stepped the clock: 60 s of outpost's clock later it reads
        // 2026-12-07 12:00:00.
        let later = Now {
            wall: 1_796_644_800_000,
            mono: 70_000,
            trusted: true,
        };
        let fixed = correct(stamped.wall, stamped.offset(), &later);
        assert_eq!(fixed, later.wall - 60_000);
        // Two stamps 1 ms apart stay 1 ms apart.
        assert_eq!(
            correct(stamped.wall + 1, stamped.offset(), &later),
            fixed + 1
        );
    }
}
