// SPDX-License-Identifier: GPL-2.0

//! Virtio devices and drivers.
//!
//! C headers: [`include/linux/virtio.h`](srctree/include/linux/virtio.h),
//! [`include/linux/virtio_config.h`](srctree/include/linux/virtio_config.h).
//!
//! A virtio driver implements [`Driver`] and registers with
//! [`module_virtio_driver!`](crate::module_virtio_driver). The bus calls it in these contexts:
//!
//! - process context, may sleep: [`Driver::validate`], [`Driver::probe`], [`Driver::ready`],
//!   [`Driver::unbind`], [`Driver::shutdown`], [`Driver::freeze`], [`Driver::restore`];
//! - atomic (under the device's config spinlock): [`Driver::config_changed`];
//! - hard interrupt: [`Driver::queue_done`].
//!
//! The atomic callbacks get no device, and must not sleep: queue operations and config
//! accesses (which take a mutex) are for process context; typically they queue work.
//!
//! # Queues and their lifetime
//!
//! [`QueueFinder::find_vqs`] returns a [`VqSet`] and one [`VqHandle`] per
//! named queue. A handle becomes a typed [`Virtqueue<B>`], whose buffers are
//! owned `KBox<B>`s: a buffer is handed to the device by `add_*buf` and comes
//! back from [`Virtqueue::get_buf`] or, when the queues are deleted (which detaches the
//! unused ones), is freed.
//! So the device never sees memory the driver still uses, and no buffer leaks. A [`PageQueue`]
//! carries pages by address instead: free page hints, which the driver keeps, and reported
//! free pages, which it borrows only until the device has used them.
//!
//! Config space accesses name a [`ConfigField`]: they must fall inside [`Driver::Config`], and
//! a field that exists only with a feature is not touched unless that feature was negotiated
//! (transports BUG() on accesses past the config space the device exposes).
//!
//! Every queue operation and every config-space access through the
//! [`VqSet`] takes the set's lock and fails with `ENODEV` once the
//! queues are deleted. They are deleted by [`VqSet::delete`] (reset, free
//! unused buffers, `del_vqs`), which a driver calls in `unbind` or `freeze`.
//! If it does not, the bus does it when `unbind` or a successful `freeze`
//! returns: the core requires the device reset within `remove`, `restore`
//! starts from a reset device, and nothing may touch the queues or the config
//! space after the device is gone. Work items that outlive `unbind` or `freeze`
//! by mistake therefore get errors, not freed memory.
//!
//! Each [`VqSet`] releases only its own bus reference: after freeze and
//! restore, the old one (which a driver may still hold) stays dead and cannot
//! touch the new queues.
//!
//! The code is split by concern: this file has the bus ([`Driver`], the callbacks, the device
//! id table) and [`Device`]; `virtio/config.rs` the config space, the payload byte order and
//! feature negotiation; `virtio/queue.rs` the queues.

use crate::{
    bindings, device,
    device_id::RawDeviceId,
    driver,
    error::{from_result, to_result},
    prelude::*,
    sync::Arc,
    types::{ForeignOwnable, Opaque},
    ThisModule,
};
use core::{
    marker::PhantomData,
    mem::offset_of,
    ptr::{addr_of_mut, NonNull},
};

mod config;
mod queue;

pub use self::config::{ByteOrder, ConfigField, Features};
pub use self::queue::{
    AddError, PageQueue, QueueFinder, QueueInfo, Virtqueue, VqHandle, VqSet, STALL_INTERVAL,
};

/// Most virtqueues a driver can ask for.
pub const MAX_QUEUES: usize = 8;

/// Feature bits the core keeps (`VIRTIO_FEATURES_BITS`).
const FEATURE_BITS: u32 = bindings::VIRTIO_FEATURES_U64S * 64;

/// An adapter for the registration of virtio drivers.
pub struct Adapter<T: Driver>(T);

// SAFETY:
// - `bindings::virtio_driver` is a C type declared as `repr(C)`.
// - `T::Data` is the type of the driver's device private data.
// - `struct virtio_driver` embeds a `struct device_driver` at `driver`.
unsafe impl<T: Driver + 'static> driver::DriverLayout for Adapter<T> {
    type DriverType = bindings::virtio_driver;
    type DriverData<'bound> = T::Data<'bound>;
    const DEVICE_DRIVER_OFFSET: usize = offset_of!(bindings::virtio_driver, driver);
}

// SAFETY: A call to `unregister` for a given instance of `DriverType` is guaranteed to be valid if
// a preceding call to `register` has been successful.
unsafe impl<T: Driver + 'static> driver::RegistrationOps for Adapter<T> {
    unsafe fn register(
        vdrv: &Opaque<Self::DriverType>,
        name: &'static CStr,
        module: &'static ThisModule,
    ) -> Result {
        let d = vdrv.get();
        // SAFETY: It's safe to set the fields of `struct virtio_driver` on initialization; the
        // feature table is `'static`, so the pointer stays valid while the driver is registered.
        unsafe {
            (*d).driver.name = name.as_char_ptr();
            (*d).id_table = T::ID_TABLE.as_ptr();
            (*d).feature_table = T::FEATURES.as_ptr();
            (*d).feature_table_size = T::FEATURES.len() as u32;
            (*d).validate = Some(Self::validate_callback);
            (*d).probe = Some(Self::probe_callback);
            (*d).remove = Some(Self::remove_callback);
            (*d).config_changed = Some(Self::config_changed_callback);
            (*d).shutdown = Some(Self::shutdown_callback);
            (*d).freeze = Some(Self::freeze_callback);
            (*d).restore = Some(Self::restore_callback);
        }
        // SAFETY: `vdrv` is guaranteed to be a valid `DriverType`.
        to_result(unsafe { bindings::__register_virtio_driver(d, module.as_ptr()) })
    }

    unsafe fn unregister(vdrv: &Opaque<Self::DriverType>) {
        // SAFETY: `vdrv` is guaranteed to be a valid, registered `DriverType`.
        unsafe { bindings::unregister_virtio_driver(vdrv.get()) }
    }
}

impl<T: Driver + 'static> Adapter<T> {
    /// The device a callback of `T` got, and `T`'s data on it; `None` before `probe_callback`
    /// set the data.
    ///
    /// The bus sets the driver data of a device bound to `T` in `probe_callback`, before the
    /// device goes live, to a `T::Data`; the core drops it only after `remove` returned (or
    /// when `probe` fails). So between the two, drvdata is either unset or that `T::Data`.
    ///
    /// # Safety
    ///
    /// - `vdev` must point to a valid `struct virtio_device` whose driver is `T`, and stay
    ///   valid and bound to `T` for `'a`;
    /// - the call must come from a callback of `T` that runs before `remove_callback` returns
    ///   (or is `remove_callback`), and `'a` must end with it;
    /// - the caller must give the guarantees of `Ctx` for `'a` (for [`device::CoreInternal`]:
    ///   it is a bus callback serialized with `probe`, `remove`, `freeze` and `restore`).
    unsafe fn bound<'a, Ctx: device::InternalBoundContext + 'a>(
        vdev: *mut bindings::virtio_device,
    ) -> Option<(&'a Device<Ctx>, Pin<&'a T::Data<'a>>)> {
        // SAFETY: By the safety requirements `vdev` is valid for `'a`, with the guarantees of
        // `Ctx`; `Device` is a transparent wrapper of `struct virtio_device`.
        let dev = unsafe { &*vdev.cast::<Device<Ctx>>() };
        if !dev.has_drvdata() {
            return None;
        }
        // drvdata is set (checked above), so it is the `T::Data` `probe_callback` set.
        // SAFETY: `remove` has not returned (safety requirements), so that `T::Data` stays until
        // after the callback that `'a` ends with.
        let data = unsafe { dev.as_ref().drvdata_borrow::<T::Data<'a>>() };
        Some((dev, data))
    }

    extern "C" fn validate_callback(vdev: *mut bindings::virtio_device) -> c_int {
        // SAFETY: The virtio core calls `validate` with a valid device, holding the device lock,
        // before `probe`.
        let dev = unsafe { &*vdev.cast::<Device<device::Core<'_>>>() };
        from_result(|| T::validate(&Features(dev)).map(|()| 0))
    }

    extern "C" fn probe_callback(vdev: *mut bindings::virtio_device) -> c_int {
        // SAFETY: The virtio core calls `probe` with a valid device, holding the device lock.
        let dev = unsafe { &*vdev.cast::<Device<device::CoreInternal<'_>>>() };
        // `priv` is this abstraction's while the driver is bound; a C driver bound before may
        // have left its (freed) pointer there.
        //
        // SAFETY: The core calls `probe` with a valid device, and no driver uses it now: `T` is
        // probing it.
        unsafe { core::ptr::write_volatile(addr_of_mut!((*vdev).priv_), core::ptr::null_mut()) };
        let r = from_result(|| {
            dev.as_ref()
                .set_drvdata(T::probe(dev, QueueFinder::new(vdev)))?;
            // The queue and config callbacks reach the driver through drvdata, so the device may
            // only start once drvdata is set: no queue interrupt comes before DRIVER_OK, and the
            // core enables config change callbacks only after `probe` returns.
            //
            // SAFETY: The core calls `probe` with a valid device; its queues (if any) are set
            // up.
            unsafe { bindings::virtio_device_ready(vdev) };
            // SAFETY: drvdata was set just above with `T::Data`.
            let data = unsafe { dev.as_ref().drvdata_borrow::<T::Data<'_>>() };
            if let Err(e) = T::ready(dev, data) {
                // The device is live: tear it down as `remove` would. The core drops drvdata
                // when probe fails.
                T::unbind(dev, data);
                return Err(e);
            }
            Ok(0)
        });
        if r != 0 {
            // A failed probe leaves no queues behind, and a reset device.
            //
            // SAFETY: `vdev` is valid while `probe` runs, and nothing of the driver runs any
            // more; `priv` is NULL (cleared above) or set by `find_vqs`, the only other writer.
            unsafe { VqSet::kill(vdev) };
            // SAFETY: `vdev` is valid while `probe` runs.
            if unsafe { bindings::virtio_get_status(vdev) }
                & bindings::VIRTIO_CONFIG_S_DRIVER_OK as u8
                != 0
            {
                // SAFETY: `vdev` is valid while `probe` runs, and nothing of the driver uses it
                // any more: its queues are deleted just above.
                unsafe { bindings::virtio_reset_device(vdev) };
            }
        }
        r
    }

    extern "C" fn remove_callback(vdev: *mut bindings::virtio_device) {
        // The core calls `remove` after a successful `probe` and disables config callbacks first.
        // SAFETY: `vdev` is valid and bound to `T`, and the core holds the device lock (Core).
        let bound = unsafe { Self::bound::<device::CoreInternal<'_>>(vdev) };
        // Always set: a bound device passed `probe`.
        if let Some((dev, data)) = bound {
            T::unbind(dev, data);
        } else {
            crate::warn_on!(true);
        }
        // SAFETY: `vdev` is valid while `remove` runs, and the driver is done with the device;
        // `priv` is NULL or set by `find_vqs` (the bus owns it while `T` is bound).
        unsafe { VqSet::kill(vdev) };
        // The core requires the device reset before `remove` returns. Deleting the queues
        // resets it, but a driver may have deleted them before the device became live again
        // (freeze, restore), or have none.
        //
        // SAFETY: `vdev` is valid and bound while `remove` runs.
        if unsafe { bindings::virtio_get_status(vdev) } != 0 {
            // SAFETY: `vdev` is valid and bound while `remove` runs, and the driver is done
            // with it (`unbind` returned, the queues are deleted).
            unsafe { bindings::virtio_reset_device(vdev) };
        }
    }

    extern "C" fn config_changed_callback(vdev: *mut bindings::virtio_device) {
        // SAFETY: The core calls this only between `probe` and `remove` (config_core_enabled),
        // on a valid device bound to `T`; `BoundInternal` asks no more.
        let bound = unsafe { Self::bound::<device::BoundInternal>(vdev) };
        if let Some((_, data)) = bound {
            T::config_changed(data);
        }
    }

    extern "C" fn queue_callback<const SLOT: usize>(vq: *mut bindings::virtqueue) {
        // SAFETY: `vring_interrupt` passes a valid queue of a live device.
        let vdev = unsafe { (*vq).vdev };
        // `priv` is NULL or the bus's reference to the `VqSet` of these queues, set before the
        // device went live and released only after `del_vqs` (whose `free_irq` waits for
        // running callbacks), or while the set is kept alive across it.
        // SAFETY: `vdev` is valid: `vring_interrupt` runs on a queue of a live device. `priv` is
        // a plain pointer field, stored volatile by writers.
        let vq_set = unsafe { core::ptr::read_volatile(core::ptr::addr_of!((*vdev).priv_)) };
        if !vq_set.is_null() {
            // SAFETY: `priv` came from `Arc::<VqSet>::into_foreign` and is not released while
            // this runs (see above).
            unsafe { <Arc<VqSet> as ForeignOwnable>::borrow(vq_set.cast()) }.signal_used();
        }
        // Queue callbacks stop only at `del_vqs` (its `free_irq` waits for a running one), not
        // at reset; the bus deletes the queues in `remove` (`VqSet::kill`) before drvdata goes
        // away, and drvdata is set before DRIVER_OK.
        //
        // `find_vqs` of `T` installed this callback; `remove` deletes the queues before it returns.
        // SAFETY: So `vdev` is valid and bound to `T`, and `remove` has not returned yet.
        let bound = unsafe { Self::bound::<device::BoundInternal>(vdev) };
        // `None`: a device that uses buffers before DRIVER_OK breaks the spec; do not trust it.
        if let Some((_, data)) = bound {
            T::queue_done(data, SLOT);
        }
    }

    /// One callback per queue slot, so the driver learns which queue completed.
    const QUEUE_CALLBACKS: [unsafe extern "C" fn(*mut bindings::virtqueue); MAX_QUEUES] = [
        Self::queue_callback::<0>,
        Self::queue_callback::<1>,
        Self::queue_callback::<2>,
        Self::queue_callback::<3>,
        Self::queue_callback::<4>,
        Self::queue_callback::<5>,
        Self::queue_callback::<6>,
        Self::queue_callback::<7>,
    ];

    extern "C" fn shutdown_callback(vdev: *mut bindings::virtio_device) {
        // SAFETY: The core calls `shutdown` on a valid device holding the device lock; it
        // calls the driver's only while it is bound to `T`.
        let bound = unsafe { Self::bound::<device::CoreInternal<'_>>(vdev) };
        // Always set: the core calls the driver's `shutdown` only while it is bound.
        if let Some((dev, data)) = bound {
            T::shutdown(dev, data);
        } else {
            crate::warn_on!(true);
        }
        // SAFETY: `vdev` is valid while `shutdown` runs. Breaks the device, waits for callbacks
        // and resets it, as the core does for drivers without a `shutdown`.
        unsafe { bindings::virtio_device_shutdown(vdev) };
    }

    extern "C" fn freeze_callback(vdev: *mut bindings::virtio_device) -> c_int {
        // The transport's PM callback calls `freeze` (`virtio_device_freeze`) holding the
        // transport (parent) device's lock, under which alone the transport removes the virtio
        // device; user space and probing are frozen. That serializes it with `probe`, `remove`
        // and `restore` as the device lock would.
        //
        // SAFETY: `vdev` is a valid device bound to `T` (the core freezes only a bound driver),
        // serialized as `Core` requires (see above).
        let bound = unsafe { Self::bound::<device::CoreInternal<'_>>(vdev) };
        // Always set: a bound device passed `probe`.
        let Some((dev, data)) = bound else {
            crate::warn_on!(true);
            return ENODEV.to_errno();
        };
        from_result(|| {
            T::freeze(dev, data)?;
            // Whatever the driver kept, no queue of this device outlives the freeze: `restore`
            // starts from a reset device and sets up new ones.
            //
            // SAFETY: `vdev` is valid and bound while `freeze` runs; `priv` is NULL or set by
            // `find_vqs` (the bus owns it while `T` is bound).
            unsafe { VqSet::kill(vdev) };
            Ok(0)
        })
    }

    extern "C" fn restore_callback(vdev: *mut bindings::virtio_device) -> c_int {
        // The core restores only a bound driver; see `freeze_callback` for the locking.
        // SAFETY: `vdev` is valid and bound to `T`; the parent's lock serializes it as Core needs.
        let bound = unsafe { Self::bound::<device::CoreInternal<'_>>(vdev) };
        // Always set: a bound device passed `probe`.
        let Some((dev, data)) = bound else {
            crate::warn_on!(true);
            return ENODEV.to_errno();
        };
        from_result(|| {
            let r = T::restore(dev, data, QueueFinder::new(vdev)).and_then(|()| {
                // As in `probe`: live once the queues exist, then `ready`.
                //
                // SAFETY: `vdev` is valid and bound while `restore` runs; its queues (if any)
                // are set up.
                unsafe { bindings::virtio_device_ready(vdev) };
                T::ready(dev, data).inspect_err(|_| {
                    // Back to the frozen state, so that `remove` finds what it expects.
                    let _ = T::freeze(dev, data);
                })
            });
            if r.is_err() {
                // The core marks the device FAILED; it stays bound without queues.
                //
                // SAFETY: `vdev` is valid and bound while `restore` runs; `priv` is NULL or set
                // by `find_vqs` (the bus owns it while `T` is bound).
                unsafe { VqSet::kill(vdev) };
            }
            r.map(|()| 0)
        })
    }
}

/// Declares a kernel module that exposes a single virtio driver.
///
/// # Examples
///
/// ```ignore
/// kernel::module_virtio_driver! {
///     type: MyDriver,
///     name: "my_virtio_driver",
///     authors: ["Me"],
///     description: "A virtio driver",
///     license: "GPL",
/// }
/// ```
#[macro_export]
macro_rules! module_virtio_driver {
    ($($f:tt)*) => {
        $crate::module_driver!(<T>, $crate::virtio::Adapter<T>, { $($f)* });
    };
}

/// A virtio device id (`struct virtio_device_id`).
#[repr(transparent)]
#[derive(Clone, Copy)]
pub struct DeviceId(bindings::virtio_device_id);

impl DeviceId {
    /// Matches device type `device` from any vendor.
    pub const fn new(device: u32) -> Self {
        Self(bindings::virtio_device_id {
            device,
            vendor: bindings::VIRTIO_DEV_ANY_ID,
        })
    }
}

// SAFETY: `DeviceId` is a `#[repr(transparent)]` wrapper of `virtio_device_id` and does not add
// additional invariants, so it's safe to transmute to `RawType`.
unsafe impl RawDeviceId for DeviceId {
    type RawType = bindings::virtio_device_id;
}

/// Id table of a virtio driver.
pub type IdTable = &'static dyn kernel::device_id::IdTable<DeviceId, ()>;

/// Creates a virtio id table with its alias for modpost.
///
/// # Examples
///
/// ```ignore
/// kernel::virtio_device_table!(TABLE, [kernel::virtio::DeviceId::new(5)]);
/// ```
#[macro_export]
macro_rules! virtio_device_table {
    ($name:ident, [$($id:expr),* $(,)?]) => {
        $crate::module_device_table!("virtio", $crate::virtio::DeviceId, $name, @none, [$($id),*]);
    };
}

/// A virtio driver.
pub trait Driver {
    /// The driver's per-device data. Callbacks borrow it concurrently, some in interrupt
    /// context, hence `Sync`.
    type Data<'bound>: Send + Sync + 'bound;

    /// The layout of the device's config space (e.g. `bindings::virtio_balloon_config`):
    /// config accesses must fall inside it.
    type Config;

    /// The devices the driver binds to.
    const ID_TABLE: IdTable;

    /// The device feature bits the driver knows (`feature_table`). Feature bits below 28 that
    /// are not listed are never negotiated.
    const FEATURES: &'static [u32];

    /// Checks and adjusts the negotiated features before `probe`.
    fn validate(features: &Features<'_>) -> Result {
        let _ = features;
        Ok(())
    }

    /// Sets up the device and its queues ([`QueueFinder::find_vqs`]). The bus marks the
    /// device ready (DRIVER_OK) after this, then calls [`Driver::ready`].
    fn probe<'bound>(
        dev: &'bound Device<device::Core<'_>>,
        queues: QueueFinder<Self>,
    ) -> impl PinInit<Self::Data<'bound>, Error> + 'bound
    where
        Self: Sized;

    /// Called once the device is live, after `probe` and after `restore`: queue callbacks may
    /// come from now on. An error fails the probe (the bus then calls [`Driver::unbind`] and
    /// resets the device) or the restore (the bus calls [`Driver::freeze`] and deletes the
    /// queues; the device stays bound, marked FAILED).
    fn ready<'bound>(
        dev: &'bound Device<device::Core<'_>>,
        this: Pin<&Self::Data<'bound>>,
    ) -> Result {
        let _ = (dev, this);
        Ok(())
    }

    /// Tears the device down. When it returns, the bus deletes the queues (if the driver did
    /// not) and resets the device.
    fn unbind<'bound>(dev: &'bound Device<device::Core<'_>>, this: Pin<&Self::Data<'bound>>) {
        let _ = (dev, this);
    }

    /// The device's configuration changed. Runs in atomic context: queue work for anything
    /// that needs the config space.
    fn config_changed(this: Pin<&Self::Data<'_>>) {
        let _ = this;
    }

    /// Queue `slot` (its index in the `find_vqs` list) used buffers. Hard interrupt context.
    fn queue_done(this: Pin<&Self::Data<'_>>, slot: usize) {
        let _ = (this, slot);
    }

    /// The system shuts down (or kexecs): quiesce. The bus then breaks and resets the device.
    /// Unlike `unbind`, nothing is given back: the device stays bound and its memory is no
    /// longer the driver's concern.
    fn shutdown<'bound>(dev: &'bound Device<device::Core<'_>>, this: Pin<&Self::Data<'bound>>) {
        let _ = (dev, this);
    }

    /// Suspend to RAM or disk, after the core stopped config change callbacks and froze user
    /// space and freezable work: quiesce and give back what the device holds. When it returns
    /// `Ok`, the bus deletes the queues (if the driver did not, with [`VqSet::delete`]):
    /// nothing can reach them until `restore` sets up new ones. An error aborts the suspend,
    /// and the device stays as it was.
    fn freeze<'bound>(
        dev: &'bound Device<device::Core<'_>>,
        this: Pin<&Self::Data<'bound>>,
    ) -> Result {
        let _ = (dev, this);
        Ok(())
    }

    /// Resume after `freeze`: the core has reset the device and written the negotiated features
    /// again (they do not change while bound); set up the queues again. The bus then marks the
    /// device ready and calls [`Driver::ready`].
    fn restore<'bound>(
        dev: &'bound Device<device::Core<'_>>,
        this: Pin<&Self::Data<'bound>>,
        queues: QueueFinder<Self>,
    ) -> Result
    where
        Self: Sized,
    {
        let _ = (dev, this, queues);
        Ok(())
    }
}

/// A virtio device (`struct virtio_device`).
///
/// # Invariants
///
/// A [`Device`] instance represents a valid `struct virtio_device` created by the C portion of
/// the kernel.
#[repr(transparent)]
pub struct Device<Ctx: device::DeviceContext = device::Normal>(
    Opaque<bindings::virtio_device>,
    PhantomData<Ctx>,
);

impl<Ctx: device::DeviceContext> Device<Ctx> {
    fn as_raw(&self) -> *mut bindings::virtio_device {
        self.0.get()
    }

    /// Whether the bus has set drvdata (it does so before the device goes live).
    fn has_drvdata(&self) -> bool {
        // SAFETY: By the type invariant `self.as_raw()` is valid.
        !unsafe { bindings::dev_get_drvdata(addr_of_mut!((*self.as_raw()).dev)) }.is_null()
    }

    /// Whether feature `bit` was negotiated (false for bits past the 128 the core knows).
    pub fn has_feature(&self, bit: u32) -> bool {
        // SAFETY: By the type invariant `self.as_raw()` is valid; the helper only tests a bit,
        // which is within the feature array (it BUG()s otherwise).
        bit < FEATURE_BITS && unsafe { bindings::__virtio_test_bit(self.as_raw(), bit) }
    }

    /// Whether the device uses little-endian virtqueue payloads (VERSION_1, or a legacy device
    /// on a little-endian guest).
    pub fn is_little_endian(&self) -> bool {
        // SAFETY: By the type invariant `self.as_raw()` is valid.
        unsafe { bindings::virtio_is_little_endian(self.as_raw()) }
    }

    /// Holds the system awake for an event of this device that is being handled
    /// (`pm_stay_awake`): reading `/sys/power/wakeup_count` waits for it to end, and a suspend
    /// started through the wakeup count protocol (or autosleep) fails meanwhile. A no-op unless
    /// user space enabled wakeup (`power/wakeup`). Not counted: one [`Device::relax`] ends it.
    /// Any context.
    pub fn stay_awake(&self) {
        // SAFETY: By the type invariant the device is valid; `pm_stay_awake` takes the
        // device's PM lock with interrupts disabled and does nothing without a wakeup source.
        unsafe { bindings::pm_stay_awake(addr_of_mut!((*self.as_raw()).dev)) }
    }

    /// Ends what [`Device::stay_awake`] started (`pm_relax`). Any context.
    pub fn relax(&self) {
        // SAFETY: By the type invariant the device is valid; `pm_relax` takes the device's PM
        // lock with interrupts disabled and does nothing without a wakeup source.
        unsafe { bindings::pm_relax(addr_of_mut!((*self.as_raw()).dev)) }
    }

    /// The byte order of the device's virtqueue payloads. It is fixed once features are
    /// negotiated, so drivers may keep it for their hot paths.
    pub fn byte_order(&self) -> ByteOrder {
        ByteOrder {
            little: self.is_little_endian(),
        }
    }
}

impl<'a> Device<device::Core<'a>> {
    /// Declares whether the device can wake the system (`device_set_wakeup_capable`): user
    /// space can then enable it in `power/wakeup`. May sleep.
    pub fn set_wakeup_capable(&self, capable: bool) {
        // SAFETY: By the type invariant the device is valid, and it is registered (a driver is
        // probing or bound: Core).
        unsafe { bindings::device_set_wakeup_capable(addr_of_mut!((*self.as_raw()).dev), capable) }
    }

    /// Whether the transport can read the config space at all (`config->get`).
    pub fn has_config(&self) -> bool {
        // SAFETY: By the type invariant `self.as_raw()` is valid; `config` is set by the
        // transport before the device is registered.
        unsafe { (*(*self.as_raw()).config).get.is_some() }
    }
}

impl<Ctx: device::DeviceContext> AsRef<device::Device<Ctx>> for Device<Ctx> {
    fn as_ref(&self) -> &device::Device<Ctx> {
        // SAFETY: By the type invariant of `Self`, `self.as_raw()` is a pointer to a valid
        // `struct virtio_device`.
        let dev = unsafe { addr_of_mut!((*self.as_raw()).dev) };
        // SAFETY: `dev` points to a valid `struct device`.
        unsafe { device::Device::from_raw(dev) }
    }
}

// SAFETY: `virtio::Device` is a transparent wrapper of `struct virtio_device`, which embeds its
// `struct device` at `dev`.
unsafe impl<Ctx: device::DeviceContext> device::AsBusDevice<Ctx> for Device<Ctx> {
    const OFFSET: usize = offset_of!(bindings::virtio_device, dev);
}

// SAFETY: `Device` is a transparent wrapper of a type that doesn't depend on `Device`'s generic
// argument.
kernel::impl_device_context_deref!(unsafe { Device });
kernel::impl_device_context_into_aref!(Device);

// SAFETY: Instances of `Device` are always reference-counted through their `struct device`.
unsafe impl crate::sync::aref::AlwaysRefCounted for Device {
    fn inc_ref(&self) {
        // SAFETY: The existence of a shared reference guarantees that the refcount is non-zero.
        unsafe { bindings::get_device(addr_of_mut!((*self.as_raw()).dev)) };
    }

    unsafe fn dec_ref(obj: NonNull<Self>) {
        // SAFETY: The safety requirements guarantee that the refcount is non-zero.
        unsafe {
            bindings::put_device(addr_of_mut!(
                (*obj.cast::<bindings::virtio_device>().as_ptr()).dev
            ))
        }
    }
}

// SAFETY: A `Device` is always reference-counted and can be released from any thread.
unsafe impl Send for Device {}

// SAFETY: `Device<Normal>` methods read the feature bits and call the PM wakeup functions,
// which take the device's own lock. The core writes the feature bits before `probe` and, while
// the driver is bound, in `restore`: `finalize_features` rewrites the driver's bits with the
// negotiated value, and on modern PCI clears and sets again a few transport bits (RING_RESET,
// SR_IOV, ADMIN_VQ), which may read transiently clear then. Each bit is tested with one word
// read (`__virtio_test_bit`); no driver feature changes while bound.
unsafe impl Sync for Device {}

// SAFETY: `Device<Bound>` has the methods of every device context (`Device<Ctx>`), as
// `Device<Normal>` has: each feature bit is tested with one word read (`__virtio_test_bit`), no
// driver feature changes while bound, and the PM wakeup functions take the device's own lock.
// `Bound` is a zero-sized type-state marker.
unsafe impl Sync for Device<device::Bound> {}
