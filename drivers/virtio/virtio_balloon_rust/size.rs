// SPDX-License-Identifier: GPL-2.0

//! Inflate and deflate towards the host's target, report `actual`, and tell the host when
//! compaction moves a ballooned page.

use super::{
    wakeup, Balloon, RateLimit, CFG_ACTUAL, CFG_NUM_PAGES, F_DEFLATE_ON_OOM, MESSAGE_INTERVAL,
    PAGES_PER_PAGE,
};
use core::{
    cmp::min,
    sync::atomic::{AtomicBool, AtomicU32, Ordering},
};
use kernel::{
    alloc::kvec::PushError,
    balloon::{self, BalloonPage},
    bindings, device, new_mutex,
    prelude::*,
    sync::{aref::ARef, Arc, Mutex},
    time::Delta,
    virtio::{self, Virtqueue, VqSet},
    vmstat, workqueue,
};

/// Most page frame numbers in one inflate or deflate message. Firecracker and Cloud
/// Hypervisor drop longer ones.
const ARRAY_PFNS_MAX: usize = 256;
/// Messages sent with one notification, and waited for together: one round trip to the
/// host moves up to `BATCH` MiB. A round trip (notification, interrupt, wakeup, and under
/// TCG the exit to QEMU) costs about as much as the host's work on a whole message, so
/// batching is what makes the balloon faster. It also sets how long the device model works
/// on the balloon in one go, which other guest processes feel when the host is short of
/// CPUs; `make bench` measured 1, 2, 4 and 8
/// (`Documentation/driver-api/virtio/virtio_balloon_rust.rst`).
/// Page migration waits behind at most the one round trip in flight, the OOM notifier behind
/// that one and its own.
const BATCH: usize = 4;
/// Page frame numbers in one round trip.
const BATCH_PFNS: usize = BATCH * ARRAY_PFNS_MAX;
/// 4 KiB pages one run of the size work moves at most before it writes `actual` and
/// queues itself again (64 MiB): the host sees progress, and suspend or unbind never wait
/// long for the work to end.
const WORK_PAGES: u64 = 16384;
/// Bytes in a balloon page.
const BALLOON_PAGE: u64 = 1 << bindings::VIRTIO_BALLOON_PFN_SHIFT;

type PfnBuf = [u32; ARRAY_PFNS_MAX];

/// The balloon leaves the guest at least this share of its memory available (1/8), but
/// never less than `RESERVE_MIN` nor more than `RESERVE_MAX`. The C driver has no such floor
/// and inflates until the guest OOM-kills its own processes.
const RESERVE_SHIFT: u32 = 3;
const RESERVE_MIN: u64 = 64 << 20;
const RESERVE_MAX: u64 = 1 << 30;

/// The message buffers of one round trip. A slot is `None` while its buffer is on a queue:
/// inside [`PfnQueues::send`], or for the round trip in flight until it is waited for;
/// waiting puts it back unless the device went away.
type Pool = [Option<KBox<PfnBuf>>; BATCH];

/// Which way a round trip moves pages.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Dir {
    Inflate,
    Deflate,
}

/// The balloon's size and the traffic that changes it, protected by `balloon_lock`: the
/// balloon size, the message buffers, and the round trip in flight.
struct SizeState {
    /// Balloon size in 4 KiB balloon pages, as reported in `actual`.
    num_pages: u32,
    /// The PFN message buffers.
    pfns: Pool,
    /// Pages taken out of the balloon for the next deflate round trip (room for one).
    moving: KVec<BalloonPage>,
    /// The round trip last queued, which the host may still be working on while the size
    /// work prepares the next. Its pages change the balloon (enter it, or go back to the
    /// guest) and `num_pages` only once the host used every message ([`Balloon::settle`]).
    trip: KVec<BalloonPage>,
    /// Which way `trip` goes.
    trip_dir: Dir,
    /// Messages of that round trip the host has not used yet.
    trip_out: usize,
    /// Frames of that round trip the host was told of (all of `trip`); 0 if the device went
    /// away before it used them.
    trip_told: usize,
}

/// The inflate and deflate queues, which tell the host the page frame numbers that enter and
/// leave the balloon, with what sending on them needs: the device's queue set and byte order,
/// and `balloon_lock` over the balloon's size and message buffers. The balloon page list owns
/// it (as its migrator), so that page migration (which tells the host too) always finds it
/// alive.
#[pin_data]
pub(super) struct PfnQueues {
    dev: ARef<virtio::Device>,
    /// Byte order of the queue payloads, fixed while bound.
    pub(super) order: virtio::ByteOrder,
    vq_set: Arc<VqSet>,
    inflate_vq: Virtqueue<PfnBuf>,
    deflate_vq: Virtqueue<PfnBuf>,
    /// Held across a whole inflate or deflate, including the wait for the host.
    #[pin]
    balloon_lock: Mutex<SizeState>,
    #[pin]
    stall_msg: Mutex<RateLimit>,
}

impl PfnQueues {
    pub(super) fn new(
        dev: &virtio::Device<device::Core<'_>>,
        vq_set: Arc<VqSet>,
        inflate_vq: Virtqueue<PfnBuf>,
        deflate_vq: Virtqueue<PfnBuf>,
    ) -> Result<impl PinInit<Self>> {
        let mut pfns: Pool = Default::default();
        for slot in pfns.iter_mut() {
            *slot = Some(KBox::new([0u32; ARRAY_PFNS_MAX], GFP_KERNEL)?);
        }
        let moving = KVec::with_capacity(BATCH_PFNS, GFP_KERNEL)?;
        let trip = KVec::with_capacity(BATCH_PFNS, GFP_KERNEL)?;
        let order = dev.byte_order();
        let dev: ARef<virtio::Device> = dev.into();
        Ok(pin_init!(PfnQueues {
            dev,
            order,
            vq_set,
            inflate_vq,
            deflate_vq,
            balloon_lock <- new_mutex!(SizeState {
                num_pages: 0,
                pfns,
                moving,
                trip,
                trip_dir: Dir::Inflate,
                trip_out: 0,
                trip_told: 0,
            }),
            stall_msg <- new_mutex!(RateLimit::new()),
        }))
    }

    /// The device, for messages.
    pub(super) fn dev(&self) -> &device::Device {
        (*self.dev).as_ref()
    }

    /// The virtio device.
    pub(super) fn vdev(&self) -> &virtio::Device {
        &self.dev
    }

    pub(super) fn has_feature(&self, bit: u32) -> bool {
        self.dev.has_feature(bit)
    }

    /// The device's queues and config space.
    pub(super) fn vq_set(&self) -> &VqSet {
        &self.vq_set
    }

    /// Writes the 4 KiB frame numbers of the guest page at `pfn` from index `n` on (message
    /// `n / 256`), in the device's byte order; returns the next index. Frame numbers are 32
    /// bits on the wire and wrap as in the C driver.
    fn put_pfns(&self, pfns: &mut Pool, mut n: usize, pfn: usize) -> usize {
        let first = (pfn as u32).wrapping_mul(PAGES_PER_PAGE);
        for i in 0..PAGES_PER_PAGE {
            let Some(Some(buf)) = pfns.get_mut(n / ARRAY_PFNS_MAX) else {
                return n;
            };
            buf[n % ARRAY_PFNS_MAX] = self.order.to_device_u32(first.wrapping_add(i));
            n += 1;
        }
        n
    }

    /// Queues the first `n` PFNs of the buffers (256 a message) on `vq` and notifies the
    /// host once. Returns how many PFNs were queued, always a prefix of the `n` (fewer if a
    /// message could not be queued), and in how many messages.
    fn submit(&self, vq: &Virtqueue<PfnBuf>, pfns: &mut Pool, n: usize) -> (usize, usize) {
        let mut told = 0;
        let mut out = 0;
        for slot in pfns.iter_mut() {
            if told == n {
                break;
            }
            let Some(buf) = slot.take() else {
                break;
            };
            let len = min(n - told, ARRAY_PFNS_MAX);
            if let Err(virtio::AddError(e, buf)) = vq.add_outbuf(buf, len * size_of::<u32>()) {
                dev_warn!(self.dev(), "cannot queue {} page frames: {:?}\n", len, e);
                *slot = Some(buf);
                break;
            }
            told += len;
            out += 1;
        }
        if out > 0 {
            vq.kick();
        }
        (told, out)
    }

    /// Waits until the host has used `out` messages on `vq` and puts their buffers back.
    /// Returns false if the device went away meanwhile: it is reset and forgets them, and
    /// the buffers still queued were freed with the queue.
    fn wait_used(&self, vq: &Virtqueue<PfnBuf>, pfns: &mut Pool, mut out: usize) -> bool {
        while out > 0 {
            // Waits as the C driver's wait_event() (uninterruptibly), but says so when the
            // host holds a message for long: until it answers, it may still act on it.
            let used = vq.wait_buf(|waited| {
                if let Some(n) = self.stall_msg.lock().allow(MESSAGE_INTERVAL) {
                    dev_warn!(
                        self.dev(),
                        "host has not taken a balloon message for {} s; still waiting \
                         ({} messages suppressed)\n",
                        waited.as_millis() / 1000,
                        n
                    );
                }
            });
            let Some((buf, _)) = used else {
                return false;
            };
            // Any free slot: the host may use the messages in any order.
            if let Some(slot) = pfns.iter_mut().find(|s| s.is_none()) {
                *slot = Some(buf);
            }
            out -= 1;
        }
        true
    }

    /// Sends the first `n` PFNs of the buffers in one round trip and waits for the host.
    /// Returns how many PFNs the host was told: a prefix of the `n`, 0 if the device went
    /// away. The caller holds `balloon_lock` throughout, as in the C driver.
    fn send(&self, vq: &Virtqueue<PfnBuf>, pfns: &mut Pool, n: usize) -> usize {
        let (told, out) = self.submit(vq, pfns, n);
        if self.wait_used(vq, pfns, out) {
            told
        } else {
            0
        }
    }

    /// The queue that carries round trips in direction `dir`.
    fn vq(&self, dir: Dir) -> &Virtqueue<PfnBuf> {
        match dir {
            Dir::Inflate => &self.inflate_vq,
            Dir::Deflate => &self.deflate_vq,
        }
    }

    /// Waits until the host used every message of the round trip in flight, if any. Its
    /// pages stay in `trip` until the size work (or the OOM notifier) settles it.
    fn wait_trip(&self, state: &mut SizeState) {
        let vq = self.vq(state.trip_dir);
        if state.trip_out > 0 && !self.wait_used(vq, &mut state.pfns, state.trip_out) {
            state.trip_told = 0;
        }
        state.trip_out = 0;
    }
}

impl balloon::Migrate for PfnQueues {
    /// Compaction moves a ballooned page: the host takes the new frame and gives back the old
    /// one, so the balloon keeps its size.
    fn migrate(&self, new_pfn: usize, old_pfn: usize) -> Result {
        // Compaction must not wait behind a long inflate or deflate.
        let mut state = self.balloon_lock.try_lock().ok_or(EAGAIN)?;
        // Behind at most the one round trip in flight.
        self.wait_trip(&mut state);
        let n = self.put_pfns(&mut state.pfns, 0, new_pfn);
        // If the host never heard of the new page, the old one stays in the balloon.
        if n == 0 || self.send(&self.inflate_vq, &mut state.pfns, n) != n {
            return Err(EAGAIN);
        }
        let n = self.put_pfns(&mut state.pfns, 0, old_pfn);
        self.send(&self.deflate_vq, &mut state.pfns, n);
        Ok(())
    }
}

/// `pfns` rounded down to whole guest pages: a page counts as told only with all its frames.
fn whole_pages(pfns: usize) -> usize {
    pfns - pfns % PAGES_PER_PAGE as usize
}

/// Inflate bookkeeping outside `balloon_lock`.
#[pin_data]
pub(super) struct Sizing {
    /// Pages allocated for the next inflate message, before `balloon_lock` is taken. Only the
    /// size work fills the balloon, so this lock is never contended; the vector keeps its
    /// capacity, so inflating allocates nothing but pages.
    #[pin]
    filling: Mutex<KVec<BalloonPage>>,
    /// "Out of puff" messages.
    #[pin]
    out_of_puff_msg: Mutex<RateLimit>,
    /// Set when the config space changed (atomic context): `target` is stale.
    reread: AtomicBool,
    /// The host's target (`num_pages`) as last read.
    target: AtomicU32,
    /// OOM notifiers waiting for `balloon_lock`: the size work queues no inflate meanwhile.
    oom_waiting: AtomicU32,
}

impl Sizing {
    pub(super) fn new() -> Result<impl PinInit<Self>> {
        let filling = KVec::with_capacity(BATCH_PFNS, GFP_KERNEL)?;
        Ok(pin_init!(Sizing {
            filling <- new_mutex!(filling),
            out_of_puff_msg <- new_mutex!(RateLimit::new()),
            reread: AtomicBool::new(true),
            target: AtomicU32::new(0),
            oom_waiting: AtomicU32::new(0),
        }))
    }

    /// The config space changed (atomic context): the next [`Balloon::towards_target`]
    /// reads the target again.
    pub(super) fn config_changed(&self) {
        self.reread.store(true, Ordering::Release);
    }
}

impl Balloon {
    /// How many 4 KiB pages the balloon must grow (positive) or shrink (negative) by. Reads
    /// the host's target only if the config space changed since the last read, or if `fresh`.
    ///
    /// Under a TCG or otherwise emulated device a config read waits for the device model,
    /// which is busy with the round trip just queued: reading it after every round trip
    /// would keep the guest from allocating the next batch meanwhile. The device notifies
    /// every change of the target, so a cached value is only stale once `reread` is set.
    pub(super) fn towards_target(&self, fresh: bool) -> i64 {
        let num_pages = if self.size.reread.swap(false, Ordering::AcqRel) || fresh {
            let Ok(n) = self.pfn_queues().vq_set().read_config_le32(CFG_NUM_PAGES) else {
                self.size.reread.store(true, Ordering::Release);
                return 0;
            };
            self.size.target.store(n, Ordering::Relaxed);
            n
        } else {
            self.size.target.load(Ordering::Relaxed)
        };
        // ALIGN(): whole guest pages, wrapping like the C driver on absurd values.
        let target = num_pages.wrapping_add(PAGES_PER_PAGE - 1) & !(PAGES_PER_PAGE - 1);
        let state = self.pfn_queues().balloon_lock.lock();
        // The pages of the round trip in flight are on their way in or out.
        let moving = match state.trip_dir {
            Dir::Inflate => state.trip_told as i64,
            Dir::Deflate => -(state.trip_told as i64),
        };
        i64::from(target) - i64::from(state.num_pages) - moving
    }

    /// Balloon size in 4 KiB pages.
    pub(super) fn num_pages(&self) -> u32 {
        self.pfn_queues().balloon_lock.lock().num_pages
    }

    /// Reports the balloon size to the host.
    pub(super) fn update_balloon_size(&self) {
        self.tell_actual(self.num_pages());
    }

    /// Writes `actual`; the caller holds `balloon_lock` if `num_pages` came from under it.
    fn tell_actual(&self, num_pages: u32) {
        // Fails only once the device is gone, when there is nobody to tell.
        let _ = self
            .pfn_queues()
            .vq_set()
            .write_config_le32(CFG_ACTUAL, num_pages);
    }

    /// Queues the size work unless the device is going away.
    pub(super) fn queue_size_work(this: &Arc<Self>) {
        let stop = this.stop_update.lock();
        if !*stop {
            Self::enqueue_size_work(this);
        }
    }

    /// Queues the size work, holding the system awake until it ran; the caller holds
    /// `stop_update` and found it clear.
    pub(super) fn enqueue_size_work(this: &Arc<Self>) {
        this.wakeup.start(this.vdev(), wakeup::Event::Size);
        // Already queued is fine: one run reads the latest target.
        let _ = workqueue::system_freezable().enqueue::<Arc<Self>, 0>(this.clone());
    }

    /// Runs the size work again after `wait` (or at once, if a target change queues it). The
    /// system may suspend meanwhile: a back-off is no balloon change.
    fn retry_size_work(this: &Arc<Self>, wait: Delta) {
        // Checked and queued under the lock, so `quiesce` cannot miss it.
        let stop = this.stop_update.lock();
        if *stop {
            return;
        }
        let jiffies =
            kernel::time::msecs_to_jiffies(wait.as_millis().clamp(1, i64::from(u32::MAX)) as u32);
        // Already pending is fine: the earlier retry runs the size work as well.
        let _ =
            workqueue::system_freezable().enqueue_delayed::<Arc<Self>, 3>(this.clone(), jiffies);
    }

    pub(super) fn update_balloon_size_work(this: &Arc<Self>) {
        // Read afresh once per run, whatever the notifications said.
        let mut diff = this.towards_target(true);
        let mut retry = None;
        let mut moved = 0u64;
        // One round trip at a time, checking the target after each (it is read again after a
        // config change notification): a reversal takes effect within one round trip.
        while diff != 0 && retry.is_none() && moved < WORK_PAGES {
            let got = if diff > 0 {
                match this.inflate_allowed(diff.unsigned_abs()) {
                    Ok(room) => {
                        let got = this.fill(min(diff.unsigned_abs(), room));
                        if got == 0 {
                            retry = Some(this.pressure.floor_backoff());
                        } else {
                            this.pressure.inflated();
                        }
                        got
                    }
                    Err(wait) => {
                        retry = Some(wait);
                        0
                    }
                }
            } else {
                this.leak(diff.unsigned_abs())
            };
            if got == 0 {
                break;
            }
            moved += u64::from(got);
            diff = this.towards_target(false);
        }
        let _ = this.settle(&mut this.pfn_queues().balloon_lock.lock());
        this.update_balloon_size();
        match retry {
            Some(wait) => Self::retry_size_work(this, wait),
            None if diff != 0 => Self::queue_size_work(this),
            None => {}
        }
    }

    /// Says (rate-limited) that the balloon could not grow by `n` 4 KiB pages: the reserve
    /// is reached (`floor`), or the page allocator had nothing to give without reclaim.
    pub(super) fn out_of_puff(&self, n: u64, floor: bool) {
        if let Some(suppressed) = self.size.out_of_puff_msg.lock().allow(MESSAGE_INTERVAL) {
            let why = if floor {
                "without starving the guest"
            } else {
                "from the page allocator"
            };
            dev_info!(
                self.dev(),
                "Out of puff! Can't get {} pages {} (MemAvailable {} MiB; {} messages \
                 suppressed)\n",
                n,
                why,
                vmstat::mem_available() >> 20,
                suppressed
            );
        }
    }

    /// How many 4 KiB pages the balloon may still take without eating into the reserve the
    /// guest keeps for itself.
    pub(super) fn room(&self) -> u64 {
        let in_balloon = u64::from(self.num_pages()) * BALLOON_PAGE;
        // MemTotal drops as the balloon grows unless deflate-on-OOM was negotiated.
        let total = vmstat::meminfo().total
            + if self.has_feature(F_DEFLATE_ON_OOM) {
                0
            } else {
                in_balloon
            };
        let reserve = (total >> RESERVE_SHIFT).clamp(RESERVE_MIN, RESERVE_MAX);
        vmstat::mem_available().saturating_sub(reserve) / BALLOON_PAGE
    }

    /// Inflates by up to `num` 4 KiB pages (at most one round trip); returns how many.
    fn fill(&self, num: u64) -> u32 {
        // No message buffer, and none in flight: a round trip was cut off by the device
        // going away.
        let lost = {
            let state = self.pfn_queues().balloon_lock.lock();
            state.pfns[0].is_none() && state.trip_out == 0
        };
        if lost {
            return 0;
        }
        let num = min(num, BATCH_PFNS as u64) as u32;
        let mut new_pages = self.size.filling.lock();
        let want = num.div_ceil(PAGES_PER_PAGE) as usize;
        BalloonPage::alloc_bulk(want, |page| {
            // Within the capacity reserved at probe, `push` does not allocate.
            let _ = new_pages.push(page, GFP_NOWAIT);
        });
        if new_pages.len() < want {
            self.out_of_puff(
                ((want - new_pages.len()) as u64) * u64::from(PAGES_PER_PAGE),
                false,
            );
        }
        if new_pages.is_empty() {
            return 0;
        }

        self.turn(
            &mut self.pfn_queues().balloon_lock.lock(),
            Dir::Inflate,
            &mut new_pages,
        )
    }

    /// Queues `pages` as the next round trip in direction `dir`, and settles the one before
    /// (which the host worked on while these pages were gathered). Returns how many 4 KiB
    /// frames the host was told of. Of `pages`, those told of wait in `trip` until the host
    /// used them; the others go back where they came from at once.
    fn turn(&self, state: &mut SizeState, dir: Dir, pages: &mut KVec<BalloonPage>) -> u32 {
        let queues = self.pfn_queues();
        // The buffers of the previous round trip carry this one.
        queues.wait_trip(state);
        if dir == Dir::Inflate && self.size.oom_waiting.load(Ordering::Acquire) > 0 {
            // The OOM notifier is next: it must not wait behind this round trip too.
            self.finish_trip(state);
            pages.clear();
            return 0;
        }
        let mut n = 0;
        // No more than `trip` holds once emptied: the pages told of all go there.
        for page in pages.iter().take(state.trip.capacity()) {
            n = queues.put_pfns(&mut state.pfns, n, page.pfn());
        }
        let (told, out) = queues.submit(queues.vq(dir), &mut state.pfns, n);
        let told = whole_pages(told);
        // The previous round trip's pages move while the host works on this one.
        self.finish_trip(state);
        let mut pages = pages.drain_all();
        for page in pages.by_ref().take(told / PAGES_PER_PAGE as usize) {
            // Cannot fail: `trip` was emptied above, and no more pages were told than it holds.
            let _ = state.trip.push_within_capacity(page);
        }
        match dir {
            Dir::Inflate => drop(pages),
            Dir::Deflate => {
                self.pages.enqueue_all(pages);
            }
        }
        state.trip_dir = dir;
        state.trip_out = out;
        state.trip_told = told;
        told as u32
    }

    /// Waits for the round trip in flight and moves its pages: in an inflate, into the
    /// balloon; in a deflate, back to the guest. If the device went away first (it forgets
    /// them on reset), inflated pages go back to the guest and deflated ones stay in the
    /// balloon, to be freed after the reset. So no page goes back to the guest before the
    /// host used the message that told it (MUST_TELL_HOST), and none enters the balloon (where
    /// a deflate could take it) before the host used its inflate. Returns how many 4 KiB
    /// frames went back to the guest.
    fn settle(&self, state: &mut SizeState) -> u32 {
        self.pfn_queues().wait_trip(state);
        self.finish_trip(state)
    }

    /// The second half of [`Balloon::settle`], once the host used the round trip; returns
    /// how many 4 KiB frames went back to the guest.
    fn finish_trip(&self, state: &mut SizeState) -> u32 {
        if state.trip.is_empty() {
            return 0;
        }
        let told = state.trip_told / PAGES_PER_PAGE as usize;
        let mut pages = state.trip.drain_all();
        let released = match state.trip_dir {
            Dir::Inflate => {
                let n = self.pages.enqueue_all(pages.by_ref().take(told));
                drop(pages);
                state.num_pages += n as u32 * PAGES_PER_PAGE;
                0
            }
            Dir::Deflate => {
                // Told of and used: back to the guest (MUST_TELL_HOST).
                pages.by_ref().take(told).for_each(drop);
                self.pages.enqueue_all(pages);
                state.num_pages -= (told as u32) * PAGES_PER_PAGE;
                told as u32 * PAGES_PER_PAGE
            }
        };
        state.trip_told = 0;
        // Once per round trip, as soon as the pages moved: a host that compares `actual`
        // with its target must not take a stale value for the end of a change.
        if told > 0 {
            self.tell_actual(state.num_pages);
        }
        released
    }

    /// Deflates by up to `num` 4 KiB pages (one round trip); returns how many frames the host
    /// was told of. The pages go back to the guest when the round trip settles: at the next
    /// one, or at the end of the size work (see [`Balloon::leak_now`]).
    pub(super) fn leak(&self, num: u64) -> u32 {
        self.leak_locked(&mut self.pfn_queues().balloon_lock.lock(), num)
    }

    /// Deflates by up to `num` 4 KiB pages and waits until they are back in the guest; returns
    /// how many went back. Holds `balloon_lock` throughout, and no inflate is queued while it
    /// waits for the lock, so it waits behind at most the round trip in flight and its own.
    pub(super) fn leak_now(&self, num: u64) -> u32 {
        self.size.oom_waiting.fetch_add(1, Ordering::AcqRel);
        let mut state = self.pfn_queues().balloon_lock.lock();
        self.size.oom_waiting.fetch_sub(1, Ordering::AcqRel);
        self.leak_locked(&mut state, num);
        self.settle(&mut state)
    }

    fn leak_locked(&self, state: &mut SizeState, num: u64) -> u32 {
        // No message buffer and none in flight: a send was cut off by the device going away;
        // nothing can be told.
        if state.pfns[0].is_none() && state.trip_out == 0 {
            return 0;
        }
        // Pages in the balloon list: not those of the round trip in flight.
        let listed = match state.trip_dir {
            Dir::Inflate => state.num_pages,
            Dir::Deflate => state.num_pages - state.trip_told as u32,
        };
        let num = min(min(num, BATCH_PFNS as u64), u64::from(listed)) as u32;
        // Taken out while the host still works on the previous round trip: nobody else
        // can deflate them, and they go back to the guest only after the host was told.
        let (pages, moving) = (&self.pages, &mut state.moving);
        pages.dequeue_many(num.div_ceil(PAGES_PER_PAGE) as usize, |page| {
            // `moving` has room for a round trip: this cannot fail, but would lose no page.
            if let Err(PushError(page)) = moving.push_within_capacity(page) {
                pages.enqueue(page);
            }
        });
        if state.moving.is_empty() {
            return 0;
        }
        let mut moving = core::mem::take(&mut state.moving);
        let told = self.turn(state, Dir::Deflate, &mut moving);
        // Keeps its capacity for the next round trip.
        state.moving = moving;
        told
    }

    /// Deflates the whole balloon (unbind), telling the host about every page.
    pub(super) fn deflate_all(&self) {
        let mut idle = 0;
        loop {
            let left = self.num_pages();
            if left == 0 {
                return;
            }
            if self.leak_now(u64::from(left)) != 0 {
                idle = 0;
                continue;
            }
            // Either every page left is isolated for migration (it comes back shortly), or the
            // host cannot be told. Then the pages stay in the balloon until the device is
            // reset, which makes the host forget them, and are freed after that.
            idle += 1;
            if !self.pfn_queues().deflate_vq.is_live() || idle > 1000 {
                dev_err!(
                    self.dev(),
                    "cannot tell the host about {} balloon pages; they are freed after the \
                     device reset\n",
                    left
                );
                return;
            }
            kernel::time::delay::fsleep(Delta::from_millis(1));
        }
    }
}
