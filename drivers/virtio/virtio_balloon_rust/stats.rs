// SPDX-License-Identifier: GPL-2.0

//! The statistics queue (`STATS_VQ`).
//!
//! The driver keeps one buffer with the host. When the host wants fresh statistics it
//! returns the buffer (interrupt), the stats work refills it and gives it back.

use super::{wakeup, Balloon};
use kernel::{
    bindings,
    page::PAGE_SIZE,
    prelude::*,
    sync::Arc,
    virtio::{self, Virtqueue},
    vmstat, workqueue,
};

/// One stats entry on the wire: `{ __virtio16 tag; __virtio64 val; }`, packed.
const STAT_SIZE: usize = 10;
const STATS_MAX: usize = bindings::VIRTIO_BALLOON_S_NR as usize;

pub(super) type StatsBuf = [u8; STATS_MAX * STAT_SIZE];

impl Balloon {
    /// Fills `buf` with the current statistics, in the C driver's order; returns the number
    /// of bytes used.
    fn update_stats(&self, buf: &mut StatsBuf) -> usize {
        let order = self.pfn_queues().order;
        let mut n = 0;
        let mut put = |tag: u32, val: u64| {
            let tag = order.to_device_u16(tag as u16);
            let val = order.to_device_u64(val);
            buf[n..n + 2].copy_from_slice(&tag.to_ne_bytes());
            buf[n + 2..n + STAT_SIZE].copy_from_slice(&val.to_ne_bytes());
            n += STAT_SIZE;
        };
        let bytes = |pages: u64| pages * PAGE_SIZE as u64;
        #[cfg(CONFIG_VM_EVENT_COUNTERS)]
        {
            use vmstat::{Event, NodeStat};
            let ev = vmstat::Events::now();
            put(
                bindings::VIRTIO_BALLOON_S_SWAP_IN,
                bytes(ev.get(Event::SwapIn)),
            );
            put(
                bindings::VIRTIO_BALLOON_S_SWAP_OUT,
                bytes(ev.get(Event::SwapOut)),
            );
            put(bindings::VIRTIO_BALLOON_S_MAJFLT, ev.get(Event::MajorFault));
            put(bindings::VIRTIO_BALLOON_S_MINFLT, ev.get(Event::Fault));
            put(bindings::VIRTIO_BALLOON_S_OOM_KILL, ev.get(Event::OomKill));
            put(bindings::VIRTIO_BALLOON_S_ALLOC_STALL, ev.alloc_stalls());
            for (tag, counter) in [
                (bindings::VIRTIO_BALLOON_S_ASYNC_SCAN, NodeStat::ScanKswapd),
                (bindings::VIRTIO_BALLOON_S_DIRECT_SCAN, NodeStat::ScanDirect),
                (
                    bindings::VIRTIO_BALLOON_S_ASYNC_RECLAIM,
                    NodeStat::StealKswapd,
                ),
                (
                    bindings::VIRTIO_BALLOON_S_DIRECT_RECLAIM,
                    NodeStat::StealDirect,
                ),
            ] {
                put(tag, bytes(vmstat::node_page_state(counter)));
            }
            #[cfg(CONFIG_HUGETLB_PAGE)]
            {
                put(
                    bindings::VIRTIO_BALLOON_S_HTLB_PGALLOC,
                    ev.get(Event::HugetlbAlloc),
                );
                put(
                    bindings::VIRTIO_BALLOON_S_HTLB_PGFAIL,
                    ev.get(Event::HugetlbAllocFail),
                );
            }
        }
        let mem = vmstat::meminfo();
        put(bindings::VIRTIO_BALLOON_S_MEMFREE, mem.free);
        put(bindings::VIRTIO_BALLOON_S_MEMTOT, mem.total);
        put(bindings::VIRTIO_BALLOON_S_AVAIL, vmstat::mem_available());
        put(
            bindings::VIRTIO_BALLOON_S_CACHES,
            bytes(vmstat::node_page_state(vmstat::NodeStat::FilePages)),
        );
        n
    }

    /// Fills `buf` with fresh statistics and gives it to the host.
    fn send_stats(&self, vq: &Virtqueue<StatsBuf>, mut buf: KBox<StatsBuf>) -> Result {
        let len = self.update_stats(&mut buf);
        vq.add_outbuf(buf, len)
            .map_err(|virtio::AddError(e, _)| e)?;
        vq.kick();
        Ok(())
    }

    /// Gives the host its one stats buffer, filled (probe).
    pub(super) fn prime_stats(&self) -> Result {
        match &self.stats_vq {
            Some(vq) => self.send_stats(vq, KBox::new([0u8; STATS_MAX * STAT_SIZE], GFP_KERNEL)?),
            None => Ok(()),
        }
    }

    /// The host returned the stats buffer: it wants fresh statistics.
    pub(super) fn stats_handle_request(&self) {
        let Some(vq) = &self.stats_vq else { return };
        // The host returns the one buffer it holds; send it back with fresh values.
        if let Some((buf, _)) = vq.get_buf() {
            if let Err(e) = self.send_stats(vq, buf) {
                dev_warn!(self.dev(), "cannot send stats: {:?}\n", e);
            }
        }
    }

    /// The host used a stats buffer (interrupt context).
    pub(super) fn stats_request(this: &Arc<Self>) {
        let stop = this.stop_update.lock();
        if !*stop {
            this.wakeup.start(this.vdev(), wakeup::Event::Stats);
            let _ = workqueue::system_freezable().enqueue::<Arc<Self>, 1>(this.clone());
        }
    }
}
