// SPDX-License-Identifier: GPL-2.0

//! Free page reporting: telling a hypervisor which guest pages are free.
//!
//! C header: [`include/linux/page_reporting.h`](srctree/include/linux/page_reporting.h)
//!
//! A device registers ([`Registration::new`]); from then on the page allocator collects free
//! blocks of at least the reporting order, takes them off its free lists, and hands them to
//! [`Report::report`] as a scatterlist ([`ReportedPages`]). When the callback returns `Ok`, the
//! blocks go back to the free lists marked as reported (the host may have discarded them); on
//! an error they go back unreported. Only one device can be registered at a time (`EBUSY`).
//!
//! # Context
//!
//! [`Report::report`] runs from a delayed work item on the freezable system work queue
//! (process context, may sleep), one call at a time. The pages belong to the callback only
//! until it returns, so a device must be done with them by then:
//! the virtio bus's `PageQueue::report` waits for that.

use crate::{
    bindings, container_of,
    error::to_result,
    ffi::{c_int, c_uint},
    prelude::*,
    sync::Arc,
    types::Opaque,
};
use core::{marker::PhantomData, ptr::NonNull};

/// Free blocks handed to [`Report::report`], as the core's scatterlist.
///
/// It borrows the blocks for the duration of the callback: it is neither `Clone` nor `Send`,
/// and the only thing that can be done with it besides reading its size is to give it to a
/// device through an API that returns only once the device has finished with it.
///
/// # Invariants
///
/// `sg` is the first of `nents` valid scatterlist entries, chained as `sg_next` expects, which
/// describe free blocks the page reporting core holds for the callback, for `'a`.
pub struct ReportedPages<'a> {
    sg: NonNull<bindings::scatterlist>,
    nents: u32,
    _borrow: PhantomData<&'a mut bindings::scatterlist>,
}

impl ReportedPages<'_> {
    /// Number of scatterlist entries (free blocks).
    pub fn nents(&self) -> u32 {
        self.nents
    }

    /// Total length of the blocks, in bytes.
    pub fn bytes(&self) -> u64 {
        let mut sg = self.sg.as_ptr();
        let mut total = 0u64;
        for _ in 0..self.nents {
            // SAFETY: By the type invariant, `sg` is one of the `nents` valid entries.
            total += u64::from(unsafe { (*sg).length });
            // SAFETY: By the type invariant, `sg` is one of the `nents` valid entries, chained as
            // `sg_next` expects.
            sg = unsafe { bindings::sg_next(sg) };
        }
        total
    }

    /// The scatterlist, for a device queue that returns only once the device is done with it.
    pub(crate) fn as_raw(&self) -> *mut bindings::scatterlist {
        self.sg.as_ptr()
    }
}

/// A device that takes reports of free pages.
pub trait Report: Send + Sync {
    /// Tells the device that `pages` are free. Return `Ok` only when the device is done with
    /// them. See the [module documentation](self) for the context.
    fn report(&self, pages: &ReportedPages<'_>) -> Result;
}

#[pin_data]
struct Inner<T: Report> {
    #[pin]
    info: Opaque<bindings::page_reporting_dev_info>,
    data: Arc<T>,
}

/// A registered page reporting device; dropping it unregisters it.
///
/// Unregistering cancels the reporting work and waits for a running report to finish, so the
/// data outlives every call of [`Report::report`]. Dropping it sleeps: process context only.
///
/// # Invariants
///
/// `self.0.info` is registered with the page reporting core, with `report_callback::<T>` as its
/// `report`, from [`Registration::new`] until `drop` unregisters it; it stays pinned in the box
/// meanwhile.
pub struct Registration<T: Report>(Pin<KBox<Inner<T>>>);

// SAFETY: The registration may be dropped from any thread; the data is `Send + Sync`.
unsafe impl<T: Report> Send for Registration<T> {}
// SAFETY: `&Registration` gives no access to anything.
unsafe impl<T: Report> Sync for Registration<T> {}

impl<T: Report> Registration<T> {
    /// Registers `data` as the system's page reporting device. At most `capacity` blocks come
    /// in one report (0 or more than `PAGE_REPORTING_CAPACITY`, 32, means 32); blocks are of
    /// at least `order` (`None`: the `page_reporting.page_reporting_order` parameter, or
    /// `pageblock_order`).
    pub fn new(data: Arc<T>, capacity: u32, order: Option<u32>) -> Result<Self> {
        let order = order.unwrap_or(bindings::PAGE_REPORTING_ORDER_UNSPECIFIED as u32);
        let inner = KBox::pin_init(
            pin_init!(Inner {
                info <- Opaque::ffi_init(move |p: *mut bindings::page_reporting_dev_info| {
                    // SAFETY: `p` is valid for writes; all-zero is a valid
                    // `page_reporting_dev_info`, which `page_reporting_register` initializes.
                    unsafe {
                        core::ptr::write_bytes(p, 0, 1);
                        (*p).report = Some(report_callback::<T>);
                        (*p).order = order;
                        (*p).capacity = capacity;
                    }
                }),
                data,
            }),
            GFP_KERNEL,
        )?;
        // SAFETY: `info` is pinned and initialized, and stays registered until `drop`.
        to_result(unsafe { bindings::page_reporting_register(inner.info.get()) })?;
        // INVARIANT: `info` was registered just above with `report_callback::<T>`; the box keeps
        // it pinned.
        Ok(Self(inner))
    }

    /// The number of blocks per report the core settled on.
    pub fn capacity(&self) -> u32 {
        // SAFETY: By the type invariant `info` is valid (pinned and registered); the core writes
        // `capacity` only in `register`.
        unsafe { (*self.0.info.get()).capacity }
    }
}

impl<T: Report> Drop for Registration<T> {
    fn drop(&mut self) {
        // SAFETY: By the type invariant `info` is registered. Unregistering unpublishes it, waits
        // for RCU readers and cancels the reporting work synchronously.
        unsafe { bindings::page_reporting_unregister(self.0.info.get()) };
    }
}

/// `report` of a `Registration<T>`.
///
/// # Safety
///
/// Only the page reporting core calls it, with the `page_reporting_dev_info` of a live
/// `Inner<T>` and `nents` valid scatterlist entries of free blocks it holds for the call.
unsafe extern "C" fn report_callback<T: Report>(
    prdev: *mut bindings::page_reporting_dev_info,
    sg: *mut bindings::scatterlist,
    nents: c_uint,
) -> c_int {
    // `Opaque` is transparent, so `info` is at the same address as the C struct.
    // SAFETY: `prdev` is the `info` of a pinned `Inner<T>` (safety requirements), alive while
    // registered by the type invariant of `Registration<T>`.
    let inner = unsafe {
        &*container_of!(
            prdev.cast::<Opaque<bindings::page_reporting_dev_info>>(),
            Inner<T>,
            info
        )
    };
    let Some(sg) = NonNull::new(sg) else {
        return EINVAL.to_errno();
    };
    // INVARIANT: By the safety requirements, `sg` heads `nents` valid entries of free blocks the
    // core holds until this call returns, which `pages` does not outlive.
    let pages = ReportedPages {
        sg,
        nents,
        _borrow: PhantomData,
    };
    match inner.data.report(&pages) {
        Ok(()) => 0,
        Err(e) => e.to_errno(),
    }
}
