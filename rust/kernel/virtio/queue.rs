// SPDX-License-Identifier: GPL-2.0

//! Virtqueues: setting them up ([`QueueFinder`]), the set of a device's live queues
//! ([`VqSet`]), and the typed queues drivers use ([`Virtqueue`], [`PageQueue`]).
//!
//! See the [virtio module documentation](super) for how long queues live.

use super::{Adapter, Device, Driver, MAX_QUEUES};
use crate::{
    bindings, device,
    error::to_result,
    prelude::*,
    sync::{
        new_condvar, new_mutex, new_spinlock_irq, Arc, CondVar, Mutex, MutexGuard, SpinLockIrq,
    },
    time::{Delta, Instant, Monotonic},
    transmute::{AsBytes, FromBytes},
    types::ForeignOwnable,
};
use core::{
    marker::PhantomData,
    mem::size_of,
    ptr::{addr_of_mut, NonNull},
};

/// Lets driver `T` set up its device's queues; the bus hands it to [`Driver::probe`] and
/// [`Driver::restore`] only, so queue callbacks always reach `T`'s data.
///
/// # Invariants
///
/// `vdev` is the device whose `probe` or `restore` callback of `T` the finder was made for.
/// The raw pointer also makes the finder neither `Send` nor `Sync`, so it cannot leave that
/// callback's thread for a work item or the driver's shared data.
pub struct QueueFinder<T: ?Sized> {
    vdev: *mut bindings::virtio_device,
    _driver: PhantomData<fn(&T)>,
}

impl<T: Driver + 'static> QueueFinder<T> {
    /// The finder for `T`'s `probe` or `restore` callback on `vdev`.
    pub(super) fn new(vdev: *mut bindings::virtio_device) -> Self {
        // INVARIANT: The bus makes a finder only in `T`'s `probe` and `restore` callbacks, for
        // the device they got.
        Self {
            vdev,
            _driver: PhantomData,
        }
    }

    /// Sets up the queues named in `queues`, in order. A queue without a name gets no index
    /// on the device and no handle; one with `callback` set calls [`Driver::queue_done`] with
    /// its position in the list.
    ///
    /// Fails with `EINVAL` for another device than the finder's, and with `EBUSY` when the
    /// device still has live queues.
    pub fn find_vqs(
        self,
        dev: &Device<device::Core<'_>>,
        queues: &[QueueInfo],
    ) -> Result<(Arc<VqSet>, KVec<Option<VqHandle>>)> {
        if queues.len() > MAX_QUEUES {
            return Err(EINVAL);
        }
        let vdev = dev.as_raw();
        // The queue callbacks of `T` reach `T`'s data through this device's drvdata: only the
        // device `T` is bound to may get them.
        if vdev != self.vdev {
            return Err(EINVAL);
        }
        // SAFETY: By the type invariant of `Device`, `vdev` is valid; `priv` belongs to this
        // abstraction while the driver is bound (Core: we are in its `probe` or `restore`).
        if !unsafe { (*vdev).priv_ }.is_null() {
            return Err(EBUSY);
        }
        // Everything that can fail is allocated before the queues exist.
        let mut handles = KVec::with_capacity(queues.len(), GFP_KERNEL)?;
        let vq_set = Arc::pin_init(
            pin_init!(VqSet {
                vdev,
                config_size: size_of::<T::Config>(),
                state <- new_mutex!(State {
                    alive: false,
                    bus_ref: false,
                    queues: [None; MAX_QUEUES],
                }),
                used <- new_spinlock_irq!(0),
                used_cv <- new_condvar!(),
            }),
            GFP_KERNEL,
        )?;
        let mut info = [bindings::virtqueue_info::default(); MAX_QUEUES];
        for (i, q) in queues.iter().enumerate() {
            info[i].name = q.name.map_or(core::ptr::null(), |n| n.as_char_ptr());
            info[i].callback = if q.callback {
                Some(Adapter::<T>::QUEUE_CALLBACKS[i])
            } else {
                None
            };
        }
        let mut raw = [core::ptr::null_mut(); MAX_QUEUES];
        // The names are `'static`, and the callbacks are those of `T`, the driver bound to `dev`.
        // SAFETY: `vdev` is valid (type invariant of `Device`); the arrays hold `queues.len()`
        // entries.
        to_result(unsafe {
            bindings::virtio_find_vqs(
                vdev,
                queues.len() as u32,
                raw.as_mut_ptr(),
                info.as_mut_ptr(),
                core::ptr::null_mut(),
            )
        })?;
        {
            let mut state = vq_set.state.lock();
            // INVARIANT: `virtio_find_vqs` set up the queues of `vdev`, a valid device bound to
            // `T`. The bus reference is stored in `priv` just below, with nothing in between
            // that could release it.
            state.alive = true;
            state.bus_ref = true;
        }
        // The bus holds one reference in `priv`, so it can delete the queues at `remove` even if
        // the driver still holds (or leaks) its own.
        //
        // SAFETY: By the type invariant of `Device`, `vdev` is valid; `priv` was NULL (checked
        // above). Queue callbacks read it concurrently (volatile).
        unsafe {
            core::ptr::write_volatile(
                addr_of_mut!((*vdev).priv_),
                vq_set.clone().into_foreign().cast(),
            )
        };
        for (slot, vq) in raw.iter().take(queues.len()).enumerate() {
            let h = NonNull::new(*vq).map(|vq| VqHandle {
                vq,
                slot,
                vq_set: vq_set.clone(),
            });
            // Within the capacity reserved above: cannot fail.
            let _ = handles.push(h, GFP_NOWAIT);
        }
        Ok((vq_set, handles))
    }
}

/// One queue for [`QueueFinder::find_vqs`].
#[derive(Clone, Copy)]
pub struct QueueInfo {
    /// The queue's name; `None` skips the slot (the feature behind it was not negotiated).
    pub name: Option<&'static CStr>,
    /// Whether used buffers call [`Driver::queue_done`].
    pub callback: bool,
}

/// A queue returned by [`QueueFinder::find_vqs`], to be typed with [`Virtqueue::new`] or
/// [`PageQueue::new`].
///
/// # Invariants
///
/// `vq` is the queue in slot `slot` of `vq_set`: valid while the set is live (see [`VqSet`]).
pub struct VqHandle {
    vq: NonNull<bindings::virtqueue>,
    slot: usize,
    vq_set: Arc<VqSet>,
}

impl VqHandle {
    /// Records how the tokens left on the queue are freed when the queues are deleted.
    /// `ENODEV` once they are.
    fn claim(&self, free: unsafe fn(*mut c_void)) -> Result {
        let mut state = self.vq_set.lock_live()?;
        state.queues[self.slot] = Some(QueueEntry { vq: self.vq, free });
        Ok(())
    }
}

#[derive(Clone, Copy)]
struct QueueEntry {
    vq: NonNull<bindings::virtqueue>,
    /// Frees a buffer token of the queue's buffer type.
    free: unsafe fn(*mut c_void),
}

struct State {
    alive: bool,
    /// Whether `vdev->priv` holds the bus's reference to this set.
    bus_ref: bool,
    queues: [Option<QueueEntry>; MAX_QUEUES],
}

/// The live virtqueues of a device, and its config space, for use outside bus callbacks (work
/// items). It owns the queues (it deletes them) and, while the device is live, the bus keeps a
/// reference to it in `vdev->priv`.
///
/// See the [virtio module documentation](super) for how it ends.
///
/// # Invariants
///
/// - While `state.alive` is set, `vdev` is a valid virtio device bound to the driver whose
///   `find_vqs` created this set, and the queues `virtio_find_vqs` set up for it are valid: the
///   `vq` of every [`VqHandle`], [`Virtqueue`] and [`PageQueue`] made from this set. `alive` is
///   only read or written with `state` locked; it is cleared before the queues are deleted,
///   with `state` locked until they are, and never set again. So code that locked `state` and
///   found `alive` set may use the device and its queues until it unlocks it.
/// - Every buffer token on a queue listed in `state.queues` can be freed by that entry's `free`.
/// - `state.bus_ref` is set while `vdev->priv` holds the bus's reference to this set (from
///   `Arc::into_foreign` in `find_vqs`); whoever clears it releases that reference (or has
///   released it just before).
#[pin_data]
pub struct VqSet {
    vdev: *mut bindings::virtio_device,
    /// Size of the driver's `Config`: accesses must fall inside.
    pub(super) config_size: usize,
    #[pin]
    state: Mutex<State>,
    /// Counts queue interrupts (hard interrupt context), for [`PageQueue`] waiters.
    #[pin]
    used: SpinLockIrq<u64>,
    #[pin]
    used_cv: CondVar,
}

// SAFETY: By the type invariant, the device and queue pointers are only used with `state` locked
// while `alive`, i.e. while the driver is bound; the virtio functions called on them may be
// called from any thread.
unsafe impl Send for VqSet {}
// SAFETY: By the type invariant, every access to the device's queues and config space holds
// `state`'s lock (a mutex). The bus reference in the device's `priv` is released (`delete`,
// `kill`) only under the device lock or the parent's (Core), which serializes those too. The
// other fields are a spinlock and a condition variable.
unsafe impl Sync for VqSet {}

impl VqSet {
    /// Locks the set if its queues are still live; `ENODEV` once they are deleted. By the type
    /// invariant, the device and its queues are valid while the returned guard is held.
    fn lock_live(&self) -> Result<MutexGuard<'_, State>> {
        let state = self.state.lock();
        if !state.alive {
            return Err(ENODEV);
        }
        Ok(state)
    }

    /// Runs `f` on the device with the set locked while its queues are live; `ENODEV`
    /// afterwards. By the type invariant, the device and its queues are valid inside `f`.
    pub(super) fn with_live<R>(
        &self,
        f: impl FnOnce(*mut bindings::virtio_device) -> R,
    ) -> Result<R> {
        let _live = self.lock_live()?;
        Ok(f(self.vdev))
    }

    /// A queue of this device used buffers (hard interrupt context).
    pub(super) fn signal_used(&self) {
        *self.used.lock() += 1;
        self.used_cv.notify_all();
    }

    /// Polls `poll` until it gives a result, sleeping until a queue interrupt in between
    /// (uninterruptibly, so a pending signal cannot turn it into a busy loop). While it waits,
    /// `stalled` is called every [`STALL_INTERVAL`] with the time waited so far, so the caller
    /// can say that the device is not answering. May sleep.
    fn wait_for<R>(
        &self,
        mut poll: impl FnMut() -> Option<R>,
        mut stalled: impl FnMut(Delta),
    ) -> R {
        let start = Instant::<Monotonic>::now();
        let mut next_stall = STALL_INTERVAL;
        loop {
            // Read before polling: an interrupt after the poll changes it, so no wakeup is lost.
            let seen = *self.used.lock();
            if let Some(r) = poll() {
                return r;
            }
            let mut used = self.used.lock();
            if *used == seen {
                let _ = self
                    .used_cv
                    .wait_timeout(&mut used, crate::time::msecs_to_jiffies(1000));
            }
            drop(used);
            let waited = Instant::<Monotonic>::now() - start;
            if waited >= next_stall {
                stalled(waited);
                next_stall += STALL_INTERVAL;
            }
        }
    }

    /// Resets the device, frees the buffers still on the queues and deletes the queues. Later
    /// queue and config operations fail with `ENODEV`. Afterwards the driver may set up new
    /// queues (`restore`). Does nothing the second time, or for another device's queues.
    pub fn delete(&self, dev: &Device<device::Core<'_>>) {
        if dev.as_raw() != self.vdev {
            return;
        }
        self.delete_locked();
        // Only this set's own reference: after a `restore`, `priv` may hold a newer one.
        let had_ref = core::mem::replace(&mut self.state.lock().bus_ref, false);
        if had_ref {
            // The caller holds the device's lock or its parent's (Core), which serializes every
            // writer of `priv`; this set's queues are deleted now.
            // SAFETY: `dev` is `vdev`, valid and bound; `priv` is NULL or the reference
            // `find_vqs` stored, as `release_bus_ref` requires.
            unsafe { Self::release_bus_ref(self.vdev) };
        }
    }

    /// Drops the bus's reference in `priv`, if any, and returns it.
    ///
    /// # Safety
    ///
    /// `vdev` must be valid, and its `priv` either NULL or set by [`QueueFinder::find_vqs`].
    unsafe fn release_bus_ref(vdev: *mut bindings::virtio_device) -> Option<Arc<VqSet>> {
        // SAFETY: By the safety requirements `vdev` is valid.
        let p = unsafe { (*vdev).priv_ };
        if p.is_null() {
            return None;
        }
        // SAFETY: By the safety requirements `vdev` is valid. Queue callbacks read it
        // concurrently (volatile).
        unsafe { core::ptr::write_volatile(addr_of_mut!((*vdev).priv_), core::ptr::null_mut()) };
        // SAFETY: By the safety requirements, a non-NULL `priv` holds the reference `find_vqs`
        // leaked with `into_foreign`; it was cleared above, so it is released only once.
        Some(unsafe { Arc::<VqSet>::from_foreign(p.cast()) })
    }

    fn delete_locked(&self) {
        let Ok(mut state) = self.lock_live() else {
            return;
        };
        // INVARIANT: `alive` is cleared before the queues are deleted, and the lock is held
        // until they are.
        state.alive = false;
        // SAFETY: By the type invariant the device is valid and still bound (we were alive),
        // and no queue operation runs: they all hold this lock.
        unsafe { bindings::virtio_reset_device(self.vdev) };
        for q in state.queues.iter_mut().filter_map(|q| q.take()) {
            loop {
                // SAFETY: By the type invariant the queue is valid until `del_vqs` below; the
                // device is reset, so it no longer uses the ring.
                let token = unsafe { bindings::virtqueue_detach_unused_buf(q.vq.as_ptr()) };
                if token.is_null() {
                    break;
                }
                // SAFETY: By the type invariant, `q.free` frees every token on this queue; the
                // ring hands each token out once.
                unsafe { (q.free)(token) };
            }
        }
        // SAFETY: By the type invariant the device is valid and bound; it is reset and its
        // queues are no longer used (`alive` is clear, and we hold the lock).
        unsafe { bindings::virtio_del_vqs(self.vdev) };
    }

    /// Deletes the queues of `vdev` if they are still live and drops the bus's reference.
    ///
    /// # Safety
    ///
    /// `vdev` must be valid, and its `priv` either NULL or set by [`QueueFinder::find_vqs`].
    pub(super) unsafe fn kill(vdev: *mut bindings::virtio_device) {
        // SAFETY: By the safety requirements, which are those of `release_bus_ref`.
        if let Some(vq_set) = unsafe { Self::release_bus_ref(vdev) } {
            vq_set.state.lock().bus_ref = false;
            vq_set.delete_locked();
        }
    }
}

/// Frees a buffer token of type `KBox<B>`.
///
/// # Safety
///
/// `token` must come from `KBox::<B>::into_raw` and not be used again.
unsafe fn free_token<B>(token: *mut c_void) {
    // SAFETY: By the safety requirements.
    drop(unsafe { KBox::from_raw(token.cast::<B>()) });
}

/// A virtqueue whose buffers are `KBox<B>`.
///
/// Operations take the [`VqSet`] lock, which also serializes them as the virtio ring
/// requires. They may sleep and must not be used in atomic context.
///
/// # Invariants
///
/// `vq` is a queue of `vq_set`, valid while the set is live (see [`VqSet`]), registered in it
/// with `free_token::<B>`: every token on it comes from `KBox::<B>::into_raw`.
pub struct Virtqueue<B> {
    vq: NonNull<bindings::virtqueue>,
    vq_set: Arc<VqSet>,
    _buf: PhantomData<KBox<B>>,
}

// SAFETY: By the type invariants, the queue is only used with the `VqSet` locked while it is
// live, which any thread may do; the buffers it carries are `Send`.
unsafe impl<B: Send> Send for Virtqueue<B> {}
// SAFETY: By the type invariants, every access to the queue holds the `VqSet`'s mutex; the
// buffers it carries are `Send`, and only one thread at a time gets them back.
unsafe impl<B: Send> Sync for Virtqueue<B> {}

/// A buffer that could not be added to a queue, and why.
pub struct AddError<B>(pub Error, pub KBox<B>);

impl<B: Send> Virtqueue<B> {
    /// Types the queue of `handle` for buffers `KBox<B>`.
    pub fn new(handle: VqHandle) -> Result<Self> {
        handle.claim(free_token::<B>)?;
        // INVARIANT: By the type invariant of `VqHandle`, `vq` is a queue of `vq_set`; `claim`
        // registered it with `free_token::<B>`.
        Ok(Self {
            vq: handle.vq,
            vq_set: handle.vq_set,
            _buf: PhantomData,
        })
    }

    /// Runs `f` on the queue while it is live, with the [`VqSet`] locked; `ENODEV` once the
    /// queues are deleted. By the type invariants, the queue is valid inside `f`.
    fn with_live<R>(&self, f: impl FnOnce(*mut bindings::virtqueue) -> R) -> Result<R> {
        self.vq_set.with_live(|_| f(self.vq.as_ptr()))
    }

    fn add(&self, buf: KBox<B>, len: usize, out: bool) -> Result<(), AddError<B>> {
        if len > size_of::<B>() || len == 0 {
            return Err(AddError(EINVAL, buf));
        }
        let token = KBox::into_raw(buf);
        let r = self
            .with_live(|vq| {
                let mut sg = bindings::scatterlist::default();
                // SAFETY: `token` points to `len <= size_of::<B>()` bytes of kmalloc memory,
                // which is linearly mapped as `sg_init_one` requires.
                unsafe { bindings::sg_init_one(&mut sg, token.cast(), len as u32) };
                // The lock is a mutex, so the (indirect descriptor) allocation may sleep.
                // `sg`'s memory stays allocated until `get_buf` or `detach_unused_buf` returns it.
                // SAFETY: `vq` is valid inside `with_live` (type invariants); `sg` stays valid
                // while the device may use it (above).
                unsafe {
                    if out {
                        bindings::virtqueue_add_outbuf(
                            vq,
                            &mut sg,
                            1,
                            token.cast(),
                            bindings::GFP_KERNEL,
                        )
                    } else {
                        bindings::virtqueue_add_inbuf(
                            vq,
                            &mut sg,
                            1,
                            token.cast(),
                            bindings::GFP_KERNEL,
                        )
                    }
                }
            })
            .unwrap_or_else(|e| e.to_errno());
        if r < 0 {
            // SAFETY: The device did not take the buffer (or the queue is gone); `token` came
            // from `KBox::into_raw` above and is ours again.
            return Err(AddError(Error::from_errno(r), unsafe {
                KBox::from_raw(token)
            }));
        }
        Ok(())
    }

    /// Hands the first `len` bytes of `buf` to the device to read.
    pub fn add_outbuf(&self, buf: KBox<B>, len: usize) -> Result<(), AddError<B>>
    where
        B: AsBytes,
    {
        self.add(buf, len, true)
    }

    /// Hands the first `len` bytes of `buf` to the device to write.
    pub fn add_inbuf(&self, buf: KBox<B>, len: usize) -> Result<(), AddError<B>>
    where
        B: AsBytes + FromBytes,
    {
        self.add(buf, len, false)
    }

    /// Whether the queue is still live (not deleted).
    pub fn is_live(&self) -> bool {
        self.vq_set.lock_live().is_ok()
    }

    /// Notifies the device of new buffers. Returns false if the device is broken or gone.
    pub fn kick(&self) -> bool {
        // SAFETY: By the type invariants, `vq` is valid inside `with_live`.
        self.with_live(|vq| unsafe { bindings::virtqueue_kick(vq) })
            .unwrap_or(false)
    }

    /// A buffer the device is done with, and how many bytes it wrote into it.
    pub fn get_buf(&self) -> Option<(KBox<B>, u32)> {
        self.with_live(|vq| {
            let mut len = 0u32;
            // SAFETY: By the type invariants, `vq` is valid inside `with_live`.
            let token = unsafe { bindings::virtqueue_get_buf(vq, &mut len) };
            // SAFETY: By the type invariants, every token added to this queue came from
            // `KBox::<B>::into_raw`, and the ring returns each exactly once.
            NonNull::new(token).map(|t| (unsafe { KBox::from_raw(t.as_ptr().cast::<B>()) }, len))
        })
        .ok()
        .flatten()
    }

    /// Waits until the device gives a buffer back; `None` once the queues are deleted (the
    /// device was reset and will not answer). The queue must have been set up with a
    /// callback, whose interrupts wake the wait. `stalled` is called every [`STALL_INTERVAL`]
    /// while the device holds on. May sleep.
    pub fn wait_buf(&self, stalled: impl FnMut(Delta)) -> Option<(KBox<B>, u32)> {
        self.vq_set.wait_for(
            || match self.get_buf() {
                Some(buf) => Some(Some(buf)),
                None if !self.is_live() => Some(None),
                None => None,
            },
            stalled,
        )
    }

    /// Number of descriptors in the ring (0 once the queue is gone).
    pub fn vring_size(&self) -> u32 {
        // SAFETY: By the type invariants, `vq` is valid inside `with_live`.
        self.with_live(|vq| unsafe { bindings::virtqueue_get_vring_size(vq) })
            .unwrap_or(0)
    }

    /// Number of free descriptors (0 once the queue is gone).
    pub fn num_free(&self) -> u32 {
        // SAFETY: By the type invariants, `vq` is valid inside `with_live`; `num_free` is a
        // plain field.
        self.with_live(|vq| unsafe { (*vq).num_free }).unwrap_or(0)
    }
}

/// Token of every hint buffer on a [`PageQueue`]. Never dereferenced.
static HINT_TOKEN: u8 = 0;
/// Token of every report buffer on a [`PageQueue`]. Never dereferenced.
static REPORT_TOKEN: u8 = 0;

fn hint_token() -> *mut c_void {
    core::ptr::addr_of!(HINT_TOKEN).cast_mut().cast()
}

fn report_token() -> *mut c_void {
    core::ptr::addr_of!(REPORT_TOKEN).cast_mut().cast()
}

/// Frees a token of a [`PageQueue`]: a command id buffer (`KBox<u32>`), or nothing for page
/// buffers.
///
/// # Safety
///
/// `token` must be a hint or report token, or come from `KBox::<u32>::into_raw` and not be used
/// again.
unsafe fn free_page_queue_token(token: *mut c_void) {
    if token != hint_token() && token != report_token() {
        // SAFETY: By the safety requirements it is a command id buffer.
        drop(unsafe { KBox::from_raw(token.cast::<u32>()) });
    }
}

/// How long [`Virtqueue::wait_buf`] and [`PageQueue::report`] wait before they call their
/// `stalled` callback (and again after each further such interval).
pub const STALL_INTERVAL: Delta = Delta::from_secs(10);

/// A virtqueue that carries pages by address: free page hints and reported free pages, plus
/// the 32-bit command ids of the hinting protocol.
///
/// - A hint ([`PageQueue::add_hint`]) tells the device about a [`HintBlock`] the driver keeps.
///   The device only learns the range: by the virtio spec it neither reads nor writes hinted
///   pages, so the driver may free a block even while its descriptor is still on the ring (the
///   hinting protocol relies on that). Used hint buffers carry nothing back.
/// - A report ([`PageQueue::report`]) lends the device free pages the page allocator isolated
///   for the call, and returns only once the device gave them back or is reset.
///
/// Operations take the [`VqSet`] lock and may sleep.
///
/// # Invariants
///
/// `vq` is a queue of `vq_set`, valid while the set is live (see [`VqSet`]), registered in it
/// with `free_page_queue_token`: every token on it is the hint token, the report token, or
/// comes from `KBox::<u32>::into_raw`.
///
/// [`HintBlock`]: crate::balloon::HintBlock
pub struct PageQueue {
    vq: NonNull<bindings::virtqueue>,
    vq_set: Arc<VqSet>,
    /// Whether the ring passes guest physical addresses (no DMA mapping): only then may a
    /// hinted block be freed while its descriptor is on the ring.
    hints_ok: bool,
    /// Report buffers the device gave back so far (counted under the `VqSet` lock).
    reports_done: core::sync::atomic::AtomicU64,
    /// Set while a report is in flight: completions are only counted, so two reports at once
    /// could not tell whose came back.
    reporting: core::sync::atomic::AtomicBool,
}

// SAFETY: By the type invariants, the queue is only used with the `VqSet` locked while it is
// live, which any thread may do; the other fields are plain values and atomics.
unsafe impl Send for PageQueue {}
// SAFETY: By the type invariants, every access to the queue holds the `VqSet`'s mutex; the other
// fields are plain values and atomics.
unsafe impl Sync for PageQueue {}

impl PageQueue {
    /// Types the queue of `handle` for pages and command ids.
    pub fn new(handle: VqHandle) -> Result<Self> {
        handle.claim(free_page_queue_token)?;
        let vq = handle.vq.as_ptr();
        // SAFETY: By the type invariants of `VqHandle` and `VqSet`, the queue and its device are
        // valid inside `with_live`.
        let hints_ok = handle.vq_set.with_live(|_| unsafe {
            bindings::virtqueue_dma_dev(vq).is_null() && (*(*vq).vdev).map.is_null()
        })?;
        // INVARIANT: By the type invariant of `VqHandle`, `vq` is a queue of `vq_set`; `claim`
        // registered it with `free_page_queue_token`.
        Ok(Self {
            vq: handle.vq,
            vq_set: handle.vq_set,
            hints_ok,
            reports_done: core::sync::atomic::AtomicU64::new(0),
            reporting: core::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Runs `f` on the queue while it is live, with the [`VqSet`] locked; `ENODEV` once the
    /// queues are deleted. By the type invariants, the queue is valid inside `f`.
    fn with_live<R>(&self, f: impl FnOnce(*mut bindings::virtqueue) -> R) -> Result<R> {
        self.vq_set.with_live(|_| f(self.vq.as_ptr()))
    }

    /// Takes every used buffer off the ring, freeing command id buffers and counting report
    /// buffers in `reports_done`.
    ///
    /// # Safety
    ///
    /// `vq` must be the queue [`PageQueue::with_live`] passed to the closure this runs in.
    unsafe fn drain_locked(&self, vq: *mut bindings::virtqueue) {
        loop {
            let mut len = 0u32;
            // SAFETY: By the safety requirements this runs inside `with_live` with its queue,
            // which by the type invariants is valid there.
            let token = unsafe { bindings::virtqueue_get_buf(vq, &mut len) };
            if token.is_null() {
                return;
            }
            if token == report_token() {
                self.reports_done
                    .fetch_add(1, core::sync::atomic::Ordering::Relaxed);
            }
            // SAFETY: By the type invariants, every token on this queue is a hint or report
            // token or a command id box; the ring returns each exactly once.
            unsafe { free_page_queue_token(token) };
        }
    }

    /// Takes the buffers the device is done with off the ring.
    pub fn drain(&self) {
        // SAFETY: `vq` is the queue `with_live` passed to this closure.
        let _ = self.with_live(|vq| unsafe { self.drain_locked(vq) });
    }

    /// Gives the device a 32-bit command id to read (`id` already in the device's byte order).
    pub fn add_cmd_id(&self, id: u32) -> Result {
        let buf = KBox::new(id, GFP_KERNEL)?;
        self.with_live(|vq| {
            let token = KBox::into_raw(buf);
            let mut sg = bindings::scatterlist::default();
            // SAFETY: `token` points to 4 bytes of kmalloc memory, linearly mapped.
            unsafe { bindings::sg_init_one(&mut sg, token.cast(), size_of::<u32>() as u32) };
            // The buffer stays allocated until its token comes back (drain, or detach at delete).
            // SAFETY: `vq` is valid inside `with_live` (type invariants); `sg` stays valid while
            // the device may use it (above).
            let r = unsafe {
                bindings::virtqueue_add_outbuf(vq, &mut sg, 1, token.cast(), bindings::GFP_KERNEL)
            };
            if r < 0 {
                // SAFETY: The device did not take the buffer; `token` came from
                // `KBox::into_raw` above and is ours again.
                drop(unsafe { KBox::from_raw(token) });
            }
            to_result(r)
        })?
    }

    /// Tells the device that `block` is free (a device-writable buffer, as the hinting protocol
    /// has it). See the type documentation for why the block may be freed at any time.
    ///
    /// `EOPNOTSUPP` when the ring maps buffers for DMA (an IOMMU, Xen grants, a custom map):
    /// a mapping could then outlive a freed block.
    #[cfg(CONFIG_BALLOON)]
    pub fn add_hint(&self, block: &crate::balloon::HintBlock) -> Result {
        if !self.hints_ok {
            return Err(EOPNOTSUPP);
        }
        self.with_live(|vq| {
            let mut sg = bindings::scatterlist::default();
            // SAFETY: By the type invariant of `HintBlock`, the block is `HintBlock::BYTES` of
            // linearly mapped memory.
            unsafe {
                bindings::sg_init_one(
                    &mut sg,
                    block.addr(),
                    crate::balloon::HintBlock::BYTES as u32,
                )
            };
            // The ring passes physical addresses (`hints_ok`): nothing is mapped that could
            // outlive the block. The device only learns the range (see the type documentation).
            // SAFETY: By the type invariants, `vq` is valid inside `with_live`; the token is
            // never dereferenced.
            to_result(unsafe {
                bindings::virtqueue_add_inbuf(vq, &mut sg, 1, hint_token(), bindings::GFP_KERNEL)
            })
        })?
    }

    /// Lends `pages` to the device (device-writable buffers), notifies it, and waits until it
    /// used them, or until the queues are deleted (the device is then reset and can no longer
    /// touch them). While the device holds them, `stalled` is called every [`STALL_INTERVAL`]
    /// with the time waited so far, so the caller can say that the host is not answering.
    ///
    /// `ENODEV` when the queue is gone, before or during the wait; `ENOSPC` when the ring has
    /// no room for `pages.nents()` descriptors; `EBUSY` while another report is in flight.
    #[cfg(CONFIG_PAGE_REPORTING)]
    pub fn report(
        &self,
        pages: &crate::page_reporting::ReportedPages<'_>,
        stalled: impl FnMut(Delta),
    ) -> Result {
        use core::sync::atomic::Ordering::AcqRel;
        if self.reporting.swap(true, AcqRel) {
            return Err(EBUSY);
        }
        let r = self.report_one(pages, stalled);
        self.reporting
            .store(false, core::sync::atomic::Ordering::Release);
        r
    }

    #[cfg(CONFIG_PAGE_REPORTING)]
    fn report_one(
        &self,
        pages: &crate::page_reporting::ReportedPages<'_>,
        stalled: impl FnMut(Delta),
    ) -> Result {
        use core::sync::atomic::Ordering::Relaxed;
        let before = self.with_live(|vq| {
            // SAFETY: `vq` is the queue `with_live` passed to this closure.
            unsafe { self.drain_locked(vq) };
            let before = self.reports_done.load(Relaxed);
            // `pages` holds `nents` valid entries describing free blocks the page allocator
            // isolated for the duration of our caller's callback; this function returns only
            // once the device no longer uses them. `GFP_NOWAIT`: no sleeping allocation for
            // indirect descriptors (the core falls back to direct ones, `ENOSPC` if too few).
            // SAFETY: By the type invariants, `vq` is valid inside `with_live`; the buffers stay
            // valid until the device used them (see above).
            let r = unsafe {
                bindings::virtqueue_add_inbuf(
                    vq,
                    pages.as_raw(),
                    pages.nents(),
                    report_token(),
                    bindings::GFP_NOWAIT,
                )
            };
            if r == 0 {
                // SAFETY: By the type invariants, `vq` is valid inside `with_live`.
                unsafe { bindings::virtqueue_kick(vq) };
            }
            to_result(r).map(|()| before)
        })??;
        // Counted under the lock, whoever drained: one report is in flight at a time. Deleted:
        // the device was reset before the ring was freed, and the pages are ours again.
        self.vq_set.wait_for(
            // SAFETY: `vq` is the queue `with_live` passed to this closure.
            || match self.with_live(|vq| unsafe { self.drain_locked(vq) }) {
                Err(e) => Some(Err(e)),
                Ok(()) if self.reports_done.load(Relaxed) != before => Some(Ok(())),
                Ok(()) => None,
            },
            stalled,
        )
    }

    /// Notifies the device of new buffers. Returns false if the device is broken or gone.
    pub fn kick(&self) -> bool {
        // SAFETY: By the type invariants, `vq` is valid inside `with_live`.
        self.with_live(|vq| unsafe { bindings::virtqueue_kick(vq) })
            .unwrap_or(false)
    }

    /// Number of free descriptors (0 once the queue is gone).
    pub fn num_free(&self) -> u32 {
        // SAFETY: By the type invariants, `vq` is valid inside `with_live`; `num_free` is a
        // plain field.
        self.with_live(|vq| unsafe { (*vq).num_free }).unwrap_or(0)
    }

    /// Number of descriptors in the ring (0 once the queue is gone).
    pub fn vring_size(&self) -> u32 {
        // SAFETY: By the type invariants, `vq` is valid inside `with_live`.
        self.with_live(|vq| unsafe { bindings::virtqueue_get_vring_size(vq) })
            .unwrap_or(0)
    }
}
