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
//! [`QueueFinder::find_vqs`] returns a [`Transport`] and one [`VqHandle`] per
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
//! [`Transport`] takes the transport's lock and fails with `ENODEV` once the
//! queues are deleted. They are deleted by [`Transport::delete`] (reset, free
//! unused buffers, `del_vqs`), which a driver calls in `unbind` or `freeze`.
//! If it does not, the bus does it when `unbind` or a successful `freeze`
//! returns: the core requires the device reset within `remove`, `restore`
//! starts from a reset device, and nothing may touch the queues or the config
//! space after the device is gone. Work items that outlive `unbind` or `freeze`
//! by mistake therefore get errors, not freed memory.
//!
//! Each [`Transport`] releases only its own bus reference: after freeze and
//! restore, the old one (which a driver may still hold) stays dead and cannot
//! touch the new queues.

use crate::{
    bindings, device,
    device_id::RawDeviceId,
    driver,
    error::{from_result, to_result},
    prelude::*,
    sync::{new_condvar, new_mutex, new_spinlock_irq, Arc, CondVar, Mutex, SpinLockIrq},
    time::{Delta, Instant, Monotonic},
    transmute::{AsBytes, FromBytes},
    types::{ForeignOwnable, Opaque},
    ThisModule,
};
use core::{
    marker::PhantomData,
    mem::{offset_of, size_of},
    ptr::{addr_of_mut, NonNull},
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
        // SAFETY: `vdev` is valid and no driver uses it now.
        unsafe { core::ptr::write_volatile(addr_of_mut!((*vdev).priv_), core::ptr::null_mut()) };
        let r = from_result(|| {
            dev.as_ref()
                .set_drvdata(T::probe(dev, QueueFinder(PhantomData)))?;
            // The queue and config callbacks reach the driver through drvdata, so the device may
            // only start once drvdata is set: no queue interrupt comes before DRIVER_OK, and the
            // core enables config change callbacks only after `probe` returns.
            //
            // SAFETY: `vdev` is valid; its queues (if any) are set up.
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
            // SAFETY: `vdev` is valid and nothing of the driver runs any more.
            unsafe { Transport::kill(vdev) };
            // SAFETY: As above.
            if unsafe { bindings::virtio_get_status(vdev) }
                & bindings::VIRTIO_CONFIG_S_DRIVER_OK as u8
                != 0
            {
                // SAFETY: As above.
                unsafe { bindings::virtio_reset_device(vdev) };
            }
        }
        r
    }

    extern "C" fn remove_callback(vdev: *mut bindings::virtio_device) {
        // SAFETY: The virtio core calls `remove` with a valid, bound device, holding the device
        // lock, after disabling config change callbacks.
        let dev = unsafe { &*vdev.cast::<Device<device::CoreInternal<'_>>>() };
        // SAFETY: `remove` only follows a successful `probe`, which set drvdata to `T::Data`.
        let data = unsafe { dev.as_ref().drvdata_borrow::<T::Data<'_>>() };
        T::unbind(dev, data);
        // SAFETY: `vdev` is valid; the driver is done with the device.
        unsafe { Transport::kill(vdev) };
        // The core requires the device reset before `remove` returns. Deleting the queues
        // resets it, but a driver may have deleted them before the device became live again
        // (freeze, restore), or have none.
        //
        // SAFETY: `vdev` is valid and bound.
        if unsafe { bindings::virtio_get_status(vdev) } != 0 {
            // SAFETY: As above.
            unsafe { bindings::virtio_reset_device(vdev) };
        }
    }

    extern "C" fn config_changed_callback(vdev: *mut bindings::virtio_device) {
        // SAFETY: The core calls this only between `probe` and `remove` (config_core_enabled), on
        // a valid bound device.
        let dev = unsafe { &*vdev.cast::<Device<device::BoundInternal>>() };
        if !dev.has_drvdata() {
            return;
        }
        // SAFETY: Between `probe` and `remove`, drvdata is `T::Data`.
        let data = unsafe { dev.as_ref().drvdata_borrow::<T::Data<'_>>() };
        T::config_changed(data);
    }

    extern "C" fn queue_callback<const SLOT: usize>(vq: *mut bindings::virtqueue) {
        // SAFETY: `vring_interrupt` passes a valid queue of a live device.
        let vdev = unsafe { (*vq).vdev };
        // `priv` is NULL or the bus's reference to the transport of these queues, set before
        // the device went live and released only after `del_vqs` (whose `free_irq` waits for
        // running callbacks), or while the transport is kept alive across it.
        // SAFETY: `vdev` is valid; `priv` is a plain pointer field, stored volatile by writers.
        let t = unsafe { core::ptr::read_volatile(core::ptr::addr_of!((*vdev).priv_)) };
        if !t.is_null() {
            // SAFETY: `priv` came from `Arc::<Transport>::into_foreign` and is not released
            // while this runs (see above).
            unsafe { <Arc<Transport> as ForeignOwnable>::borrow(t.cast()) }.signal_used();
        }
        // Queue callbacks stop only at `del_vqs` (its `free_irq` waits for a running one), not
        // at reset; the bus deletes the queues in `remove` (`Transport::kill`) before drvdata
        // goes away, and drvdata is set before DRIVER_OK.
        // SAFETY: `vdev` is valid while its queues exist, and this callback is one of them.
        let dev = unsafe { &*vdev.cast::<Device<device::BoundInternal>>() };
        // A device that uses buffers before DRIVER_OK breaks the spec; do not trust it.
        if !dev.has_drvdata() {
            return;
        }
        // SAFETY: drvdata is set (checked above) and is `T::Data` while the driver is bound;
        // it is dropped only after `remove`, which deleted the queues (see above).
        let data = unsafe { dev.as_ref().drvdata_borrow::<T::Data<'_>>() };
        T::queue_done(data, SLOT);
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
        // SAFETY: The core calls `shutdown` with a valid device holding the device lock.
        let dev = unsafe { &*vdev.cast::<Device<device::CoreInternal<'_>>>() };
        // SAFETY: `shutdown` is only called on a bound device, whose drvdata is `T::Data`.
        let data = unsafe { dev.as_ref().drvdata_borrow::<T::Data<'_>>() };
        T::shutdown(dev, data);
        // SAFETY: `vdev` is valid. Breaks the device, waits for callbacks and resets it, as the
        // core does for drivers without a `shutdown`.
        unsafe { bindings::virtio_device_shutdown(vdev) };
    }

    extern "C" fn freeze_callback(vdev: *mut bindings::virtio_device) -> c_int {
        // The transport's PM callback calls `freeze` (`virtio_device_freeze`) holding the
        // transport (parent) device's lock, under which alone the transport removes the virtio
        // device; user space and probing are frozen. That serializes it with `probe`, `remove`
        // and `restore` as the device lock would.
        // SAFETY: `vdev` is a valid, bound device, serialized as `Core` requires (see above).
        let dev = unsafe { &*vdev.cast::<Device<device::CoreInternal<'_>>>() };
        // SAFETY: `freeze` is only called on a bound device, whose drvdata is `T::Data`.
        let data = unsafe { dev.as_ref().drvdata_borrow::<T::Data<'_>>() };
        from_result(|| {
            T::freeze(dev, data)?;
            // Whatever the driver kept, no queue of this device outlives the freeze: `restore`
            // starts from a reset device and sets up new ones.
            // SAFETY: `vdev` is valid and bound; `priv` is NULL or set by `find_vqs`.
            unsafe { Transport::kill(vdev) };
            Ok(0)
        })
    }

    extern "C" fn restore_callback(vdev: *mut bindings::virtio_device) -> c_int {
        // SAFETY: As in `freeze_callback`: called by the transport's PM callback on a bound
        // device, serialized with `probe`, `remove` and `freeze` by the parent's lock.
        let dev = unsafe { &*vdev.cast::<Device<device::CoreInternal<'_>>>() };
        // SAFETY: `restore` is only called on a bound device, whose drvdata is `T::Data`.
        let data = unsafe { dev.as_ref().drvdata_borrow::<T::Data<'_>>() };
        from_result(|| {
            let r = T::restore(dev, data, QueueFinder(PhantomData)).and_then(|()| {
                // As in `probe`: live once the queues exist, then `ready`.
                // SAFETY: `vdev` is valid; its queues (if any) are set up.
                unsafe { bindings::virtio_device_ready(vdev) };
                T::ready(dev, data).inspect_err(|_| {
                    // Back to the frozen state, so that `remove` finds what it expects.
                    let _ = T::freeze(dev, data);
                })
            });
            if r.is_err() {
                // The core marks the device FAILED; it stays bound without queues.
                // SAFETY: `vdev` is valid and bound; `priv` is NULL or set by `find_vqs`.
                unsafe { Transport::kill(vdev) };
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
    /// `Ok`, the bus deletes the queues (if the driver did not, with [`Transport::delete`]):
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
        // SAFETY: As in `stay_awake`.
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

/// The byte order of a device's virtqueue payloads: little-endian with VERSION_1 (or a legacy
/// device on a little-endian guest), guest-native otherwise.
#[derive(Clone, Copy)]
pub struct ByteOrder {
    little: bool,
}

impl ByteOrder {
    /// `v` in the device's byte order (`cpu_to_virtio16`).
    pub fn u16(self, v: u16) -> u16 {
        if self.little {
            v.to_le()
        } else {
            v
        }
    }

    /// `v` in the device's byte order (`cpu_to_virtio32`).
    pub fn u32(self, v: u32) -> u32 {
        if self.little {
            v.to_le()
        } else {
            v
        }
    }

    /// `v` in the device's byte order (`cpu_to_virtio64`).
    pub fn u64(self, v: u64) -> u64 {
        if self.little {
            v.to_le()
        } else {
            v
        }
    }
}

impl Device<device::BoundInternal> {
    /// Whether the bus has set drvdata (it does so before the device goes live).
    fn has_drvdata(&self) -> bool {
        // SAFETY: By the type invariant `self.as_raw()` is valid.
        !unsafe { bindings::dev_get_drvdata(addr_of_mut!((*self.as_raw()).dev)) }.is_null()
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

/// The device's features during [`Driver::validate`]: the only thing it may touch then.
pub struct Features<'a>(&'a Device<device::Core<'a>>);

impl Features<'_> {
    /// Whether feature `bit` is negotiated so far.
    pub fn has(&self, bit: u32) -> bool {
        self.0.has_feature(bit)
    }

    /// Drops feature `bit` from the negotiated set (bits past the 128 the core knows are
    /// never set).
    pub fn clear(&self, bit: u32) {
        if bit >= FEATURE_BITS {
            return;
        }
        // SAFETY: By the type invariant the device is valid, and `validate` runs under the
        // device lock before the features are final; `bit` is within the feature array.
        unsafe { bindings::__virtio_clear_bit(self.0.as_raw(), bit) }
    }
}

/// Lets driver `T` set up its device's queues; the bus hands it to [`Driver::probe`] and
/// [`Driver::restore`] only, so queue callbacks always reach `T`'s data.
pub struct QueueFinder<T: ?Sized>(PhantomData<fn(&T)>);

impl<T: Driver + 'static> QueueFinder<T> {
    /// Sets up the queues named in `queues`, in order. A queue without a name gets no index
    /// on the device and no handle; one with `callback` set calls [`Driver::queue_done`] with
    /// its position in the list.
    ///
    /// Fails with `EBUSY` when the device still has live queues.
    pub fn find_vqs(
        &self,
        dev: &Device<device::Core<'_>>,
        queues: &[QueueInfo],
    ) -> Result<(Arc<Transport>, KVec<Option<VqHandle>>)> {
        if queues.len() > MAX_QUEUES {
            return Err(EINVAL);
        }
        let vdev = dev.as_raw();
        // SAFETY: `vdev` is valid; `priv` belongs to this abstraction while the driver is bound.
        if !unsafe { (*vdev).priv_ }.is_null() {
            return Err(EBUSY);
        }
        // Everything that can fail is allocated before the queues exist.
        let mut handles = KVec::with_capacity(queues.len(), GFP_KERNEL)?;
        let transport = Arc::pin_init(
            pin_init!(Transport {
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
        // SAFETY: `vdev` is valid, the arrays hold `queues.len()` entries, the names are
        // `'static`, and the callbacks are those of `T`, the driver bound to `dev`.
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
            let mut state = transport.state.lock();
            state.alive = true;
            state.bus_ref = true;
        }
        // The bus holds one reference in `priv`, so it can delete the queues at `remove` even if
        // the driver still holds (or leaks) its own.
        //
        // SAFETY: `vdev` is valid; `priv` was NULL (checked above). Queue callbacks read it
        // concurrently (volatile).
        unsafe {
            core::ptr::write_volatile(
                addr_of_mut!((*vdev).priv_),
                transport.clone().into_foreign().cast(),
            )
        };
        for (slot, vq) in raw.iter().take(queues.len()).enumerate() {
            let h = NonNull::new(*vq).map(|vq| VqHandle {
                vq,
                slot,
                transport: transport.clone(),
            });
            // Within the capacity reserved above: cannot fail.
            let _ = handles.push(h, GFP_NOWAIT);
        }
        Ok((transport, handles))
    }
}

/// A field of a device's config space, for [`Transport::read_config_le32`] and
/// [`Transport::write_config_le32`].
#[derive(Clone, Copy)]
pub struct ConfigField {
    offset: usize,
    len: usize,
    feature: Option<u32>,
}

impl ConfigField {
    /// A 32-bit field at byte `offset` of the driver's `Config` (use `offset_of!`), present
    /// only when `feature` is negotiated (`None`: always present).
    pub const fn le32(offset: usize, feature: Option<u32>) -> Self {
        Self {
            offset,
            len: 4,
            feature,
        }
    }

    /// The field's offset if it is aligned, lies within `config_size` bytes (without
    /// wrapping), and its feature (if any) is negotiated according to `has_feature`.
    fn offset_in(self, config_size: usize, has_feature: impl FnOnce(u32) -> bool) -> Result<u32> {
        let end = self.offset.checked_add(self.len).ok_or(EINVAL)?;
        if self.len == 0 || self.offset % self.len != 0 || end > config_size {
            return Err(EINVAL);
        }
        if self.feature.is_some_and(|bit| !has_feature(bit)) {
            return Err(EINVAL);
        }
        u32::try_from(self.offset).map_err(|_| EINVAL)
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

/// A queue returned by [`QueueFinder::find_vqs`], to be typed with [`Virtqueue::new`].
pub struct VqHandle {
    vq: NonNull<bindings::virtqueue>,
    slot: usize,
    transport: Arc<Transport>,
}

impl VqHandle {
    /// Records how the tokens left on the queue are freed when the queues are deleted.
    /// `ENODEV` once they are.
    fn claim(&self, free: unsafe fn(*mut c_void)) -> Result {
        let mut state = self.transport.state.lock();
        if !state.alive {
            return Err(ENODEV);
        }
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
    /// Whether `vdev->priv` holds the bus's reference to this transport.
    bus_ref: bool,
    queues: [Option<QueueEntry>; MAX_QUEUES],
}

/// The queues of a device and its config space, for use outside bus callbacks (work items).
///
/// See the [module documentation](self) for how it ends.
#[pin_data]
pub struct Transport {
    vdev: *mut bindings::virtio_device,
    /// Size of the driver's `Config`: accesses must fall inside.
    config_size: usize,
    #[pin]
    state: Mutex<State>,
    /// Counts queue interrupts (hard interrupt context), for [`PageQueue`] waiters.
    #[pin]
    used: SpinLockIrq<u64>,
    #[pin]
    used_cv: CondVar,
}

// SAFETY: The device pointer is only used under `state`'s lock while `alive`, i.e. while the
// driver is bound; the virtio functions called on it may be called from any thread.
unsafe impl Send for Transport {}
// SAFETY: As above; all access goes through the mutex.
unsafe impl Sync for Transport {}

impl Transport {
    /// Runs `f` on the device while its queues are live; `ENODEV` afterwards.
    fn with_live<R>(&self, f: impl FnOnce(*mut bindings::virtio_device) -> R) -> Result<R> {
        let state = self.state.lock();
        if !state.alive {
            return Err(ENODEV);
        }
        Ok(f(self.vdev))
    }

    /// Checks that `field` lies inside the driver's `Config` and, for a field that exists only
    /// with a feature, that the feature was negotiated: only then does the device expose it.
    fn check_config(&self, vdev: *mut bindings::virtio_device, field: ConfigField) -> Result<u32> {
        // SAFETY: `vdev` is valid while the transport is alive (the caller holds the lock).
        field.offset_in(self.config_size, |bit| unsafe {
            bindings::__virtio_test_bit(vdev, bit)
        })
    }

    /// Reads the little-endian 32-bit config field `field`. May sleep.
    pub fn read_config_le32(&self, field: ConfigField) -> Result<u32> {
        if field.len != 4 {
            return Err(EINVAL);
        }
        self.with_live(|vdev| {
            let offset = self.check_config(vdev, field)?;
            // SAFETY: While alive the device is bound; the field is inside the config space the
            // device exposes (checked above).
            Ok(unsafe { bindings::virtio_cread_le32(vdev, offset) })
        })?
    }

    /// Writes the little-endian 32-bit config field `field`. May sleep.
    pub fn write_config_le32(&self, field: ConfigField, v: u32) -> Result {
        if field.len != 4 {
            return Err(EINVAL);
        }
        self.with_live(|vdev| {
            let offset = self.check_config(vdev, field)?;
            // SAFETY: As in `read_config_le32`.
            unsafe { bindings::virtio_cwrite_le32(vdev, offset, v) };
            Ok(())
        })?
    }

    /// A queue of this device used buffers (hard interrupt context).
    fn signal_used(&self) {
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
    /// queues (`restore`). Does nothing the second time, or for another device's transport.
    pub fn delete(&self, dev: &Device<device::Core<'_>>) {
        if dev.as_raw() != self.vdev {
            return;
        }
        self.delete_locked();
        // Only this transport's own reference: after a `restore`, `priv` may hold a newer one.
        let had_ref = core::mem::replace(&mut self.state.lock().bus_ref, false);
        if had_ref {
            // SAFETY: `dev` is bound and we hold its device lock (Core); `priv` holds the bus's
            // reference to this transport (`bus_ref`), whose queues are deleted now.
            unsafe { Self::release_bus_ref(self.vdev) };
        }
    }

    /// Drops the bus's reference in `priv`, if any, and returns it.
    ///
    /// # Safety
    ///
    /// `vdev` must be valid, and its `priv` either NULL or set by [`QueueFinder::find_vqs`].
    unsafe fn release_bus_ref(vdev: *mut bindings::virtio_device) -> Option<Arc<Transport>> {
        // SAFETY: By the safety requirements.
        let p = unsafe { (*vdev).priv_ };
        if p.is_null() {
            return None;
        }
        // SAFETY: By the safety requirements `vdev` is valid. Queue callbacks read it
        // concurrently (volatile).
        unsafe { core::ptr::write_volatile(addr_of_mut!((*vdev).priv_), core::ptr::null_mut()) };
        // SAFETY: `priv` holds the reference `find_vqs` leaked with `into_foreign`.
        Some(unsafe { Arc::<Transport>::from_foreign(p.cast()) })
    }

    fn delete_locked(&self) {
        let mut state = self.state.lock();
        if !state.alive {
            return;
        }
        state.alive = false;
        // SAFETY: The device is still bound (we were alive) and no queue operation runs: they
        // all hold this lock.
        unsafe { bindings::virtio_reset_device(self.vdev) };
        for q in state.queues.iter_mut().filter_map(|q| q.take()) {
            loop {
                // SAFETY: The queue is valid until `del_vqs` below; the device is reset.
                let token = unsafe { bindings::virtqueue_detach_unused_buf(q.vq.as_ptr()) };
                if token.is_null() {
                    break;
                }
                // SAFETY: Every token on this queue came from `KBox::into_raw` of the type
                // `free` was registered with.
                unsafe { (q.free)(token) };
            }
        }
        // SAFETY: The device is reset and its queues are no longer used.
        unsafe { bindings::virtio_del_vqs(self.vdev) };
    }

    /// Deletes the queues of `vdev` if they are still live and drops the bus's reference.
    ///
    /// # Safety
    ///
    /// `vdev` must be valid, and its `priv` either NULL or set by [`QueueFinder::find_vqs`].
    unsafe fn kill(vdev: *mut bindings::virtio_device) {
        // SAFETY: By the safety requirements.
        if let Some(t) = unsafe { Self::release_bus_ref(vdev) } {
            t.state.lock().bus_ref = false;
            t.delete_locked();
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
/// Operations take the [`Transport`] lock, which also serializes them as the virtio ring
/// requires. They may sleep and must not be used in atomic context.
pub struct Virtqueue<B> {
    vq: NonNull<bindings::virtqueue>,
    transport: Arc<Transport>,
    _buf: PhantomData<KBox<B>>,
}

// SAFETY: All access to the queue goes through the transport's mutex; buffers are `Send`.
unsafe impl<B: Send> Send for Virtqueue<B> {}
// SAFETY: As above.
unsafe impl<B: Send> Sync for Virtqueue<B> {}

/// A buffer that could not be added to a queue, and why.
pub struct AddError<B>(pub Error, pub KBox<B>);

impl<B: Send> Virtqueue<B> {
    /// Types the queue of `handle` for buffers `KBox<B>`.
    pub fn new(handle: VqHandle) -> Result<Self> {
        handle.claim(free_token::<B>)?;
        Ok(Self {
            vq: handle.vq,
            transport: handle.transport,
            _buf: PhantomData,
        })
    }

    fn add(&self, buf: KBox<B>, len: usize, out: bool) -> Result<(), AddError<B>> {
        if len > size_of::<B>() || len == 0 {
            return Err(AddError(EINVAL, buf));
        }
        let state = self.transport.state.lock();
        if !state.alive {
            return Err(AddError(ENODEV, buf));
        }
        let token = KBox::into_raw(buf);
        let mut sg = bindings::scatterlist::default();
        // SAFETY: `token` points to `len <= size_of::<B>()` bytes of kmalloc memory, which is
        // linearly mapped as `sg_init_one` requires.
        unsafe { bindings::sg_init_one(&mut sg, token.cast(), len as u32) };
        // The lock is a mutex, so the (indirect descriptor) allocation may sleep.
        // SAFETY: The queue is live (we hold the lock with `alive`); `sg` describes memory that
        // stays allocated until the token comes back from `get_buf` or `detach_unused_buf`.
        let r = unsafe {
            if out {
                bindings::virtqueue_add_outbuf(
                    self.vq.as_ptr(),
                    &mut sg,
                    1,
                    token.cast(),
                    bindings::GFP_KERNEL,
                )
            } else {
                bindings::virtqueue_add_inbuf(
                    self.vq.as_ptr(),
                    &mut sg,
                    1,
                    token.cast(),
                    bindings::GFP_KERNEL,
                )
            }
        };
        if r < 0 {
            // SAFETY: The device did not take the buffer; `token` is ours again.
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
        self.transport.state.lock().alive
    }

    /// Notifies the device of new buffers. Returns false if the device is broken or gone.
    pub fn kick(&self) -> bool {
        let state = self.transport.state.lock();
        // SAFETY: The queue is live while `alive`.
        state.alive && unsafe { bindings::virtqueue_kick(self.vq.as_ptr()) }
    }

    /// A buffer the device is done with, and how many bytes it wrote into it.
    pub fn get_buf(&self) -> Option<(KBox<B>, u32)> {
        let state = self.transport.state.lock();
        if !state.alive {
            return None;
        }
        let mut len = 0u32;
        // SAFETY: The queue is live while `alive`.
        let token = unsafe { bindings::virtqueue_get_buf(self.vq.as_ptr(), &mut len) };
        // SAFETY: Every token added to this queue came from `KBox::<B>::into_raw`, and the ring
        // returns each exactly once.
        NonNull::new(token).map(|t| (unsafe { KBox::from_raw(t.as_ptr().cast::<B>()) }, len))
    }

    /// Waits until the device gives a buffer back; `None` once the queues are deleted (the
    /// device was reset and will not answer). The queue must have been set up with a
    /// callback, whose interrupts wake the wait. `stalled` is called every [`STALL_INTERVAL`]
    /// while the device holds on. May sleep.
    pub fn wait_buf(&self, stalled: impl FnMut(Delta)) -> Option<(KBox<B>, u32)> {
        self.transport.wait_for(
            || match self.get_buf() {
                Some(buf) => Some(Some(buf)),
                None if !self.is_live() => Some(None),
                None => None,
            },
            stalled,
        )
    }

    /// Number of descriptors in the ring.
    pub fn vring_size(&self) -> u32 {
        let state = self.transport.state.lock();
        if !state.alive {
            return 0;
        }
        // SAFETY: The queue is live while `alive`.
        unsafe { bindings::virtqueue_get_vring_size(self.vq.as_ptr()) }
    }

    /// Number of free descriptors.
    pub fn num_free(&self) -> u32 {
        let state = self.transport.state.lock();
        if !state.alive {
            return 0;
        }
        // SAFETY: The queue is live while `alive`; `num_free` is a plain field.
        unsafe { (*self.vq.as_ptr()).num_free }
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
/// Operations take the [`Transport`] lock and may sleep.
///
/// [`HintBlock`]: crate::balloon::HintBlock
pub struct PageQueue {
    vq: NonNull<bindings::virtqueue>,
    transport: Arc<Transport>,
    /// Whether the ring passes guest physical addresses (no DMA mapping): only then may a
    /// hinted block be freed while its descriptor is on the ring.
    hints_ok: bool,
    /// Report buffers the device gave back so far (counted under the transport lock).
    reports_done: core::sync::atomic::AtomicU64,
    /// Set while a report is in flight: completions are only counted, so two reports at once
    /// could not tell whose came back.
    reporting: core::sync::atomic::AtomicBool,
}

// SAFETY: All access to the queue goes through the transport's mutex.
unsafe impl Send for PageQueue {}
// SAFETY: As above.
unsafe impl Sync for PageQueue {}

impl PageQueue {
    /// Types the queue of `handle` for pages and command ids.
    pub fn new(handle: VqHandle) -> Result<Self> {
        handle.claim(free_page_queue_token)?;
        let vq = handle.vq.as_ptr();
        // SAFETY: The queue and its device are live inside `with_live`.
        let hints_ok = handle.transport.with_live(|_| unsafe {
            bindings::virtqueue_dma_dev(vq).is_null() && (*(*vq).vdev).map.is_null()
        })?;
        Ok(Self {
            vq: handle.vq,
            transport: handle.transport,
            hints_ok,
            reports_done: core::sync::atomic::AtomicU64::new(0),
            reporting: core::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Runs `f` on the live queue, under the transport lock; `ENODEV` once deleted.
    fn with_live<R>(&self, f: impl FnOnce(*mut bindings::virtqueue) -> R) -> Result<R> {
        let state = self.transport.state.lock();
        if !state.alive {
            return Err(ENODEV);
        }
        Ok(f(self.vq.as_ptr()))
    }

    /// Takes every used buffer off the ring, freeing command id buffers and counting report
    /// buffers in `reports_done`. The caller holds the transport lock with the queue alive.
    fn drain_locked(&self, vq: *mut bindings::virtqueue) {
        loop {
            let mut len = 0u32;
            // SAFETY: The caller holds the transport lock with the queue alive.
            let token = unsafe { bindings::virtqueue_get_buf(vq, &mut len) };
            if token.is_null() {
                return;
            }
            if token == report_token() {
                self.reports_done
                    .fetch_add(1, core::sync::atomic::Ordering::Relaxed);
            }
            // SAFETY: Every token on this queue is a hint or report token or a command id box.
            unsafe { free_page_queue_token(token) };
        }
    }

    /// Takes the buffers the device is done with off the ring.
    pub fn drain(&self) {
        let _ = self.with_live(|vq| self.drain_locked(vq));
    }

    /// Gives the device a 32-bit command id to read (`id` already in the device's byte order).
    pub fn add_cmd_id(&self, id: u32) -> Result {
        let buf = KBox::new(id, GFP_KERNEL)?;
        self.with_live(|vq| {
            let token = KBox::into_raw(buf);
            let mut sg = bindings::scatterlist::default();
            // SAFETY: `token` points to 4 bytes of kmalloc memory, linearly mapped.
            unsafe { bindings::sg_init_one(&mut sg, token.cast(), size_of::<u32>() as u32) };
            // SAFETY: The queue is live; the buffer stays allocated until its token comes back
            // from the ring (drain, or detach when the queue is deleted).
            let r = unsafe {
                bindings::virtqueue_add_outbuf(vq, &mut sg, 1, token.cast(), bindings::GFP_KERNEL)
            };
            if r < 0 {
                // SAFETY: The device did not take the buffer; it is ours again.
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
            // SAFETY: The block is `HintBlock::BYTES` of linearly mapped memory.
            unsafe {
                bindings::sg_init_one(
                    &mut sg,
                    block.addr(),
                    crate::balloon::HintBlock::BYTES as u32,
                )
            };
            // The ring passes physical addresses (`hints_ok`): nothing is mapped that could
            // outlive the block. The device only learns the range (see the type documentation).
            // SAFETY: The queue is live; the token is never dereferenced.
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
            self.drain_locked(vq);
            let before = self.reports_done.load(Relaxed);
            // `pages` holds `nents` valid entries describing free blocks the page allocator
            // isolated for the duration of our caller's callback; this function returns only
            // once the device no longer uses them. `GFP_NOWAIT`: no sleeping allocation for
            // indirect descriptors (the core falls back to direct ones, `ENOSPC` if too few).
            // SAFETY: The queue is live; the buffers stay valid until the device used them.
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
                // SAFETY: The queue is live.
                unsafe { bindings::virtqueue_kick(vq) };
            }
            to_result(r).map(|()| before)
        })??;
        // Counted under the lock, whoever drained: one report is in flight at a time. Deleted:
        // the device was reset before the ring was freed, and the pages are ours again.
        self.transport.wait_for(
            || match self.with_live(|vq| self.drain_locked(vq)) {
                Err(e) => Some(Err(e)),
                Ok(()) if self.reports_done.load(Relaxed) != before => Some(Ok(())),
                Ok(()) => None,
            },
            stalled,
        )
    }

    /// Notifies the device of new buffers. Returns false if the device is broken or gone.
    pub fn kick(&self) -> bool {
        // SAFETY: The queue is live inside `with_live`.
        self.with_live(|vq| unsafe { bindings::virtqueue_kick(vq) })
            .unwrap_or(false)
    }

    /// Number of free descriptors (0 once the queue is gone).
    pub fn num_free(&self) -> u32 {
        // SAFETY: The queue is live inside `with_live`; `num_free` is a plain field.
        self.with_live(|vq| unsafe { (*vq).num_free }).unwrap_or(0)
    }

    /// Number of descriptors in the ring (0 once the queue is gone).
    pub fn vring_size(&self) -> u32 {
        // SAFETY: The queue is live inside `with_live`.
        self.with_live(|vq| unsafe { bindings::virtqueue_get_vring_size(vq) })
            .unwrap_or(0)
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

// SAFETY: Same as `Device<Normal>`; `Bound` is a zero-sized type-state marker.
unsafe impl Sync for Device<device::Bound> {}

#[cfg(CONFIG_RUST_BALLOON_KUNIT_TEST)]
#[macros::kunit_tests(rust_kernel_virtio)]
mod tests {
    use super::*;

    #[test]
    fn config_fields_stay_inside() {
        let yes = |_| true;
        assert_eq!(ConfigField::le32(0, None).offset_in(16, yes), Ok(0));
        assert_eq!(ConfigField::le32(12, None).offset_in(16, yes), Ok(12));
        // Past the end, unaligned, and `offset + len` wrapping around.
        assert_eq!(ConfigField::le32(16, None).offset_in(16, yes), Err(EINVAL));
        assert_eq!(ConfigField::le32(2, None).offset_in(16, yes), Err(EINVAL));
        assert_eq!(
            ConfigField::le32(usize::MAX - 1, None).offset_in(usize::MAX, yes),
            Err(EINVAL)
        );
    }

    #[test]
    fn feature_fields_need_their_feature() {
        let field = ConfigField::le32(12, Some(4));
        assert_eq!(field.offset_in(16, |bit| bit == 4), Ok(12));
        assert_eq!(field.offset_in(16, |_| false), Err(EINVAL));
    }
}
