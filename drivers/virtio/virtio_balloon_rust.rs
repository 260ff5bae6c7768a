// SPDX-License-Identifier: GPL-2.0

//! Virtio memory balloon driver, written in Rust.
//!
//! The host asks the guest to give up memory by raising `num_pages` in the
//! config space; the driver allocates pages, tells the host their frame
//! numbers on the inflate queue, and reports its size in `actual`. Lowering
//! `num_pages` gives pages back through the deflate queue. With STATS_VQ the
//! host also polls memory statistics.
//!
//! It follows `drivers/virtio/virtio_balloon.c`: the same feature handling,
//! wire formats, work items on the freezable system workqueue, lock rules
//! and accounting.

use core::{cmp::min, mem::offset_of};
use kernel::{
    balloon::{self, BalloonPage, BalloonPages},
    bindings, device, impl_has_balloon_pages, new_condvar, new_mutex, new_spinlock_irq,
    page::PAGE_SIZE,
    prelude::*,
    sync::{aref::ARef, Arc, CondVar, Mutex, SpinLockIrq},
    time::{delay::fsleep, Delta, Instant, Monotonic},
    virtio::{self, QueueInfo, Transport, Virtqueue},
    vmstat,
    workqueue::{self, impl_has_work, new_work, Work, WorkItem},
};

/// Balloon page frames are 4 KiB, whatever the guest page size.
const PAGES_PER_PAGE: u32 = (PAGE_SIZE >> bindings::VIRTIO_BALLOON_PFN_SHIFT) as u32;
/// Most page frame numbers in one inflate or deflate message. Firecracker and Cloud
/// Hypervisor drop longer ones.
const ARRAY_PFNS_MAX: usize = 256;
/// Bytes in a balloon page.
const BALLOON_PAGE: u64 = 1 << bindings::VIRTIO_BALLOON_PFN_SHIFT;

const CFG_NUM_PAGES: usize = offset_of!(bindings::virtio_balloon_config, num_pages);
const CFG_ACTUAL: usize = offset_of!(bindings::virtio_balloon_config, actual);

const F_MUST_TELL_HOST: u32 = bindings::VIRTIO_BALLOON_F_MUST_TELL_HOST;
const F_STATS_VQ: u32 = bindings::VIRTIO_BALLOON_F_STATS_VQ;
const F_DEFLATE_ON_OOM: u32 = bindings::VIRTIO_BALLOON_F_DEFLATE_ON_OOM;
const F_PAGE_POISON: u32 = bindings::VIRTIO_BALLOON_F_PAGE_POISON;
const F_REPORTING: u32 = bindings::VIRTIO_BALLOON_F_REPORTING;

/// Queue slots, in `find_vqs` order.
const VQ_INFLATE: usize = 0;
const VQ_DEFLATE: usize = 1;
const VQ_STATS: usize = 2;

/// One stats entry on the wire: `{ __virtio16 tag; __virtio64 val; }`, packed.
const STAT_SIZE: usize = 10;
const STATS_MAX: usize = bindings::VIRTIO_BALLOON_S_NR as usize;

type PfnBuf = [u32; ARRAY_PFNS_MAX];
type StatsBuf = [u8; STATS_MAX * STAT_SIZE];

/// Back-off after a failed page allocation, as the C driver.
const OUT_OF_PUFF_SLEEP: Delta = Delta::from_millis(200);
/// At most one "out of puff" message per this interval.
const OUT_OF_PUFF_INTERVAL: Delta = Delta::from_secs(5);
/// The balloon leaves the guest at least this share of its memory available (1/8), but
/// never less than `RESERVE_MIN` nor more than `RESERVE_MAX`. The C driver has no such floor
/// and inflates until the guest OOM-kills its own processes.
const RESERVE_SHIFT: u32 = 3;
const RESERVE_MIN: u64 = 64 << 20;
const RESERVE_MAX: u64 = 1 << 30;

kernel::virtio_device_table!(
    BALLOON_TABLE,
    [virtio::DeviceId::new(bindings::VIRTIO_ID_BALLOON)]
);

/// State protected by `balloon_lock`: the balloon size and the message buffers.
struct Inner {
    /// Balloon size in 4 KiB balloon pages, as reported in `actual`.
    num_pages: u32,
    /// The PFN buffer, when it is not on a queue.
    pfns: Option<KBox<PfnBuf>>,
    /// Pages being deflated, held until the host was told (room for one message).
    leaking: KVec<BalloonPage>,
}

#[pin_data]
struct Balloon {
    dev: ARef<virtio::Device>,
    transport: Arc<Transport>,
    inflate_vq: Virtqueue<PfnBuf>,
    deflate_vq: Virtqueue<PfnBuf>,
    stats_vq: Option<Virtqueue<StatsBuf>>,
    #[pin]
    pages: BalloonPages,
    /// Held across a whole inflate or deflate, including the wait for the host.
    #[pin]
    balloon_lock: Mutex<Inner>,
    /// Pages allocated for the next inflate message, before `balloon_lock` is taken. Only the
    /// size work fills the balloon, so this lock is never contended; the vector keeps its
    /// capacity, so inflating allocates nothing but pages.
    #[pin]
    filling: Mutex<KVec<BalloonPage>>,
    /// Counts inflate/deflate acknowledgements (interrupt context) for waiters.
    #[pin]
    acked: SpinLockIrq<u64>,
    #[pin]
    acked_cv: CondVar,
    /// Set when the device goes away: no more work is queued.
    #[pin]
    stop_update: SpinLockIrq<bool>,
    #[pin]
    size_work: Work<Balloon, 0>,
    #[pin]
    stats_work: Work<Balloon, 1>,
    /// When the last "out of puff" message was printed, and how many were suppressed since.
    #[pin]
    puff: Mutex<(Option<Instant<Monotonic>>, u32)>,
}

impl_has_work! {
    impl HasWork<Self, 0> for Balloon { self.size_work }
    impl HasWork<Self, 1> for Balloon { self.stats_work }
}

impl WorkItem<0> for Balloon {
    type Pointer = Arc<Balloon>;

    fn run(this: Arc<Balloon>) {
        this.update_balloon_size_work(&this);
    }
}

impl WorkItem<1> for Balloon {
    type Pointer = Arc<Balloon>;

    fn run(this: Arc<Balloon>) {
        this.stats_handle_request();
    }
}

impl_has_balloon_pages! { impl HasBalloonPages for Balloon { self.pages } }

impl balloon::Migrate for Balloon {
    /// Compaction moves a ballooned page: the host takes the new frame and gives back the old
    /// one, so the balloon keeps its size.
    fn migrate(&self, new_pfn: usize, old_pfn: usize) -> Result {
        // Compaction must not wait behind a long inflate or deflate.
        let mut inner = self.balloon_lock.try_lock().ok_or(EAGAIN)?;
        let mut buf = inner.pfns.take().ok_or(EAGAIN)?;
        let mut n = self.put_pfns(&mut buf, 0, new_pfn);
        buf = self.tell_host(&self.inflate_vq, buf, n);
        n = self.put_pfns(&mut buf, 0, old_pfn);
        buf = self.tell_host(&self.deflate_vq, buf, n);
        inner.pfns = Some(buf);
        Ok(())
    }
}

impl Balloon {
    fn new(dev: &virtio::Device<device::Core<'_>>) -> Result<Arc<Self>> {
        if !dev.has_config() {
            dev_err!(dev.as_ref(), "config space access is not supported\n");
            return Err(EINVAL);
        }
        let stats = dev.has_feature(F_STATS_VQ);
        let queues = [
            QueueInfo {
                name: Some(c"inflate"),
                callback: true,
            },
            QueueInfo {
                name: Some(c"deflate"),
                callback: true,
            },
            QueueInfo {
                name: stats.then_some(c"stats"),
                callback: true,
            },
        ];
        let (transport, mut vqs) = dev.find_vqs::<BalloonDriver>(&queues)?;
        let mut take = |slot: usize| vqs[slot].take().ok_or(ENODEV);
        let inflate_vq = Virtqueue::new(take(VQ_INFLATE)?)?;
        let deflate_vq = Virtqueue::new(take(VQ_DEFLATE)?)?;
        let stats_vq = if stats {
            Some(Virtqueue::new(take(VQ_STATS)?)?)
        } else {
            None
        };
        let pfns = KBox::new([0u32; ARRAY_PFNS_MAX], GFP_KERNEL)?;
        let leaking = KVec::with_capacity(ARRAY_PFNS_MAX, GFP_KERNEL)?;
        let filling = KVec::with_capacity(ARRAY_PFNS_MAX, GFP_KERNEL)?;
        // Without deflate-on-OOM the host may keep ballooned memory for good, so it leaves the
        // guest's managed memory (MemTotal drops). With it, the guest can take it back.
        let adjust_managed = !dev.has_feature(F_DEFLATE_ON_OOM);

        Arc::pin_init(
            pin_init!(Balloon {
                dev: dev.into(),
                transport,
                inflate_vq,
                deflate_vq,
                stats_vq,
                pages <- BalloonPages::new::<Balloon>(adjust_managed),
                balloon_lock <- new_mutex!(Inner { num_pages: 0, pfns: Some(pfns), leaking }),
                filling <- new_mutex!(filling),
                acked <- new_spinlock_irq!(0),
                acked_cv <- new_condvar!(),
                stop_update <- new_spinlock_irq!(false),
                size_work <- new_work!("virtio_balloon_rust::size"),
                stats_work <- new_work!("virtio_balloon_rust::stats"),
                puff <- new_mutex!((None, 0)),
            }),
            GFP_KERNEL,
        )
    }

    /// The device, for messages.
    fn dev(&self) -> &device::Device {
        (*self.dev).as_ref()
    }

    /// How many 4 KiB pages the balloon must grow (positive) or shrink (negative) by.
    fn towards_target(&self) -> i64 {
        // The balloon's config space is little-endian even on legacy devices.
        let Ok(num_pages) = self.transport.read_config_le32(CFG_NUM_PAGES) else {
            return 0;
        };
        let target = num_pages.next_multiple_of(PAGES_PER_PAGE);
        i64::from(target) - i64::from(self.balloon_lock.lock().num_pages)
    }

    /// Reports the balloon size to the host.
    fn update_balloon_size(&self) {
        let actual = self.balloon_lock.lock().num_pages;
        // Fails only once the device is gone, when there is nobody to tell.
        let _ = self.transport.write_config_le32(CFG_ACTUAL, actual);
    }

    fn queue_size_work(this: &Arc<Self>) {
        // Already queued is fine: one run reads the latest target.
        let _ = workqueue::system_freezable().enqueue::<Arc<Self>, 0>(this.clone());
    }

    /// The host changed the config space (atomic context).
    fn changed(this: &Arc<Self>) {
        let stop = this.stop_update.lock();
        if !*stop {
            Self::queue_size_work(this);
        }
    }

    fn update_balloon_size_work(&self, this: &Arc<Self>) {
        let mut diff = self.towards_target();
        if diff > 0 {
            diff -= i64::from(self.fill(diff.unsigned_abs()));
        } else if diff < 0 {
            diff += i64::from(self.leak(diff.unsigned_abs()));
        }
        self.update_balloon_size();
        if diff != 0 {
            Self::queue_size_work(this);
        }
    }

    /// An inflate or deflate message was used by the host (interrupt context).
    fn ack(&self) {
        *self.acked.lock() += 1;
        self.acked_cv.notify_all();
    }

    /// Writes the 4 KiB frame numbers of the guest page at `pfn` into `buf` from index `n`, in
    /// the device's byte order; returns the next index.
    fn put_pfns(&self, buf: &mut PfnBuf, mut n: usize, pfn: usize) -> usize {
        let first = pfn as u32 * PAGES_PER_PAGE;
        for i in 0..PAGES_PER_PAGE {
            buf[n] = self.dev.cpu_to_virtio32(first + i);
            n += 1;
        }
        n
    }

    /// Sends the first `n` PFNs of `buf` and waits until the host has used them; returns the
    /// buffer. The caller holds `balloon_lock`, as in the C driver.
    fn tell_host(&self, vq: &Virtqueue<PfnBuf>, buf: KBox<PfnBuf>, n: usize) -> KBox<PfnBuf> {
        if let Err(virtio::AddError(e, buf)) = vq.add_outbuf(buf, n * size_of::<u32>()) {
            dev_warn!(self.dev(), "cannot queue {} page frames: {:?}\n", n, e);
            return buf;
        }
        vq.kick();
        loop {
            let seen = *self.acked.lock();
            if let Some((buf, _)) = vq.get_buf() {
                return buf;
            }
            let mut acked = self.acked.lock();
            while *acked == seen {
                self.acked_cv.wait(&mut acked);
            }
        }
    }

    fn out_of_puff(&self, n: u64) {
        let mut puff = self.puff.lock();
        let now = Instant::<Monotonic>::now();
        match puff.0 {
            Some(last) if now - last < OUT_OF_PUFF_INTERVAL => puff.1 += 1,
            _ => {
                dev_info!(
                    self.dev(),
                    "Out of puff! Can't get {} pages without starving the guest \
                     (MemAvailable {} MiB; {} messages suppressed)\n",
                    n,
                    vmstat::mem_available() >> 20,
                    puff.1
                );
                *puff = (Some(now), 0);
            }
        }
    }

    /// How many 4 KiB pages the balloon may still take without eating into the reserve the
    /// guest keeps for itself.
    fn room(&self) -> u64 {
        let in_balloon = u64::from(self.balloon_lock.lock().num_pages) * BALLOON_PAGE;
        // MemTotal drops as the balloon grows unless deflate-on-OOM was negotiated.
        let total = vmstat::meminfo().total
            + if self.dev.has_feature(F_DEFLATE_ON_OOM) {
                0
            } else {
                in_balloon
            };
        let reserve = (total >> RESERVE_SHIFT).clamp(RESERVE_MIN, RESERVE_MAX);
        vmstat::mem_available().saturating_sub(reserve) / BALLOON_PAGE
    }

    /// Inflates by up to `num` 4 KiB pages (at most one message); returns how many.
    fn fill(&self, num: u64) -> u32 {
        let room = self.room();
        if room < u64::from(PAGES_PER_PAGE) {
            self.out_of_puff(num);
            fsleep(OUT_OF_PUFF_SLEEP);
            return 0;
        }
        let num = min(min(num, ARRAY_PFNS_MAX as u64), room) as u32;
        let mut new_pages = self.filling.lock();
        let mut got = 0;
        while got < num {
            // Within the capacity reserved at probe, `push` does not allocate.
            let added = BalloonPage::alloc().is_some_and(|p| new_pages.push(p, GFP_NOWAIT).is_ok());
            if !added {
                self.out_of_puff(u64::from(num - got));
                // Sleep for at least 1/5 of a second before trying again.
                fsleep(OUT_OF_PUFF_SLEEP);
                break;
            }
            got += PAGES_PER_PAGE;
        }

        let mut inner = self.balloon_lock.lock();
        let Some(mut buf) = inner.pfns.take() else {
            return 0;
        };
        let mut n = 0;
        for page in new_pages.drain_all() {
            n = self.put_pfns(&mut buf, n, self.pages.enqueue(page));
            inner.num_pages += PAGES_PER_PAGE;
        }
        // The pages are in the balloon before the host hears of them, so they cannot be
        // deflated before it acknowledged the inflate: deflate takes this lock too.
        if n > 0 {
            buf = self.tell_host(&self.inflate_vq, buf, n);
        }
        inner.pfns = Some(buf);
        n as u32
    }

    /// Deflates by up to `num` 4 KiB pages (at most one message); returns how many.
    fn leak(&self, num: u64) -> u32 {
        let mut inner = self.balloon_lock.lock();
        let num = min(min(num, ARRAY_PFNS_MAX as u64), u64::from(inner.num_pages)) as u32;
        let Some(mut buf) = inner.pfns.take() else {
            return 0;
        };
        let mut n = 0;
        while (n as u32) < num {
            let Some(page) = self.pages.dequeue() else {
                break;
            };
            n = self.put_pfns(&mut buf, n, page.pfn());
            // Capacity for a whole message was reserved at probe: this cannot fail.
            let _ = inner.leaking.push(page, GFP_NOWAIT);
            inner.num_pages -= PAGES_PER_PAGE;
        }
        // Tell the host before the pages go back to the guest's allocator (MUST_TELL_HOST).
        if n > 0 {
            buf = self.tell_host(&self.deflate_vq, buf, n);
        }
        inner.pfns = Some(buf);
        inner.leaking.clear();
        n as u32
    }

    /// Fills `buf` with the current statistics, in the C driver's order; returns the number
    /// of bytes used.
    fn update_stats(&self, buf: &mut StatsBuf) -> usize {
        let mut n = 0;
        let mut put = |tag: u32, val: u64| {
            let tag = self.dev.cpu_to_virtio16(tag as u16);
            let val = self.dev.cpu_to_virtio64(val);
            buf[n..n + 2].copy_from_slice(&tag.to_ne_bytes());
            buf[n + 2..n + STAT_SIZE].copy_from_slice(&val.to_ne_bytes());
            n += STAT_SIZE;
        };
        let bytes = |pages: u64| pages * PAGE_SIZE as u64;
        #[cfg(CONFIG_VM_EVENT_COUNTERS)]
        {
            use vmstat::{Event, NodeStat};
            let ev = vmstat::Events::now();
            put(
                bindings::VIRTIO_BALLOON_S_SWAP_IN,
                bytes(ev.get(Event::SwapIn)),
            );
            put(
                bindings::VIRTIO_BALLOON_S_SWAP_OUT,
                bytes(ev.get(Event::SwapOut)),
            );
            put(bindings::VIRTIO_BALLOON_S_MAJFLT, ev.get(Event::MajorFault));
            put(bindings::VIRTIO_BALLOON_S_MINFLT, ev.get(Event::Fault));
            put(bindings::VIRTIO_BALLOON_S_OOM_KILL, ev.get(Event::OomKill));
            put(bindings::VIRTIO_BALLOON_S_ALLOC_STALL, ev.alloc_stalls());
            let node = |s| bytes(vmstat::node_page_state(s));
            put(
                bindings::VIRTIO_BALLOON_S_ASYNC_SCAN,
                node(NodeStat::ScanKswapd),
            );
            put(
                bindings::VIRTIO_BALLOON_S_DIRECT_SCAN,
                node(NodeStat::ScanDirect),
            );
            put(
                bindings::VIRTIO_BALLOON_S_ASYNC_RECLAIM,
                node(NodeStat::StealKswapd),
            );
            put(
                bindings::VIRTIO_BALLOON_S_DIRECT_RECLAIM,
                node(NodeStat::StealDirect),
            );
            #[cfg(CONFIG_HUGETLB_PAGE)]
            {
                put(
                    bindings::VIRTIO_BALLOON_S_HTLB_PGALLOC,
                    ev.get(Event::HugetlbAlloc),
                );
                put(
                    bindings::VIRTIO_BALLOON_S_HTLB_PGFAIL,
                    ev.get(Event::HugetlbAllocFail),
                );
            }
        }
        let mem = vmstat::meminfo();
        put(bindings::VIRTIO_BALLOON_S_MEMFREE, mem.free);
        put(bindings::VIRTIO_BALLOON_S_MEMTOT, mem.total);
        put(bindings::VIRTIO_BALLOON_S_AVAIL, vmstat::mem_available());
        put(
            bindings::VIRTIO_BALLOON_S_CACHES,
            bytes(vmstat::node_page_state(vmstat::NodeStat::FilePages)),
        );
        n
    }

    /// Fills `buf` with fresh statistics and gives it to the host.
    fn send_stats(&self, vq: &Virtqueue<StatsBuf>, mut buf: KBox<StatsBuf>) -> Result {
        let len = self.update_stats(&mut buf);
        vq.add_outbuf(buf, len)
            .map_err(|virtio::AddError(e, _)| e)?;
        vq.kick();
        Ok(())
    }

    /// The host returned the stats buffer: it wants fresh statistics.
    fn stats_handle_request(&self) {
        let Some(vq) = &self.stats_vq else { return };
        // The host returns the one buffer it holds; send it back with fresh values.
        if let Some((buf, _)) = vq.get_buf() {
            if let Err(e) = self.send_stats(vq, buf) {
                dev_warn!(self.dev(), "cannot send stats: {:?}\n", e);
            }
        }
    }

    /// The host used a stats buffer (interrupt context).
    fn stats_request(this: &Arc<Self>) {
        let stop = this.stop_update.lock();
        if !*stop {
            let _ = workqueue::system_freezable().enqueue::<Arc<Self>, 1>(this.clone());
        }
    }

    /// Stops the work items: nothing queues them any more, and none runs.
    fn quiesce(this: &Arc<Self>) {
        *this.stop_update.lock() = true;
        workqueue::cancel_sync::<Self, 0>(this);
        workqueue::cancel_sync::<Self, 1>(this);
    }
}

/// Per-device data of the driver.
#[pin_data]
struct VirtioBalloon {
    b: Arc<Balloon>,
}

struct BalloonDriver;

impl virtio::Driver for BalloonDriver {
    type Data<'bound> = VirtioBalloon;

    const ID_TABLE: virtio::IdTable = &BALLOON_TABLE;

    // The features implemented so far; free page hinting, page poison and free page
    // reporting are not offered yet.
    const FEATURES: &'static [u32] = &[F_MUST_TELL_HOST, F_STATS_VQ, F_DEFLATE_ON_OOM];

    fn validate(dev: &virtio::Device<device::Core<'_>>) -> Result {
        if !balloon::free_pages_have_contents() {
            dev.clear_feature(F_PAGE_POISON);
        } else if !dev.has_feature(F_PAGE_POISON) {
            dev.clear_feature(F_REPORTING);
        }
        // No allocation in virtqueue_add while reporting free pages.
        dev.clear_feature(bindings::VIRTIO_RING_F_INDIRECT_DESC);
        dev.clear_feature(bindings::VIRTIO_F_ACCESS_PLATFORM);
        Ok(())
    }

    fn probe<'bound>(
        dev: &'bound virtio::Device<device::Core<'_>>,
    ) -> impl PinInit<Self::Data<'bound>, Error> + 'bound {
        try_pin_init!(VirtioBalloon {
            b: Balloon::new(dev)?,
        }? Error)
    }

    fn ready<'bound>(dev: &'bound virtio::Device<device::Core<'_>>, this: Pin<&VirtioBalloon>) {
        let b = &this.b;
        if let Some(vq) = &b.stats_vq {
            // Prime the stats queue: the host returns the buffer when it wants an update.
            let sent = KBox::new([0u8; STATS_MAX * STAT_SIZE], GFP_KERNEL)
                .map_err(Error::from)
                .and_then(|buf| b.send_stats(vq, buf));
            if let Err(e) = sent {
                dev_warn!(dev.as_ref(), "cannot set up the stats queue: {:?}\n", e);
            }
        }
        // The host may have set a target before the driver came.
        if b.towards_target() != 0 {
            Balloon::changed(b);
        }
    }

    fn config_changed(this: Pin<&VirtioBalloon>) {
        Balloon::changed(&this.b);
    }

    fn queue_done(this: Pin<&VirtioBalloon>, slot: usize) {
        match slot {
            VQ_INFLATE | VQ_DEFLATE => this.b.ack(),
            VQ_STATS => Balloon::stats_request(&this.b),
            _ => {}
        }
    }

    fn unbind<'bound>(dev: &'bound virtio::Device<device::Core<'_>>, this: Pin<&VirtioBalloon>) {
        let b = &this.b;
        Balloon::quiesce(b);
        // Every page goes back to the guest, and the host hears of each first.
        while b.balloon_lock.lock().num_pages > 0 {
            let left = b.balloon_lock.lock().num_pages;
            b.leak(u64::from(left));
        }
        b.update_balloon_size();
        b.transport.delete(dev);
    }

    fn shutdown<'bound>(_dev: &'bound virtio::Device<device::Core<'_>>, this: Pin<&VirtioBalloon>) {
        Balloon::quiesce(&this.b);
    }
}

kernel::module_virtio_driver! {
    type: BalloonDriver,
    name: "virtio_balloon_rust",
    authors: ["The virtio-balloon Rust authors"],
    description: "Virtio memory balloon driver (Rust)",
    license: "GPL",
}
