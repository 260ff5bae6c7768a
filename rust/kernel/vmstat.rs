// SPDX-License-Identifier: GPL-2.0

//! Memory counters, as `/proc/meminfo` and `/proc/vmstat` show them.
//!
//! C headers: [`include/linux/vmstat.h`](srctree/include/linux/vmstat.h),
//! [`include/linux/mm.h`](srctree/include/linux/mm.h)

use crate::{bindings, page::PAGE_SIZE};

/// Total and free RAM (`si_meminfo`), in bytes.
pub struct MemInfo {
    /// Managed RAM (`MemTotal`).
    pub total: u64,
    /// Free RAM (`MemFree`).
    pub free: u64,
}

/// Reads total and free RAM.
pub fn meminfo() -> MemInfo {
    let mut i = bindings::sysinfo::default();
    // SAFETY: `i` is a valid `struct sysinfo` to fill.
    unsafe { bindings::si_meminfo(&mut i) };
    let unit = u64::from(i.mem_unit);
    MemInfo {
        total: i.totalram as u64 * unit,
        free: i.freeram as u64 * unit,
    }
}

/// Memory available for new allocations without swapping (`MemAvailable`), in bytes.
pub fn mem_available() -> u64 {
    // SAFETY: FFI call without preconditions.
    (unsafe { bindings::si_mem_available() }) as u64 * PAGE_SIZE as u64
}

/// A node counter summed over all nodes.
#[derive(Clone, Copy)]
pub enum NodeStat {
    /// Pages in the page cache (`NR_FILE_PAGES`).
    FilePages,
    /// Pages scanned by kswapd (`PGSCAN_KSWAPD`).
    ScanKswapd,
    /// Pages scanned by direct reclaim (`PGSCAN_DIRECT`).
    ScanDirect,
    /// Pages reclaimed by kswapd (`PGSTEAL_KSWAPD`).
    StealKswapd,
    /// Pages reclaimed by direct reclaim (`PGSTEAL_DIRECT`).
    StealDirect,
}

/// The global value of a node counter, in pages (`global_node_page_state`).
pub fn node_page_state(s: NodeStat) -> u64 {
    let item = match s {
        NodeStat::FilePages => bindings::node_stat_item_NR_FILE_PAGES,
        NodeStat::ScanKswapd => bindings::node_stat_item_PGSCAN_KSWAPD,
        NodeStat::ScanDirect => bindings::node_stat_item_PGSCAN_DIRECT,
        NodeStat::StealKswapd => bindings::node_stat_item_PGSTEAL_KSWAPD,
        NodeStat::StealDirect => bindings::node_stat_item_PGSTEAL_DIRECT,
    };
    // SAFETY: `item` is a valid node counter.
    (unsafe { bindings::global_node_page_state(item) }) as u64
}

/// A VM event counter.
#[cfg(CONFIG_VM_EVENT_COUNTERS)]
#[derive(Clone, Copy)]
pub enum Event {
    /// Pages swapped in (`PSWPIN`).
    SwapIn,
    /// Pages swapped out (`PSWPOUT`).
    SwapOut,
    /// Major page faults (`PGMAJFAULT`).
    MajorFault,
    /// Page faults (`PGFAULT`).
    Fault,
    /// OOM kills (`OOM_KILL`).
    OomKill,
    /// Huge pages allocated from the buddy allocator (`HTLB_BUDDY_PGALLOC`).
    #[cfg(CONFIG_HUGETLB_PAGE)]
    HugetlbAlloc,
    /// Failed huge page allocations (`HTLB_BUDDY_PGALLOC_FAIL`).
    #[cfg(CONFIG_HUGETLB_PAGE)]
    HugetlbAllocFail,
}

/// A snapshot of all VM event counters, summed over CPUs (`all_vm_events`).
#[cfg(CONFIG_VM_EVENT_COUNTERS)]
pub struct Events([crate::ffi::c_ulong; bindings::vm_event_item_NR_VM_EVENT_ITEMS as usize]);

#[cfg(CONFIG_VM_EVENT_COUNTERS)]
impl Events {
    /// Reads every event counter.
    ///
    /// May sleep: `all_vm_events` holds the CPU hotplug lock (`cpus_read_lock`) while it sums.
    pub fn now() -> Self {
        let mut e = Self([0; bindings::vm_event_item_NR_VM_EVENT_ITEMS as usize]);
        // SAFETY: The array has `NR_VM_EVENT_ITEMS` entries, as `all_vm_events` fills.
        unsafe { bindings::all_vm_events(e.0.as_mut_ptr()) };
        e
    }

    /// The value of one counter.
    pub fn get(&self, ev: Event) -> u64 {
        let i = match ev {
            Event::SwapIn => bindings::vm_event_item_PSWPIN,
            Event::SwapOut => bindings::vm_event_item_PSWPOUT,
            Event::MajorFault => bindings::vm_event_item_PGMAJFAULT,
            Event::Fault => bindings::vm_event_item_PGFAULT,
            Event::OomKill => bindings::vm_event_item_OOM_KILL,
            #[cfg(CONFIG_HUGETLB_PAGE)]
            Event::HugetlbAlloc => bindings::vm_event_item_HTLB_BUDDY_PGALLOC,
            #[cfg(CONFIG_HUGETLB_PAGE)]
            Event::HugetlbAllocFail => bindings::vm_event_item_HTLB_BUDDY_PGALLOC_FAIL,
        };
        self.0[i as usize] as u64
    }

    /// Allocation stalls (direct reclaim entries) over all zones (`ALLOCSTALL_*`).
    pub fn alloc_stalls(&self) -> u64 {
        let first = bindings::vm_event_item_ALLOCSTALL_NORMAL - bindings::zone_type_ZONE_NORMAL;
        (0..bindings::MAX_NR_ZONES)
            .map(|zone| self.0[(first + zone) as usize] as u64)
            .sum()
    }
}
