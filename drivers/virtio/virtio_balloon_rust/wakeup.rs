// SPDX-License-Identifier: GPL-2.0

//! Holding the system awake while the balloon changes size or statistics are gathered.
//!
//! The device is wakeup-capable; once user space enables wakeup (`power/wakeup`), the event
//! lasts from a host request to the end of the work that answers it: `/sys/power/wakeup_count`
//! reads wait for it, and a suspend through that protocol fails meanwhile instead of freezing
//! the guest halfway through a balloon change. As in the C driver, each kind of work sets its
//! bit when it is queued and clears it when it starts; the hold ends when a work item finishes
//! with no bit set. Unlike the C driver, the hold also ends when the work is cancelled (unbind,
//! freeze, shutdown): after an unbind mid-change the C driver's event never ends.

use kernel::{new_spinlock_irq, prelude::*, sync::SpinLockIrq, virtio};

/// A kind of work that holds the system awake from queueing to completion.
#[derive(Clone, Copy)]
pub(super) enum Event {
    /// The size work (inflate or deflate towards the target).
    Size = 1 << 0,
    /// The statistics work.
    Stats = 1 << 1,
}

struct State {
    /// Events queued and not yet started.
    pending: u32,
    /// Whether the device holds the system awake (`pm_stay_awake`).
    held: bool,
}

#[pin_data]
pub(super) struct Wakeup {
    #[pin]
    state: SpinLockIrq<State>,
}

impl Wakeup {
    pub(super) fn new() -> impl PinInit<Self> {
        pin_init!(Wakeup {
            state <- new_spinlock_irq!(State {
                pending: 0,
                held: false,
            }),
        })
    }

    /// Work for `ev` is being queued: hold the system awake until it ran. Any context.
    pub(super) fn start(&self, dev: &virtio::Device, ev: Event) {
        let mut s = self.state.lock();
        s.pending |= ev as u32;
        if !s.held {
            s.held = true;
            dev.stay_awake();
        }
    }

    /// The work for `ev` starts. The hold ends when the returned guard goes, unless work was
    /// queued again meanwhile.
    pub(super) fn process<'a>(&'a self, dev: &'a virtio::Device, ev: Event) -> Processing<'a> {
        self.state.lock().pending &= !(ev as u32);
        Processing { wakeup: self, dev }
    }

    /// The work was cancelled: whatever was pending, the hold ends.
    pub(super) fn release(&self, dev: &virtio::Device) {
        let mut s = self.state.lock();
        s.pending = 0;
        if core::mem::take(&mut s.held) {
            dev.relax();
        }
    }
}

/// A work item holding the system awake while it runs; see [`Wakeup::process`].
pub(super) struct Processing<'a> {
    wakeup: &'a Wakeup,
    dev: &'a virtio::Device,
}

impl Drop for Processing<'_> {
    fn drop(&mut self) {
        let mut s = self.wakeup.state.lock();
        if s.pending == 0 && core::mem::take(&mut s.held) {
            self.dev.relax();
        }
    }
}
