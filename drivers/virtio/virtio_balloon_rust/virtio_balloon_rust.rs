// SPDX-License-Identifier: GPL-2.0

//! Virtio memory balloon driver, written in Rust.
//!
//! The host asks the guest to give up memory by raising `num_pages` in the config space; the
//! driver allocates pages, tells the host their frame numbers on the inflate queue, and reports
//! its size in `actual`. Lowering `num_pages` gives pages back through the deflate queue.
//!
//! It follows `drivers/virtio/virtio_balloon.c`: the same features, wire formats, queue order,
//! work items, lock rules and accounting. By concern:
//!
//! | file | concern |
//! |---|---|
//! | `size.rs` | inflate and deflate towards the host's target, `actual`, page migration |
//! | `stats.rs` | the statistics queue |
//! | `oom.rs` | deflate on OOM, and when the balloon may grow again |
//! | `hinting.rs` | free page hinting (migration) and the shrinker that returns hinted blocks |
//! | `reporting.rs` | free page reporting |
//! | `wakeup.rs` | holding the system awake while the balloon changes |
//!
//! The state that needs the device's queues ([`Balloon`]) exists only while the device is live:
//! probe or restore create it with the queues and register what reaches it (OOM notifier,
//! shrinker, page reporting); unbind, freeze and shutdown unregister all of that, stop the work
//! and delete the queues before they drop it ([`Live::stop`]).
//!
//! Where it differs from the C driver (each is an improvement; see
//! `Documentation/driver-api/virtio/virtio_balloon_rust.rst`): it keeps a reserve of available
//! memory the balloon does not take; after an OOM deflate it does not re-inflate until the
//! pressure is over (no inflate/OOM ping-pong); a page the host was not told about never
//! changes hands; and it says so, rate-limited, when the host stops answering.

mod hinting;
mod oom;
mod reporting;
mod size;
mod stats;
mod wakeup;

use core::mem::offset_of;
use kernel::{
    balloon::{self, BalloonPages},
    bindings, device, new_mutex, new_spinlock_irq, oom as oom_notifier, page_reporting,
    prelude::*,
    shrinker::Shrinker,
    sync::{Arc, Mutex, SpinLockIrq},
    time::{Delta, Instant, Monotonic},
    virtio::{self, ConfigField, PageQueue, QueueFinder, QueueInfo, Virtqueue},
    workqueue::{
        self, impl_has_delayed_work, impl_has_work, new_delayed_work, new_work, DelayedWork,
        OwnedQueue, Work, WorkItem,
    },
};

/// Balloon page frames are 4 KiB, whatever the guest page size.
const PAGES_PER_PAGE: u32 = (kernel::page::PAGE_SIZE >> bindings::VIRTIO_BALLOON_PFN_SHIFT) as u32;

const F_MUST_TELL_HOST: u32 = bindings::VIRTIO_BALLOON_F_MUST_TELL_HOST;
const F_STATS_VQ: u32 = bindings::VIRTIO_BALLOON_F_STATS_VQ;
const F_DEFLATE_ON_OOM: u32 = bindings::VIRTIO_BALLOON_F_DEFLATE_ON_OOM;
const F_FREE_PAGE_HINT: u32 = bindings::VIRTIO_BALLOON_F_FREE_PAGE_HINT;
const F_PAGE_POISON: u32 = bindings::VIRTIO_BALLOON_F_PAGE_POISON;
const F_REPORTING: u32 = bindings::VIRTIO_BALLOON_F_REPORTING;

type Config = bindings::virtio_balloon_config;

/// The config space is little-endian even on legacy devices ("unlike all other devices").
const CFG_NUM_PAGES: ConfigField = ConfigField::le32(offset_of!(Config, num_pages), None);
const CFG_ACTUAL: ConfigField = ConfigField::le32(offset_of!(Config, actual), None);
const CFG_FREE_PAGE_HINT_CMD_ID: ConfigField =
    ConfigField::le32(offset_of!(Config, __bindgen_anon_1), Some(F_FREE_PAGE_HINT));
const CFG_POISON_VAL: ConfigField =
    ConfigField::le32(offset_of!(Config, poison_val), Some(F_PAGE_POISON));

/// Queue slots, in `find_vqs` order. Transports number only the named slots, densely, so
/// the device's index of the hint and reporting queues depends on what was negotiated, as in
/// the C driver.
const VQ_INFLATE: usize = 0;
const VQ_DEFLATE: usize = 1;
const VQ_STATS: usize = 2;
const VQ_FREE_PAGE: usize = 3;
const VQ_REPORTING: usize = 4;

kernel::virtio_device_table!(
    BALLOON_TABLE,
    [virtio::DeviceId::new(bindings::VIRTIO_ID_BALLOON)]
);

/// At most one message per interval for a recurring condition, with a count of the ones
/// suppressed in between.
struct RateLimit {
    last: Option<Instant<Monotonic>>,
    suppressed: u32,
}

impl RateLimit {
    const fn new() -> Self {
        Self {
            last: None,
            suppressed: 0,
        }
    }

    /// `Some(suppressed since the last message)` when a message may go out now.
    fn allow(&mut self, interval: Delta) -> Option<u32> {
        let now = Instant::<Monotonic>::now();
        match self.last {
            Some(last) if now - last < interval => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(core::mem::take(&mut self.suppressed))
            }
        }
    }
}

/// Interval of the rate-limited messages.
const MESSAGE_INTERVAL: Delta = Delta::from_secs(5);

/// The driver's state, shared by its work items and callbacks.
#[pin_data]
struct Balloon {
    /// The pages in the balloon, and the queues that tell the host about them.
    #[pin]
    pages: BalloonPages<size::PfnQueues>,
    #[pin]
    size: size::Sizing,
    stats_vq: Option<Virtqueue<stats::StatsBuf>>,
    #[pin]
    pressure: oom::Pressure,
    #[pin]
    hint: hinting::Hinting,
    reporting_vq: Option<PageQueue>,
    #[pin]
    reporting_msg: Mutex<RateLimit>,
    /// Set when the device goes away: no more work is queued.
    #[pin]
    stop_update: SpinLockIrq<bool>,
    #[pin]
    wakeup: wakeup::Wakeup,
    #[pin]
    size_work: Work<Balloon, 0>,
    #[pin]
    stats_work: Work<Balloon, 1>,
    #[pin]
    hint_work: Work<Balloon, 2>,
    /// Re-queues the size work after a back-off (see `oom.rs`).
    #[pin]
    retry_work: DelayedWork<Balloon, 3>,
}

impl_has_work! {
    impl HasWork<Self, 0> for Balloon { self.size_work }
    impl HasWork<Self, 1> for Balloon { self.stats_work }
    impl HasWork<Self, 2> for Balloon { self.hint_work }
}

impl_has_delayed_work! {
    impl HasDelayedWork<Self, 3> for Balloon { self.retry_work }
}

impl WorkItem<0> for Balloon {
    type Pointer = Arc<Balloon>;

    fn run(this: Arc<Balloon>) {
        let _awake = this.wakeup.process(this.vdev(), wakeup::Event::Size);
        Balloon::update_balloon_size_work(&this);
    }
}

impl WorkItem<1> for Balloon {
    type Pointer = Arc<Balloon>;

    fn run(this: Arc<Balloon>) {
        let _awake = this.wakeup.process(this.vdev(), wakeup::Event::Stats);
        this.stats_handle_request();
    }
}

impl WorkItem<2> for Balloon {
    type Pointer = Arc<Balloon>;

    fn run(this: Arc<Balloon>) {
        this.report_free_page_work();
    }
}

impl WorkItem<3> for Balloon {
    type Pointer = Arc<Balloon>;

    fn run(this: Arc<Balloon>) {
        Balloon::queue_size_work(&this);
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
        let has = |f| dev.has_feature(f);
        let named = |f, name: &'static CStr| has(f).then_some(name);
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
                name: named(F_STATS_VQ, c"stats"),
                callback: true,
            },
            // Polled: no interrupt.
            QueueInfo {
                name: named(F_FREE_PAGE_HINT, c"free_page_vq"),
                callback: false,
            },
            QueueInfo {
                name: named(F_REPORTING, c"reporting_vq"),
                callback: true,
            },
        ];
        let (vq_set, mut vqs) = finder.find_vqs(dev, &queues)?;
        let mut take = |slot: usize| vqs[slot].take().ok_or(ENODEV);
        let inflate_vq = Virtqueue::new(take(VQ_INFLATE)?)?;
        let deflate_vq = Virtqueue::new(take(VQ_DEFLATE)?)?;
        let stats_vq = match has(F_STATS_VQ) {
            true => Some(Virtqueue::new(take(VQ_STATS)?)?),
            false => None,
        };
        let hint_vq = match has(F_FREE_PAGE_HINT) {
            true => Some(PageQueue::new(take(VQ_FREE_PAGE)?)?),
            false => None,
        };
        let reporting_vq = match has(F_REPORTING) {
            true => Some(PageQueue::new(take(VQ_REPORTING)?)?),
            false => None,
        };
        // A hint run needs a slot for a block and one kept for the stop id.
        if hint_vq.as_ref().is_some_and(|vq| vq.vring_size() < 2) {
            dev_err!(
                dev.as_ref(),
                "free page hint queue has fewer than 2 entries\n"
            );
            return Err(ENOSPC);
        }
        // Without deflate-on-OOM the host may keep ballooned memory for good, so it leaves the
        // guest's managed memory (MemTotal drops). With it, the guest can take it back.
        let adjust_managed = !has(F_DEFLATE_ON_OOM);

        Arc::pin_init(
            try_pin_init!(Balloon {
                pages <- BalloonPages::new(
                    adjust_managed,
                    size::PfnQueues::new(dev, vq_set, inflate_vq, deflate_vq)?,
                ),
                size <- size::Sizing::new()?,
                stats_vq,
                pressure <- oom::Pressure::new(),
                hint <- hinting::Hinting::new(hint_vq),
                reporting_vq,
                reporting_msg <- new_mutex!(RateLimit::new()),
                stop_update <- new_spinlock_irq!(false),
                wakeup <- wakeup::Wakeup::new(),
                size_work <- new_work!("virtio_balloon_rust::size"),
                stats_work <- new_work!("virtio_balloon_rust::stats"),
                hint_work <- new_work!("virtio_balloon_rust::hint"),
                retry_work <- new_delayed_work!("virtio_balloon_rust::retry"),
            }? Error),
            GFP_KERNEL,
        )
    }

    /// The inflate and deflate queues, and `balloon_lock`, for talking to the host.
    fn pfn_queues(&self) -> &size::PfnQueues {
        self.pages.migrator()
    }

    /// The device, for messages.
    fn dev(&self) -> &device::Device {
        self.pfn_queues().dev()
    }

    /// The virtio device, for wakeup events.
    fn vdev(&self) -> &virtio::Device {
        self.pfn_queues().vdev()
    }

    fn has_feature(&self, bit: u32) -> bool {
        self.pfn_queues().has_feature(bit)
    }

    /// Stops the work items: nothing queues them any more, and none runs.
    fn quiesce(this: &Arc<Self>) {
        *this.stop_update.lock() = true;
        // Nothing queues work any more (every enqueue checks `stop_update` under its lock);
        // the retry goes first, as it queues the size work.
        workqueue::cancel_delayed_sync::<Self, 3>(this);
        workqueue::cancel_sync::<Self, 0>(this);
        workqueue::cancel_sync::<Self, 1>(this);
        workqueue::cancel_sync::<Self, 2>(this);
        // The cancelled work cannot end its wakeup event any more.
        this.wakeup.release(this.vdev());
    }
}

/// What the driver registered with the rest of the kernel.
struct Registrations {
    reporting: Option<page_reporting::Registration<Balloon>>,
    oom: Option<oom_notifier::Registration<Balloon>>,
    shrinker: Option<Shrinker<Balloon>>,
}

impl Registrations {
    /// Unregisters page reporting and the shrinker, and returns the OOM notifier's
    /// registration: the caller drops it once the balloon is empty.
    fn drop_all_but_oom(self) -> Option<oom_notifier::Registration<Balloon>> {
        let Self {
            reporting,
            oom,
            shrinker,
        } = self;
        drop(reporting);
        drop(shrinker);
        oom
    }
}

/// The device while it is live: from probe or restore to unbind, freeze or shutdown.
struct Live {
    balloon: Arc<Balloon>,
    regs: Registrations,
}

impl Live {
    /// Sets up the queues and the balloon, and registers what reaches it (probe, restore).
    fn start(
        dev: &virtio::Device<device::Core<'_>>,
        queues: QueueFinder<BalloonDriver>,
    ) -> Result<Self> {
        let balloon = Balloon::new(dev, queues)?;
        let has = |f| dev.has_feature(f);
        // The host may read the poison value from DRIVER_OK on: write it now, once.
        if has(F_PAGE_POISON) {
            let val = kernel::balloon::poison_value().unwrap_or(0);
            balloon
                .pfn_queues()
                .vq_set()
                .write_config_le32(CFG_POISON_VAL, val)?;
        }
        let shrinker = match has(F_FREE_PAGE_HINT) {
            true => Some(Shrinker::register(c"virtio-balloon", balloon.clone())?),
            false => None,
        };
        let oom = match has(F_DEFLATE_ON_OOM) {
            true => Some(oom_notifier::Registration::new(
                balloon.clone(),
                oom::NOTIFY_PRIORITY,
            )?),
            false => None,
        };
        let reporting = match has(F_REPORTING) {
            true => Some(reporting::register(&balloon)?),
            false => None,
        };
        Ok(Live {
            balloon,
            regs: Registrations {
                reporting,
                oom,
                shrinker,
            },
        })
    }

    /// Ends the live device, in the C driver's order except for the OOM notifier: unregisters
    /// page reporting and the shrinker, stops the work items, gives every page back to the
    /// guest (telling the host first) if `give_back`, unregisters the OOM notifier (only now:
    /// until the balloon is empty it may still help an allocation), and deletes the queues.
    /// Returns the balloon, with the pages not given back: dropping it frees them (the device
    /// is reset and has forgotten them).
    ///
    /// A `Live` dropped without `stop` (only if probe fails after [`Live::start`], before
    /// the device is ready) unregisters on drop and holds no pages.
    fn stop(self, dev: &virtio::Device<device::Core<'_>>, give_back: bool) -> Arc<Balloon> {
        let Live { balloon, regs } = self;
        let oom = regs.drop_all_but_oom();
        Balloon::quiesce(&balloon);
        if give_back {
            // The OOM notifier stays while the balloon empties: an allocation that fails
            // meanwhile still gets balloon pages. The C driver unregisters it first, and a
            // process that allocates then can be OOM-killed with the balloon still full.
            balloon.deflate_all();
        }
        // Waits for a notifier call in flight; none reaches the balloon after this.
        drop(oom);
        if give_back {
            balloon.update_balloon_size();
        }
        balloon.pfn_queues().vq_set().delete(dev);
        // Only now, with the device reset, do the hinted blocks go back: none is on a ring.
        balloon.return_hints(usize::MAX);
        balloon
    }
}

/// Per-device data of the driver.
#[pin_data]
struct VirtioBalloon {
    /// `None` while suspended, and after shutdown. The atomic callbacks read it under the
    /// lock; teardown takes it out, so nothing reaches a balloon whose queues are deleted.
    #[pin]
    live: SpinLockIrq<Option<Live>>,
    /// The hint work runs here: freezable, CPU-intensive, per-CPU, as in the C driver. It
    /// lives as long as the binding (the negotiated features do not change across suspend)
    /// and is destroyed with the device data, after `unbind` cancelled the work.
    hint_wq: Option<OwnedQueue>,
    /// The balloon after `shutdown`, with its pages: only an unbind (after kexec's shutdown,
    /// say) frees them.
    #[pin]
    shut_down: Mutex<Option<Arc<Balloon>>>,
}

impl VirtioBalloon {
    /// The live balloon, if any.
    fn balloon(&self) -> Option<Arc<Balloon>> {
        self.live.lock().as_ref().map(|live| live.balloon.clone())
    }

    /// The host changed the config space, or the driver just came up (atomic context).
    fn changed(&self) {
        let live = self.live.lock();
        let Some(Live { balloon, .. }) = &*live else {
            return;
        };
        balloon.size.config_changed();
        // Held while queueing, so `quiesce` cannot miss a work item queued here.
        let stop = balloon.stop_update.lock();
        if *stop {
            return;
        }
        Balloon::enqueue_size_work(balloon);
        if let Some(wq) = &self.hint_wq {
            // The cmd id is read in the work (config reads sleep); queue it only when no read
            // is pending, as the C driver does.
            if balloon.hint.cmd_id_changed() {
                let _ = wq.enqueue::<Arc<Balloon>, 2>(balloon.clone());
            }
        }
    }

    /// Takes the live device out and ends it (see [`Live::stop`]); returns the balloon.
    fn stop(
        &self,
        dev: &virtio::Device<device::Core<'_>>,
        give_back: bool,
    ) -> Option<Arc<Balloon>> {
        let live = self.live.lock().take();
        live.map(|live| live.stop(dev, give_back))
    }
}

struct BalloonDriver;

impl virtio::Driver for BalloonDriver {
    type Data<'bound> = VirtioBalloon;
    type Config = Config;

    const ID_TABLE: virtio::IdTable = &BALLOON_TABLE;

    const FEATURES: &'static [u32] = &[
        F_MUST_TELL_HOST,
        F_STATS_VQ,
        F_DEFLATE_ON_OOM,
        F_FREE_PAGE_HINT,
        F_PAGE_POISON,
        F_REPORTING,
    ];

    fn validate(features: &virtio::Features<'_>) -> Result {
        if !balloon::free_pages_have_contents() {
            features.clear(F_PAGE_POISON);
        } else if !features.has(F_PAGE_POISON) {
            // Reported pages would come back zeroed, but the guest expects its pattern.
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
        let hint_wq = match dev.has_feature(F_FREE_PAGE_HINT) {
            true => OwnedQueue::new(
                c"balloon-wq",
                workqueue::flags::FREEZABLE
                    | workqueue::flags::CPU_INTENSIVE
                    | workqueue::flags::PERCPU,
                0,
            )
            .map(Some),
            false => Ok(None),
        };
        let live = hint_wq.and_then(|wq| Ok((Live::start(dev, queues)?, wq)));
        let (live, hint_wq) = match live {
            Ok((live, wq)) => {
                // Only creates `power/wakeup`: events hold the system awake once user space
                // enables it.
                dev.set_wakeup_capable(true);
                (Ok(live), wq)
            }
            Err(e) => (Err(e), None),
        };
        try_pin_init!(VirtioBalloon {
            live <- new_spinlock_irq!(Some(live?)),
            hint_wq,
            shut_down <- new_mutex!(None),
        }? Error)
    }

    fn ready<'bound>(
        dev: &'bound virtio::Device<device::Core<'_>>,
        this: Pin<&VirtioBalloon>,
    ) -> Result {
        let balloon = this.balloon().ok_or(ENODEV)?;
        // Prime the stats queue: the host returns the buffer when it wants an update. The C
        // driver fails the probe (or the restore) when this fails, and so do we.
        balloon.prime_stats().inspect_err(|e| {
            dev_err!(dev.as_ref(), "cannot set up the stats queue: {:?}\n", e);
        })?;
        // Empty after a restore: say so, in case the host missed it before the reset.
        balloon.update_balloon_size();
        // The host may have set a target (or a hint cmd id) before the driver came.
        if balloon.towards_target(true) != 0 {
            this.changed();
        }
        // The size work may have cached a target that changed before the read above: it
        // reads afresh next time.
        balloon.size.config_changed();
        Ok(())
    }

    fn config_changed(this: Pin<&VirtioBalloon>) {
        this.changed();
    }

    fn queue_done(this: Pin<&VirtioBalloon>, slot: usize) {
        // Waiters on the inflate, deflate and reporting queues are woken by the bus; the hint
        // queue is polled.
        if slot == VQ_STATS {
            if let Some(Live { balloon, .. }) = &*this.live.lock() {
                Balloon::stats_request(balloon);
            }
        }
    }

    fn unbind<'bound>(dev: &'bound virtio::Device<device::Core<'_>>, this: Pin<&VirtioBalloon>) {
        // Every page goes back to the guest, and the host hears of each first.
        drop(this.stop(dev, true));
        // After a shutdown (kexec), the pages it kept go back now.
        drop(this.shut_down.lock().take());
    }

    /// As the C driver: quiesce without giving pages back; the bus then resets the device.
    /// The pages stay allocated (a reboot or poweroff follows): freeing them one by one would
    /// only slow it down.
    fn shutdown<'bound>(dev: &'bound virtio::Device<device::Core<'_>>, this: Pin<&VirtioBalloon>) {
        *this.shut_down.lock() = this.stop(dev, false);
    }

    /// Suspend: the balloon empties (telling the host) and the device goes quiet until
    /// `restore`. Unlike the C driver, which leaves them registered and relies on frozen work
    /// queues, the OOM notifier, shrinker and page reporting go too: nothing can reach the
    /// deleted queues.
    fn freeze<'bound>(
        dev: &'bound virtio::Device<device::Core<'_>>,
        this: Pin<&VirtioBalloon>,
    ) -> Result {
        drop(this.stop(dev, true));
        Ok(())
    }

    /// Resume: new queues and a new, empty balloon; `ready` then primes the stats queue and
    /// inflates to the host's target.
    fn restore<'bound>(
        dev: &'bound virtio::Device<device::Core<'_>>,
        this: Pin<&VirtioBalloon>,
        queues: QueueFinder<Self>,
    ) -> Result {
        let live = Live::start(dev, queues)?;
        // Nothing can be there (`find_vqs` refuses a device with live queues), but an old
        // device must not be dropped under the spinlock, nor without its teardown.
        let old = this.live.lock().replace(live);
        if let Some(old) = old {
            dev_warn!(dev.as_ref(), "restore found the device live\n");
            drop(old.stop(dev, true));
        }
        Ok(())
    }
}

kernel::module_virtio_driver! {
    type: BalloonDriver,
    name: "virtio_balloon_rust",
    authors: ["The virtio-balloon Rust authors"],
    description: "Virtio memory balloon driver (Rust)",
    license: "GPL",
}
