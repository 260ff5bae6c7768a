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
    bindings, device, new_condvar, new_mutex, new_spinlock_irq,
    page::PAGE_SIZE,
    prelude::*,
    sync::{aref::ARef, Arc, CondVar, Mutex, SpinLockIrq},
    time::{delay::fsleep, Delta, Instant, Monotonic},
    virtio::{self, QueueFinder, QueueInfo, Transport, Virtqueue},
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
    /// The PFN message buffer. `None` only while it is on a queue inside
    /// [`HostLink::send`], which always puts it back.
    pfns: Option<KBox<PfnBuf>>,
    /// Pages being deflated, held until the host was told (room for one message).
    leaking: KVec<BalloonPage>,
}

/// What telling the host about pages needs: the inflate and deflate queues, `balloon_lock`
/// and the acknowledgement counter. The balloon page list owns it, so that page migration
/// (which tells the host too) always finds it alive.
#[pin_data]
struct HostLink {
    dev: ARef<virtio::Device>,
    /// Byte order of the queue payloads, fixed while bound.
    order: virtio::ByteOrder,
    transport: Arc<Transport>,
    inflate_vq: Virtqueue<PfnBuf>,
    deflate_vq: Virtqueue<PfnBuf>,
    /// Held across a whole inflate or deflate, including the wait for the host.
    #[pin]
    balloon_lock: Mutex<Inner>,
    /// Counts inflate/deflate acknowledgements (interrupt context) for waiters.
    #[pin]
    acked: SpinLockIrq<u64>,
    #[pin]
    acked_cv: CondVar,
}

#[pin_data]
struct Balloon {
    #[pin]
    pages: BalloonPages<HostLink>,
    stats_vq: Option<Virtqueue<StatsBuf>>,
    /// Pages allocated for the next inflate message, before `balloon_lock` is taken. Only the
    /// size work fills the balloon, so this lock is never contended; the vector keeps its
    /// capacity, so inflating allocates nothing but pages.
    #[pin]
    filling: Mutex<KVec<BalloonPage>>,
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

impl balloon::Migrate for HostLink {
    /// Compaction moves a ballooned page: the host takes the new frame and gives back the old
    /// one, so the balloon keeps its size.
    fn migrate(&self, new_pfn: usize, old_pfn: usize) -> Result {
        // Compaction must not wait behind a long inflate or deflate.
        let mut inner = self.balloon_lock.try_lock().ok_or(EAGAIN)?;
        let n = self.put_pfns(&mut inner.pfns, 0, new_pfn);
        // If the host never heard of the new page, the old one stays in the balloon.
        if !self.send(&self.inflate_vq, &mut inner.pfns, n) {
            return Err(EAGAIN);
        }
        let n = self.put_pfns(&mut inner.pfns, 0, old_pfn);
        self.send(&self.deflate_vq, &mut inner.pfns, n);
        Ok(())
    }
}

impl HostLink {
    /// The device, for messages.
    fn dev(&self) -> &device::Device {
        (*self.dev).as_ref()
    }

    /// Writes the 4 KiB frame numbers of the guest page at `pfn` into `buf` from index `n`, in
    /// the device's byte order; returns the next index. Frame numbers are 32 bits on the
    /// wire and wrap as in the C driver.
    fn put_pfns(&self, pfns: &mut Option<KBox<PfnBuf>>, mut n: usize, pfn: usize) -> usize {
        let Some(buf) = pfns.as_mut() else {
            return n;
        };
        let first = (pfn as u32).wrapping_mul(PAGES_PER_PAGE);
        for i in 0..PAGES_PER_PAGE {
            buf[n] = self.order.u32(first.wrapping_add(i));
            n += 1;
        }
        n
    }

    /// Sends the first `n` PFNs of the message buffer on `vq` and waits until the host has
    /// used them; the buffer is back in `pfns` afterwards. Returns whether the host was told.
    /// The caller holds `balloon_lock` throughout, as in the C driver.
    fn send(&self, vq: &Virtqueue<PfnBuf>, pfns: &mut Option<KBox<PfnBuf>>, n: usize) -> bool {
        let Some(buf) = pfns.take() else {
            return false;
        };
        if let Err(virtio::AddError(e, buf)) = vq.add_outbuf(buf, n * size_of::<u32>()) {
            dev_warn!(self.dev(), "cannot queue {} page frames: {:?}\n", n, e);
            *pfns = Some(buf);
            return false;
        }
        vq.kick();
        loop {
            let seen = *self.acked.lock();
            if let Some((buf, _)) = vq.get_buf() {
                *pfns = Some(buf);
                return true;
            }
            let mut acked = self.acked.lock();
            while *acked == seen {
                self.acked_cv.wait(&mut acked);
            }
        }
    }

    /// An inflate or deflate message was used by the host (interrupt context).
    fn ack(&self) {
        *self.acked.lock() += 1;
        self.acked_cv.notify_all();
    }
}

impl Balloon {
    fn new(
        dev: &virtio::Device<device::Core<'_>>,
        finder: QueueFinder<BalloonDriver>,
    ) -> Result<Arc<Self>> {
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
        let (transport, mut vqs) = finder.find_vqs(dev, &queues)?;
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
                pages <- BalloonPages::new(
                    adjust_managed,
                    pin_init!(HostLink {
                        dev: dev.into(),
                        order: dev.byte_order(),
                        transport,
                        inflate_vq,
                        deflate_vq,
                        balloon_lock <- new_mutex!(Inner {
                            num_pages: 0,
                            pfns: Some(pfns),
                            leaking,
                        }),
                        acked <- new_spinlock_irq!(0),
                        acked_cv <- new_condvar!(),
                    }),
                ),
                stats_vq,
                filling <- new_mutex!(filling),
                stop_update <- new_spinlock_irq!(false),
                size_work <- new_work!("virtio_balloon_rust::size"),
                stats_work <- new_work!("virtio_balloon_rust::stats"),
                puff <- new_mutex!((None, 0)),
            }),
            GFP_KERNEL,
        )
    }

    /// The queues and lock for talking to the host.
    fn link(&self) -> &HostLink {
        self.pages.migrator()
    }

    /// The device, for messages.
    fn dev(&self) -> &device::Device {
        self.link().dev()
    }

    /// How many 4 KiB pages the balloon must grow (positive) or shrink (negative) by.
    fn towards_target(&self) -> i64 {
        // The balloon's config space is little-endian even on legacy devices.
        let Ok(num_pages) = self.link().transport.read_config_le32(CFG_NUM_PAGES) else {
            return 0;
        };
        // ALIGN(): whole guest pages, wrapping like the C driver on absurd values.
        let target = num_pages.wrapping_add(PAGES_PER_PAGE - 1) & !(PAGES_PER_PAGE - 1);
        i64::from(target) - i64::from(self.link().balloon_lock.lock().num_pages)
    }

    /// Reports the balloon size to the host.
    fn update_balloon_size(&self) {
        let actual = self.link().balloon_lock.lock().num_pages;
        // Fails only once the device is gone, when there is nobody to tell.
        let _ = self.link().transport.write_config_le32(CFG_ACTUAL, actual);
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
        let in_balloon = u64::from(self.link().balloon_lock.lock().num_pages) * BALLOON_PAGE;
        // MemTotal drops as the balloon grows unless deflate-on-OOM was negotiated.
        let total = vmstat::meminfo().total
            + if self.link().dev.has_feature(F_DEFLATE_ON_OOM) {
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

        let link = self.link();
        let mut inner = link.balloon_lock.lock();
        let mut n = 0;
        for page in new_pages.drain_all() {
            n = link.put_pfns(&mut inner.pfns, n, self.pages.enqueue(page));
            inner.num_pages += PAGES_PER_PAGE;
        }
        // The pages are in the balloon before the host hears of them, so they cannot be
        // deflated before it acknowledged the inflate: deflate takes this lock too.
        if n > 0 {
            link.send(&link.inflate_vq, &mut inner.pfns, n);
        }
        n as u32
    }

    /// Deflates by up to `num` 4 KiB pages (at most one message); returns how many.
    fn leak(&self, num: u64) -> u32 {
        let link = self.link();
        let mut inner = link.balloon_lock.lock();
        let num = min(min(num, ARRAY_PFNS_MAX as u64), u64::from(inner.num_pages)) as u32;
        let mut n = 0;
        while (n as u32) < num {
            let Some(page) = self.pages.dequeue() else {
                break;
            };
            n = link.put_pfns(&mut inner.pfns, n, page.pfn());
            // Capacity for a whole message was reserved at probe: this cannot fail.
            let _ = inner.leaking.push(page, GFP_NOWAIT);
            inner.num_pages -= PAGES_PER_PAGE;
        }
        // Tell the host before the pages go back to the guest's allocator (MUST_TELL_HOST).
        if n > 0 {
            link.send(&link.deflate_vq, &mut inner.pfns, n);
        }
        inner.leaking.clear();
        n as u32
    }

    /// Fills `buf` with the current statistics, in the C driver's order; returns the number
    /// of bytes used.
    fn update_stats(&self, buf: &mut StatsBuf) -> usize {
        let mut n = 0;
        let mut put = |tag: u32, val: u64| {
            let order = self.link().order;
            let tag = order.u16(tag as u16);
            let val = order.u64(val);
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
            for (tag, counter) in [
                (bindings::VIRTIO_BALLOON_S_ASYNC_SCAN, NodeStat::ScanKswapd),
                (bindings::VIRTIO_BALLOON_S_DIRECT_SCAN, NodeStat::ScanDirect),
                (
                    bindings::VIRTIO_BALLOON_S_ASYNC_RECLAIM,
                    NodeStat::StealKswapd,
                ),
                (
                    bindings::VIRTIO_BALLOON_S_DIRECT_RECLAIM,
                    NodeStat::StealDirect,
                ),
            ] {
                put(tag, bytes(vmstat::node_page_state(counter)));
            }
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
    type Config = bindings::virtio_balloon_config;

    const ID_TABLE: virtio::IdTable = &BALLOON_TABLE;

    // The features implemented so far; free page hinting, page poison and free page
    // reporting are not offered yet.
    const FEATURES: &'static [u32] = &[F_MUST_TELL_HOST, F_STATS_VQ, F_DEFLATE_ON_OOM];

    fn validate(features: &virtio::Features<'_>) -> Result {
        if !balloon::free_pages_have_contents() {
            features.clear(F_PAGE_POISON);
        } else if !features.has(F_PAGE_POISON) {
            features.clear(F_REPORTING);
        }
        // No allocation in virtqueue_add while reporting free pages.
        features.clear(bindings::VIRTIO_RING_F_INDIRECT_DESC);
        features.clear(bindings::VIRTIO_F_ACCESS_PLATFORM);
        Ok(())
    }

    fn probe<'bound>(
        dev: &'bound virtio::Device<device::Core<'_>>,
        queues: QueueFinder<Self>,
    ) -> impl PinInit<Self::Data<'bound>, Error> + 'bound {
        try_pin_init!(VirtioBalloon {
            b: Balloon::new(dev, queues)?,
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
            VQ_INFLATE | VQ_DEFLATE => this.b.link().ack(),
            VQ_STATS => Balloon::stats_request(&this.b),
            _ => {}
        }
    }

    fn unbind<'bound>(dev: &'bound virtio::Device<device::Core<'_>>, this: Pin<&VirtioBalloon>) {
        let b = &this.b;
        Balloon::quiesce(b);
        // Every page goes back to the guest, and the host hears of each first.
        while b.link().balloon_lock.lock().num_pages > 0 {
            let left = b.link().balloon_lock.lock().num_pages;
            if b.leak(u64::from(left)) == 0 {
                // Every page left is isolated for migration: it comes back shortly.
                fsleep(Delta::from_millis(1));
            }
        }
        b.update_balloon_size();
        b.link().transport.delete(dev);
    }

    fn shutdown<'bound>(_dev: &'bound virtio::Device<device::Core<'_>>, this: Pin<&VirtioBalloon>) {
        Balloon::quiesce(&this.b);
    }

    /// Suspend is not supported yet: refuse it rather than lose the queues under the driver's
    /// feet (the core resets the device on resume).
    fn freeze<'bound>(
        dev: &'bound virtio::Device<device::Core<'_>>,
        _this: Pin<&VirtioBalloon>,
    ) -> Result {
        dev_err!(
            dev.as_ref(),
            "suspend is not supported by this driver yet\n"
        );
        Err(EOPNOTSUPP)
    }
}

kernel::module_virtio_driver! {
    type: BalloonDriver,
    name: "virtio_balloon_rust",
    authors: ["The virtio-balloon Rust authors"],
    description: "Virtio memory balloon driver (Rust)",
    license: "GPL",
}
