// SPDX-License-Identifier: GPL-2.0

//! Deflate on OOM (`DEFLATE_ON_OOM`), and when the balloon may grow again.
//!
//! As in the C driver, each call of the OOM notifier deflates up to 256 balloon pages (1 MiB),
//! telling the host first, writes `actual`, and reports the freed pages so that the OOM killer
//! stands down.
//!
//! Beyond the C driver, the balloon does not fight the guest. The C driver's size work
//! re-inflates towards the host's unchanged target right after an OOM deflate, which makes the
//! next allocation hit OOM again: the two ping-pong and the guest stops answering. Here the
//! size work may inflate only when both hold:
//!
//! 1. MemAvailable is above the reserve the balloon leaves the guest (see `size.rs`); while it
//!    is not, the size work retries after a back-off that doubles from 200 ms to 10 s, and
//!    starts again at 200 ms once it could inflate;
//! 2. no OOM deflate happened for a hold time. An OOM episode is a run of OOM deflates less
//!    than a second apart; the hold runs from its last deflate. It starts at 5 s and doubles,
//!    up to 5 min, for each new episode that starts within two hold times of the previous one
//!    (OOM keeps firing); an episode after a quiet spell starts again at 5 s.

use super::{Balloon, RateLimit, MESSAGE_INTERVAL, PAGES_PER_PAGE};
use core::cmp::min;
use kernel::{
    bindings, new_mutex, new_spinlock, oom,
    prelude::*,
    sync::{Mutex, SpinLock},
    time::{Delta, Instant, Monotonic},
};

/// The C driver's notifier priority.
pub(super) const NOTIFY_PRIORITY: i32 = 80;
/// 4 KiB pages deflated per OOM notification (1 MiB), as in the C driver.
const OOM_NR_PAGES: u64 = 256;

const EPISODE_GAP: Delta = Delta::from_secs(1);
const HOLD_MIN: Delta = Delta::from_secs(5);
const HOLD_MAX: Delta = Delta::from_secs(300);
const FLOOR_BACKOFF_MIN: Delta = Delta::from_millis(200);
const FLOOR_BACKOFF_MAX: Delta = Delta::from_secs(10);

fn double(d: Delta, max: Delta) -> Delta {
    min(Delta::from_millis(d.as_millis().saturating_mul(2)), max)
}

struct State {
    /// The last OOM deflate, if any.
    last_oom: Option<Instant<Monotonic>>,
    /// The current episode's hold time.
    hold: Delta,
    /// Pages deflated on OOM since the last message.
    unreported: u64,
    /// The next retry delay while the reserve blocks inflation.
    floor_backoff: Delta,
}

/// What an OOM deflate leaves behind, for its message.
struct OomDeflated {
    /// How long the balloon now waits before it inflates again.
    hold: Delta,
    /// Pages deflated on OOM since the last message, these included.
    unreported: u64,
}

/// When the balloon may grow again.
#[pin_data]
pub(super) struct Pressure {
    #[pin]
    state: SpinLock<State>,
    #[pin]
    msg: Mutex<RateLimit>,
}

impl Pressure {
    pub(super) fn new() -> impl PinInit<Self> {
        pin_init!(Pressure {
            state <- new_spinlock!(State {
                last_oom: None,
                hold: HOLD_MIN,
                unreported: 0,
                floor_backoff: FLOOR_BACKOFF_MIN,
            }),
            msg <- new_mutex!(RateLimit::new()),
        })
    }

    /// How long the balloon must still wait after OOM, if at all.
    fn held(&self) -> Option<Delta> {
        let s = self.state.lock();
        let left = s.hold - (Instant::<Monotonic>::now() - s.last_oom?);
        (!left.is_negative() && !left.is_zero()).then_some(left)
    }

    /// The reserve blocks inflation: the delay before the next try, which doubles each time.
    pub(super) fn floor_backoff(&self) -> Delta {
        let mut s = self.state.lock();
        let wait = s.floor_backoff;
        s.floor_backoff = double(wait, FLOOR_BACKOFF_MAX);
        wait
    }

    /// The balloon could inflate: the next block starts the back-off afresh.
    pub(super) fn inflated(&self) {
        self.state.lock().floor_backoff = FLOOR_BACKOFF_MIN;
    }

    /// `pages` were deflated on OOM now; returns the hold that follows and the pages deflated
    /// since the last message.
    fn oom_deflated(&self, pages: u64) -> OomDeflated {
        let now = Instant::<Monotonic>::now();
        let mut s = self.state.lock();
        if let Some(last) = s.last_oom {
            let since = now - last;
            if since >= EPISODE_GAP {
                // A new episode: OOM keeps firing if it came within two holds of the last.
                s.hold = if since < s.hold + s.hold {
                    double(s.hold, HOLD_MAX)
                } else {
                    HOLD_MIN
                };
            }
        }
        s.last_oom = Some(now);
        s.unreported += pages;
        OomDeflated {
            hold: s.hold,
            unreported: s.unreported,
        }
    }

    fn reported(&self) {
        self.state.lock().unreported = 0;
    }
}

impl Balloon {
    /// `Ok(room)`, in 4 KiB pages, when the size work may inflate (by `want` pages) now;
    /// `Err(wait)` otherwise.
    pub(super) fn inflate_allowed(&self, want: u64) -> Result<u64, Delta> {
        if let Some(wait) = self.pressure.held() {
            return Err(wait);
        }
        let room = self.room();
        if room < u64::from(PAGES_PER_PAGE) {
            self.out_of_puff(want, true);
            return Err(self.pressure.floor_backoff());
        }
        Ok(room)
    }
}

impl oom::OomNotify for Balloon {
    /// Process context with `oom_lock` held: `leak_now` sleeps on `balloon_lock` and the
    /// host's answer, allocates nothing, and writes `actual` if pages went back.
    fn out_of_memory(&self) -> usize {
        let freed = self.leak_now(OOM_NR_PAGES);
        if freed > 0 {
            let deflated = self.pressure.oom_deflated(u64::from(freed));
            if let Some(suppressed) = self.pressure.msg.lock().allow(MESSAGE_INTERVAL) {
                self.pressure.reported();
                dev_info!(
                    self.dev(),
                    "deflated {} KiB on OOM ({} messages suppressed); balloon now {} MiB, \
                     no re-inflate for {} s\n",
                    deflated.unreported * 4,
                    suppressed,
                    self.num_pages() >> (20 - bindings::VIRTIO_BALLOON_PFN_SHIFT),
                    deflated.hold.as_millis() / 1000
                );
            }
        }
        (freed / PAGES_PER_PAGE) as usize
    }
}
