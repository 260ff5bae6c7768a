// SPDX-License-Identifier: GPL-2.0

//! OOM notifiers.
//!
//! C header: [`include/linux/oom.h`](srctree/include/linux/oom.h)
//!
//! Before the OOM killer picks a victim, `out_of_memory()` calls every registered OOM notifier.
//! A notifier that can give memory back (a balloon that deflates, a cache that drops) reports
//! how many pages it freed; if any notifier freed something, the allocation is retried and
//! nobody is killed.
//!
//! # Context
//!
//! [`OomNotify::out_of_memory`] runs in process context, in the task whose allocation failed,
//! with the global `oom_lock` held (memcg OOMs do not call notifiers). It may sleep, but it
//! must not allocate memory that needs reclaim, and must not wait for anything that waits for
//! memory itself: that task would wait for the OOM killer, which waits for the notifier.

use crate::{
    bindings, container_of,
    error::to_result,
    ffi::{c_int, c_ulong, c_void},
    prelude::*,
    sync::Arc,
    types::Opaque,
};

/// Something that can give memory back when the system runs out of it.
pub trait OomNotify: Send + Sync {
    /// Frees what it can; returns how many pages (of `PAGE_SIZE`) went back to the allocator.
    /// Returning 0 lets the OOM killer go ahead. See the [module documentation](self) for the
    /// context this runs in.
    fn out_of_memory(&self) -> usize;
}

#[pin_data]
struct Inner<T: OomNotify> {
    #[pin]
    nb: Opaque<bindings::notifier_block>,
    data: Arc<T>,
}

/// A registered OOM notifier (`register_oom_notifier()`); dropping it unregisters it.
///
/// Unregistering waits until no call of the notifier runs any more (the notifier chain is a
/// blocking one), so the data it holds outlives every call. Dropping it sleeps: process context
/// only.
///
/// # Invariants
///
/// `self.0.nb` is registered with the OOM notifier chain, with `notifier_call::<T>` as its
/// callback, from [`Registration::new`] until `drop` unregisters it; it stays pinned in the box
/// meanwhile.
///
/// # Examples
///
/// ```
/// use kernel::{oom, prelude::*, sync::Arc};
///
/// struct Nothing;
///
/// impl oom::OomNotify for Nothing {
///     fn out_of_memory(&self) -> usize {
///         0
///     }
/// }
///
/// let reg = oom::Registration::new(Arc::new(Nothing, GFP_KERNEL)?, 0)?;
/// drop(reg); // Unregisters.
/// # Ok::<(), Error>(())
/// ```
pub struct Registration<T: OomNotify>(Pin<KBox<Inner<T>>>);

// SAFETY: The registration may be dropped from any thread; the data is `Send + Sync`.
unsafe impl<T: OomNotify> Send for Registration<T> {}
// SAFETY: `&Registration` gives no access to anything.
unsafe impl<T: OomNotify> Sync for Registration<T> {}

impl<T: OomNotify> Registration<T> {
    /// Registers `data` to be called on OOM, before notifiers of lower `priority`.
    pub fn new(data: Arc<T>, priority: i32) -> Result<Self> {
        let inner = KBox::pin_init(
            pin_init!(Inner {
                nb: Opaque::new(bindings::notifier_block {
                    notifier_call: Some(notifier_call::<T>),
                    next: core::ptr::null_mut(),
                    priority,
                }),
                data,
            }),
            GFP_KERNEL,
        )?;
        // SAFETY: `nb` is pinned in the box and initialized; it stays registered until `drop`.
        to_result(unsafe { bindings::register_oom_notifier(inner.nb.get()) })?;
        // INVARIANT: `nb` was registered just above with `notifier_call::<T>`; the box keeps it
        // pinned.
        Ok(Self(inner))
    }
}

impl<T: OomNotify> Drop for Registration<T> {
    fn drop(&mut self) {
        // SAFETY: By the type invariant `nb` is registered. Unregistering takes the chain's rwsem
        // for writing, so no call runs any more when it returns.
        unsafe { bindings::unregister_oom_notifier(self.0.nb.get()) };
    }
}

/// `notifier_call` of a `Registration<T>`.
///
/// # Safety
///
/// Only the OOM notifier chain calls it, with the `notifier_block` of a live `Inner<T>` and
/// `parm` pointing to the `unsigned long` count of freed pages.
unsafe extern "C" fn notifier_call<T: OomNotify>(
    nb: *mut bindings::notifier_block,
    _action: c_ulong,
    parm: *mut c_void,
) -> c_int {
    let nb = nb.cast::<Opaque<bindings::notifier_block>>();
    // SAFETY: By the safety requirements `nb` is the `nb` field of a pinned `Inner<T>`, which by
    // the type invariant of `Registration<T>` stays alive while registered.
    let inner = unsafe { &*container_of!(nb, Inner<T>, nb) };
    let freed = inner.data.out_of_memory();
    // SAFETY: `out_of_memory()` passes the address of its `unsigned long freed`.
    unsafe { *parm.cast::<c_ulong>() += freed as c_ulong };
    bindings::NOTIFY_OK as c_int
}
