// SPDX-License-Identifier: GPL-2.0

//! Free page hinting (`FREE_PAGE_HINT`), and the shrinker that returns hinted blocks.
//!
//! When a migration starts, the host writes a new command id (>= 2) into the config space.
//! The hint work then sends the id (out buffer), takes every free block of `MAX_PAGE_ORDER`
//! it can get without reclaim and hands each to the host (in buffer), always keeping one ring
//! slot for the STOP id it sends at the end. The host skips hinted pages when it copies guest
//! memory. The guest keeps the blocks off its allocator until the host says DONE (when the
//! migration ends), the shrinker gives them back under memory pressure, or the device goes
//! away.
//!
//! Beyond the C driver: a host that stops taking hints (the ring stays full for
//! [`HINT_STALL`]) ends the run with a message instead of a busy loop, and the blocks go back
//! only after the device is reset on unbind.

use super::{Balloon, RateLimit, CFG_FREE_PAGE_HINT_CMD_ID, MESSAGE_INTERVAL};
use core::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use kernel::{
    balloon::HintBlock,
    bindings, new_mutex, new_spinlock,
    prelude::*,
    shrinker::Shrink,
    sync::{Mutex, SpinLock},
    time::{delay::fsleep, Delta, Instant, Monotonic},
    virtio::PageQueue,
};

const CMD_ID_STOP: u32 = bindings::VIRTIO_BALLOON_CMD_ID_STOP;
const CMD_ID_DONE: u32 = bindings::VIRTIO_BALLOON_CMD_ID_DONE;

/// A run ends when the host takes no hint for this long while the ring is full.
const HINT_STALL: Delta = Delta::from_secs(1);

#[pin_data]
pub(super) struct Hinting {
    vq: Option<PageQueue>,
    /// Set from `config_changed` (atomic context): the cmd id must be read again.
    read_cmd_id: AtomicBool,
    /// The cmd id last read from the config space (CPU order).
    received: AtomicU32,
    /// The id of the run in progress, or of the last one (CPU order).
    active: AtomicU32,
    /// Hinted blocks, kept off the allocator until DONE. Never held across an allocation
    /// that can reclaim: the shrinker takes it. (kvmalloc'ed: a 1 TiB guest holds 256 Ki
    /// blocks, 2 MiB of pointers.)
    #[pin]
    blocks: SpinLock<KVVec<HintBlock>>,
    #[pin]
    msg: Mutex<RateLimit>,
}

impl Hinting {
    pub(super) fn new(vq: Option<PageQueue>) -> impl PinInit<Self> {
        pin_init!(Hinting {
            vq,
            read_cmd_id: AtomicBool::new(false),
            received: AtomicU32::new(CMD_ID_STOP),
            active: AtomicU32::new(CMD_ID_STOP),
            blocks <- new_spinlock!(KVVec::new()),
            msg <- new_mutex!(RateLimit::new()),
        })
    }

    /// The config space changed (atomic context). Returns whether the hint work must be
    /// queued: only when no re-read of the cmd id is pending already.
    pub(super) fn cmd_id_changed(&self) -> bool {
        self.vq.is_some() && !self.read_cmd_id.swap(true, Ordering::AcqRel)
    }

    fn held(&self) -> usize {
        self.blocks.lock().len()
    }

    /// Makes room for one more block in the list, growing it outside the lock (the growth may
    /// reclaim, and reclaim calls the shrinker, which takes the lock).
    fn reserve_one(&self) -> Result {
        let (len, cap) = {
            let blocks = self.blocks.lock();
            (blocks.len(), blocks.capacity())
        };
        if len < cap {
            return Ok(());
        }
        let mut bigger = KVVec::with_capacity((cap * 2).max(64), GFP_KERNEL)?;
        let mut blocks = self.blocks.lock();
        // Only the hint work adds blocks; the shrinker may have taken some meanwhile.
        while let Some(block) = blocks.pop() {
            // Within the capacity just reserved: does not allocate.
            let _ = bigger.push(block, GFP_NOWAIT);
        }
        core::mem::swap(&mut *blocks, &mut bigger);
        drop(blocks);
        // `bigger` is now the old, empty list.
        Ok(())
    }
}

impl Balloon {
    /// The latest cmd id, read from the config space if it changed.
    fn cmd_id_received(&self) -> u32 {
        if self.hint.read_cmd_id.swap(false, Ordering::AcqRel) {
            if let Ok(id) = self
                .pfn_queues()
                .vq_set()
                .read_config_le32(CFG_FREE_PAGE_HINT_CMD_ID)
            {
                self.hint.received.store(id, Ordering::Relaxed);
            }
        }
        self.hint.received.load(Ordering::Relaxed)
    }

    /// The hint work (dedicated freezable, CPU-intensive work queue).
    pub(super) fn report_free_page_work(&self) {
        let Some(vq) = &self.hint.vq else { return };
        let cmd = self.cmd_id_received();
        if cmd == CMD_ID_DONE {
            // The migration is over: every block goes back.
            self.return_hints(usize::MAX);
        } else if cmd != CMD_ID_STOP && cmd != self.hint.active.load(Ordering::Relaxed) {
            // A new run (each id is sent once; a STOP or a repeated id starts nothing).
            self.hint_run(vq, cmd);
        }
    }

    fn hint_message(&self, args: core::fmt::Arguments<'_>) {
        if let Some(suppressed) = self.hint.msg.lock().allow(MESSAGE_INTERVAL) {
            dev_warn!(
                self.dev(),
                "free page hinting: {} ({} messages suppressed)\n",
                args,
                suppressed
            );
        }
    }

    fn hint_run(&self, vq: &PageQueue, cmd: u32) {
        let order = self.pfn_queues().order;
        vq.drain();
        self.hint.active.store(cmd, Ordering::Relaxed);
        if let Err(e) = vq.add_cmd_id(order.to_device_u32(cmd)) {
            self.hint_message(format_args!("cannot send cmd id {}: {:?}", cmd, e));
            return;
        }
        vq.kick();

        let mut full_since: Option<Instant<Monotonic>> = None;
        // Until the host moves on (STOP, DONE or a new id) or no free block is left.
        while self.hint.active.load(Ordering::Relaxed) == self.cmd_id_received() {
            vq.drain();
            // One slot always stays free for the stop id.
            if vq.num_free() <= 1 {
                let since = *full_since.get_or_insert_with(Instant::<Monotonic>::now);
                if Instant::<Monotonic>::now() - since >= HINT_STALL {
                    self.hint_message(format_args!(
                        "host took no hint for {} ms; ending run {}",
                        HINT_STALL.as_millis(),
                        cmd
                    ));
                    break;
                }
                fsleep(Delta::from_millis(1));
                continue;
            }
            full_since = None;
            if let Err(e) = self.hint.reserve_one() {
                self.hint_message(format_args!("cannot grow the hint list: {:?}", e));
                break;
            }
            // Only memory that is free right now: hinting never reclaims.
            let Some(block) = HintBlock::alloc() else {
                break;
            };
            if let Err(e) = vq.add_hint(&block) {
                self.hint_message(format_args!("cannot queue a hint: {:?}", e));
                break;
            }
            vq.kick();
            // Room was reserved above and only this work adds blocks: this does not allocate.
            if self
                .hint
                .blocks
                .lock()
                .push(block, GFP_NOWAIT | __GFP_NOWARN)
                .is_err()
            {
                break;
            }
        }

        vq.drain();
        if let Err(e) = vq.add_cmd_id(order.to_device_u32(CMD_ID_STOP)) {
            self.hint_message(format_args!("cannot send the stop id: {:?}", e));
        }
        vq.kick();
    }

    /// Gives up to `max` hinted blocks back to the allocator; returns how many.
    pub(super) fn return_hints(&self, max: usize) -> usize {
        let mut n = 0;
        while n < max {
            // One block per lock hold: freeing a large list must not stall other CPUs.
            let Some(block) = self.hint.blocks.lock().pop() else {
                break;
            };
            drop(block);
            n += 1;
        }
        n
    }
}

/// Reclaim context (see `kernel::shrinker`): the callbacks take only the hint list's spinlock,
/// which is never held across an allocation that can reclaim.
impl Shrink for Balloon {
    fn count(&self) -> usize {
        self.hint.held() * HintBlock::PAGES
    }

    fn scan(&self, nr_to_scan: usize) -> Option<usize> {
        let blocks = nr_to_scan.div_ceil(HintBlock::PAGES);
        Some(self.return_hints(blocks) * HintBlock::PAGES)
    }
}
