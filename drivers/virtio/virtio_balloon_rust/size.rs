// SPDX-License-Identifier: GPL-2.0

//! Inflate and deflate towards the host's target, report `actual`, and tell the host when
//! compaction moves a ballooned page.

use super::{
    wakeup, Balloon, RateLimit, CFG_ACTUAL, CFG_NUM_PAGES, F_DEFLATE_ON_OOM, MESSAGE_INTERVAL,
    PAGES_PER_PAGE,
};
use core::cmp::min;
use kernel::{
    balloon::{self, BalloonPage},
    bindings, device, new_mutex,
    prelude::*,
    sync::{aref::ARef, Arc, Mutex},
    time::Delta,
    virtio::{self, Transport, Virtqueue},
    vmstat, workqueue,
};

/// Most page frame numbers in one inflate or deflate message. Firecracker and Cloud
/// Hypervisor drop longer ones.
const ARRAY_PFNS_MAX: usize = 256;
/// Bytes in a balloon page.
const BALLOON_PAGE: u64 = 1 << bindings::VIRTIO_BALLOON_PFN_SHIFT;

type PfnBuf = [u32; ARRAY_PFNS_MAX];

/// The balloon leaves the guest at least this share of its memory available (1/8), but
/// never less than `RESERVE_MIN` nor more than `RESERVE_MAX`. The C driver has no such floor
/// and inflates until the guest OOM-kills its own processes.
const RESERVE_SHIFT: u32 = 3;
const RESERVE_MIN: u64 = 64 << 20;
const RESERVE_MAX: u64 = 1 << 30;

/// State protected by `balloon_lock`: the balloon size and the message buffers.
struct Inner {
    /// Balloon size in 4 KiB balloon pages, as reported in `actual`.
    num_pages: u32,
    /// The PFN message buffer. `None` only while it is on a queue inside
    /// [`HostLink::send`], which always puts it back.
    pfns: Option<KBox<PfnBuf>>,
    /// Pages in flight: allocated for an inflate or taken out for a deflate, until the host
    /// was told (room for one message).
    moving: KVec<BalloonPage>,
}

/// What telling the host about pages needs: the inflate and deflate queues and
/// `balloon_lock`. The balloon page list owns it, so that page migration
/// (which tells the host too) always finds it alive.
#[pin_data]
pub(super) struct HostLink {
    dev: ARef<virtio::Device>,
    /// Byte order of the queue payloads, fixed while bound.
    pub(super) order: virtio::ByteOrder,
    transport: Arc<Transport>,
    inflate_vq: Virtqueue<PfnBuf>,
    deflate_vq: Virtqueue<PfnBuf>,
    /// Held across a whole inflate or deflate, including the wait for the host.
    #[pin]
    balloon_lock: Mutex<Inner>,
    #[pin]
    stall_msg: Mutex<RateLimit>,
}

impl HostLink {
    pub(super) fn new(
        dev: &virtio::Device<device::Core<'_>>,
        transport: Arc<Transport>,
        inflate_vq: Virtqueue<PfnBuf>,
        deflate_vq: Virtqueue<PfnBuf>,
    ) -> Result<impl PinInit<Self>> {
        let pfns = KBox::new([0u32; ARRAY_PFNS_MAX], GFP_KERNEL)?;
        let moving = KVec::with_capacity(ARRAY_PFNS_MAX, GFP_KERNEL)?;
        let order = dev.byte_order();
        let dev: ARef<virtio::Device> = dev.into();
        Ok(pin_init!(HostLink {
            dev,
            order,
            transport,
            inflate_vq,
            deflate_vq,
            balloon_lock <- new_mutex!(Inner {
                num_pages: 0,
                pfns: Some(pfns),
                moving,
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

    pub(super) fn transport(&self) -> &Transport {
        &self.transport
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
        // Waits as the C driver's wait_event() (uninterruptibly), but says so when the host
        // holds the message for long: until it answers, it may still act on it.
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
        // `None`: deleted under us; the device is reset and will never answer.
        match used {
            Some((buf, _)) => {
                *pfns = Some(buf);
                true
            }
            None => false,
        }
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
    puff: Mutex<RateLimit>,
}

impl Sizing {
    pub(super) fn new() -> Result<impl PinInit<Self>> {
        let filling = KVec::with_capacity(ARRAY_PFNS_MAX, GFP_KERNEL)?;
        Ok(pin_init!(Sizing {
            filling <- new_mutex!(filling),
            puff <- new_mutex!(RateLimit::new()),
        }))
    }
}

impl Balloon {
    /// How many 4 KiB pages the balloon must grow (positive) or shrink (negative) by.
    pub(super) fn towards_target(&self) -> i64 {
        let Ok(num_pages) = self.link().transport().read_config_le32(CFG_NUM_PAGES) else {
            return 0;
        };
        // ALIGN(): whole guest pages, wrapping like the C driver on absurd values.
        let target = num_pages.wrapping_add(PAGES_PER_PAGE - 1) & !(PAGES_PER_PAGE - 1);
        i64::from(target) - i64::from(self.num_pages())
    }

    /// Balloon size in 4 KiB pages.
    pub(super) fn num_pages(&self) -> u32 {
        self.link().balloon_lock.lock().num_pages
    }

    /// Reports the balloon size to the host.
    pub(super) fn update_balloon_size(&self) {
        // Fails only once the device is gone, when there is nobody to tell.
        let _ = self
            .link()
            .transport()
            .write_config_le32(CFG_ACTUAL, self.num_pages());
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
        let mut diff = this.towards_target();
        let mut retry = None;
        if diff > 0 {
            match this.inflate_allowed(diff.unsigned_abs()) {
                Ok(room) => {
                    let got = this.fill(min(diff.unsigned_abs(), room));
                    diff -= i64::from(got);
                    if got == 0 {
                        retry = Some(this.pressure.floor_backoff());
                    } else {
                        this.pressure.inflated();
                    }
                }
                Err(wait) => retry = Some(wait),
            }
        } else if diff < 0 {
            diff += i64::from(this.leak(diff.unsigned_abs()));
        }
        this.update_balloon_size();
        match retry {
            Some(wait) => Self::retry_size_work(this, wait),
            None if diff != 0 => Self::queue_size_work(this),
            None => {}
        }
    }

    pub(super) fn out_of_puff(&self, n: u64) {
        if let Some(suppressed) = self.size.puff.lock().allow(MESSAGE_INTERVAL) {
            dev_info!(
                self.dev(),
                "Out of puff! Can't get {} pages without starving the guest \
                 (MemAvailable {} MiB; {} messages suppressed)\n",
                n,
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

    /// Inflates by up to `num` 4 KiB pages (at most one message); returns how many.
    fn fill(&self, num: u64) -> u32 {
        // No message buffer: a send was cut off by the device going away.
        if self.link().balloon_lock.lock().pfns.is_none() {
            return 0;
        }
        let num = min(num, ARRAY_PFNS_MAX as u64) as u32;
        let mut new_pages = self.size.filling.lock();
        let mut got = 0;
        while got < num {
            // Within the capacity reserved at probe, `push` does not allocate.
            let added = BalloonPage::alloc().is_some_and(|p| new_pages.push(p, GFP_NOWAIT).is_ok());
            if !added {
                self.out_of_puff(u64::from(num - got));
                break;
            }
            got += PAGES_PER_PAGE;
        }
        if new_pages.is_empty() {
            return 0;
        }

        let link = self.link();
        let mut inner = link.balloon_lock.lock();
        let inner = &mut *inner;
        let mut n = 0;
        for page in new_pages.iter() {
            n = link.put_pfns(&mut inner.pfns, n, page.pfn());
        }
        // The host hears of the pages before they enter the balloon: if it cannot be told,
        // they go straight back to the guest and nothing changed. Deflate and migration take
        // `balloon_lock` too, so they never see a page the host has not acknowledged.
        if !link.send(&link.inflate_vq, &mut inner.pfns, n) {
            new_pages.clear();
            return 0;
        }
        for page in new_pages.drain_all() {
            self.pages.enqueue(page);
            inner.num_pages += PAGES_PER_PAGE;
        }
        n as u32
    }

    /// Deflates by up to `num` 4 KiB pages (at most one message); returns how many.
    pub(super) fn leak(&self, num: u64) -> u32 {
        let link = self.link();
        let mut inner = link.balloon_lock.lock();
        let inner = &mut *inner;
        // No message buffer: a send was cut off by the device going away; nothing can be told.
        if inner.pfns.is_none() {
            return 0;
        }
        let num = min(min(num, ARRAY_PFNS_MAX as u64), u64::from(inner.num_pages)) as u32;
        let mut n = 0;
        while (n as u32) < num {
            let Some(page) = self.pages.dequeue() else {
                break;
            };
            n = link.put_pfns(&mut inner.pfns, n, page.pfn());
            // Capacity for a whole message was reserved at probe: this cannot fail.
            let _ = inner.moving.push(page, GFP_NOWAIT);
        }
        if n == 0 {
            return 0;
        }
        // Tell the host before the pages go back to the guest's allocator (MUST_TELL_HOST).
        // If it cannot be told, the pages stay in the balloon: the host still has them.
        if !link.send(&link.deflate_vq, &mut inner.pfns, n) {
            for page in inner.moving.drain_all() {
                self.pages.enqueue(page);
            }
            return 0;
        }
        inner.num_pages -= n as u32;
        inner.moving.clear();
        n as u32
    }

    /// Deflates the whole balloon (unbind), telling the host about every page.
    pub(super) fn deflate_all(&self) {
        let mut idle = 0;
        loop {
            let left = self.num_pages();
            if left == 0 {
                return;
            }
            if self.leak(u64::from(left)) != 0 {
                idle = 0;
                continue;
            }
            // Either every page left is isolated for migration (it comes back shortly), or the
            // host cannot be told. Then the pages stay in the balloon until the device is
            // reset, which makes the host forget them, and are freed after that.
            idle += 1;
            if !self.link().deflate_vq.is_live() || idle > 1000 {
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
