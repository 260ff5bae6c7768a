// SPDX-License-Identifier: GPL-2.0

//! Shrinkers: objects the memory reclaim code may ask to free.
//!
//! C header: [`include/linux/shrinker.h`](srctree/include/linux/shrinker.h)
//!
//! Under memory pressure, reclaim asks each shrinker how many objects it could free
//! ([`Shrink::count`]) and then asks it to free some ([`Shrink::scan`]).
//!
//! # Context
//!
//! Both callbacks run in reclaim: in kswapd, or in a task whose allocation entered direct
//! reclaim (never in atomic context). They must not allocate memory that can reclaim, nor take
//! a lock that is held across such an allocation: reclaim could then wait for itself. Several
//! calls may run at once, on different CPUs.

use crate::{bindings, ffi::c_ulong, prelude::*, sync::Arc};
use core::{marker::PhantomData, ptr::NonNull};

/// Objects a [`Shrinker`] can free.
pub trait Shrink: Send + Sync {
    /// How many objects could be freed now; 0 when there is nothing to do.
    fn count(&self) -> usize;

    /// Frees up to `nr_to_scan` objects (it may free a few more, a whole unit); returns how
    /// many were freed, or `None` when nothing can be done now (`SHRINK_STOP`).
    fn scan(&self, nr_to_scan: usize) -> Option<usize>;
}

/// A registered shrinker (`shrinker_alloc()`, `shrinker_register()`); dropping it frees it.
///
/// The shrinker holds a reference to its data; `shrinker_free()` in `drop` waits until no
/// callback runs any more, then the reference is released; dropping it sleeps (process context
/// only). With `CONFIG_SHRINKER_DEBUG` it
/// shows in debugfs as `shrinker/NAME-ID/{count,scan}`.
///
/// # Invariants
///
/// `raw` is a registered shrinker whose `private_data` holds a reference from
/// `Arc::<T>::into_raw`, and whose callbacks are those of `T`.
///
/// # Examples
///
/// ```
/// use kernel::{prelude::*, shrinker::{Shrink, Shrinker}, sync::Arc};
///
/// struct Empty;
///
/// impl Shrink for Empty {
///     fn count(&self) -> usize {
///         0
///     }
///
///     fn scan(&self, _nr_to_scan: usize) -> Option<usize> {
///         None
///     }
/// }
///
/// let s = Shrinker::register(c"rust-doctest", Arc::new(Empty, GFP_KERNEL)?)?;
/// drop(s);
/// # Ok::<(), Error>(())
/// ```
pub struct Shrinker<T: Shrink> {
    raw: NonNull<bindings::shrinker>,
    _data: PhantomData<Arc<T>>,
}

// SAFETY: The shrinker may be freed from any thread; the data is `Send + Sync`.
unsafe impl<T: Shrink> Send for Shrinker<T> {}
// SAFETY: `&Shrinker` gives no access to anything.
unsafe impl<T: Shrink> Sync for Shrinker<T> {}

impl<T: Shrink> Shrinker<T> {
    /// Registers a shrinker named `name` that frees `data`'s objects.
    pub fn register(name: &CStr, data: Arc<T>) -> Result<Self> {
        // SAFETY: The format takes one C string, `name`, valid for the call; the name is copied.
        let raw = unsafe { bindings::shrinker_alloc(0, c"%s".as_char_ptr(), name.as_char_ptr()) };
        let raw = NonNull::new(raw).ok_or(ENOMEM)?;
        let p = raw.as_ptr();
        // SAFETY: `p` was just allocated and is not registered yet: nothing else uses it.
        unsafe {
            (*p).count_objects = Some(count_callback::<T>);
            (*p).scan_objects = Some(scan_callback::<T>);
            (*p).private_data = Arc::into_raw(data).cast_mut().cast();
            bindings::shrinker_register(p);
        }
        // INVARIANT: Registered just above with `T`'s callbacks and a reference in
        // `private_data`.
        Ok(Self {
            raw,
            _data: PhantomData,
        })
    }
}

impl<T: Shrink> Drop for Shrinker<T> {
    fn drop(&mut self) {
        let p = self.raw.as_ptr();
        // SAFETY: By the type invariant the shrinker is valid until `shrinker_free` below.
        let data = unsafe { (*p).private_data };
        // SAFETY: By the type invariant `p` is registered. When this returns, no callback runs
        // and none will (it waits for the callers' references).
        unsafe { bindings::shrinker_free(p) };
        // SAFETY: By the type invariant `data` is the reference `register` leaked with
        // `Arc::into_raw`; no callback uses it any more.
        drop(unsafe { Arc::<T>::from_raw(data.cast()) });
    }
}

/// Returns the data of a shrinker registered by [`Shrinker::register`].
///
/// # Safety
///
/// `s` must be a shrinker registered by `Shrinker::<T>::register` that is not freed yet.
unsafe fn data<'a, T: Shrink>(s: *mut bindings::shrinker) -> &'a T {
    // SAFETY: By the safety requirements `private_data` holds an `Arc<T>` reference, alive until
    // `shrinker_free` has waited for every callback.
    unsafe { &*(*s).private_data.cast::<T>() }
}

/// `count_objects` of a `Shrinker<T>`.
///
/// # Safety
///
/// Only reclaim calls it, for a shrinker registered by `Shrinker::<T>::register` that it holds a
/// reference to.
unsafe extern "C" fn count_callback<T: Shrink>(
    s: *mut bindings::shrinker,
    _sc: *mut bindings::shrink_control,
) -> c_ulong {
    // Reclaim calls this only for a registered shrinker, holding a reference to it.
    // SAFETY: By the type invariant of `Shrinker<T>`, a shrinker with this callback was
    // registered by `Shrinker::<T>::register` and is not freed before its `drop`.
    unsafe { data::<T>(s) }.count() as c_ulong
}

/// `scan_objects` of a `Shrinker<T>`.
///
/// # Safety
///
/// As for `count_callback`, and `sc` must be valid for the call.
unsafe extern "C" fn scan_callback<T: Shrink>(
    s: *mut bindings::shrinker,
    sc: *mut bindings::shrink_control,
) -> c_ulong {
    // SAFETY: Reclaim passes a valid `shrink_control` for this call.
    let nr = unsafe { (*sc).nr_to_scan };
    // Reclaim calls this only for a registered shrinker, holding a reference to it.
    // SAFETY: By the type invariant of `Shrinker<T>`, a shrinker with this callback was
    // registered by `Shrinker::<T>::register` and is not freed before its `drop`.
    match unsafe { data::<T>(s) }.scan(nr) {
        Some(freed) => freed as c_ulong,
        None => SHRINK_STOP,
    }
}

/// `SHRINK_STOP`: the shrinker cannot make progress now.
const SHRINK_STOP: c_ulong = !0;
