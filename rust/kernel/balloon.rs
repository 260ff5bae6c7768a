// SPDX-License-Identifier: GPL-2.0

//! Memory balloon page lists.
//!
//! C header: [`include/linux/balloon.h`](srctree/include/linux/balloon.h)
//!
//! A balloon driver takes pages from the guest and tells the host it may
//! reclaim them. [`BalloonPages`] is the list of those pages: a page enters
//! with [`BalloonPages::enqueue`] and leaves with [`BalloonPages::dequeue`];
//! in between it belongs to the balloon core (which may migrate it), and the
//! driver holds nothing that reaches it.
//!
//! With `CONFIG_BALLOON_MIGRATION` the core may move a ballooned page to
//! another frame (compaction); it then calls [`Migrate::migrate`] on the
//! migrator the [`BalloonPages`] owns, which tells the host.

use crate::{bindings, container_of, ffi::c_void, prelude::*, types::Opaque};
use core::{
    cmp::min,
    mem::MaybeUninit,
    ptr::NonNull,
    sync::atomic::{AtomicUsize, Ordering},
};

/// Order of the free blocks [`BalloonPage::alloc_bulk`] takes whole: 512 pages, 2 MiB with
/// 4 KiB pages (a host huge page on x86).
pub const BULK_ORDER: u32 = if bindings::MAX_PAGE_ORDER < 9 {
    bindings::MAX_PAGE_ORDER
} else {
    9
};

/// Pages in a block of [`BULK_ORDER`].
pub const BULK_PAGES: usize = 1 << BULK_ORDER;

/// Most pages one list operation moves under `balloon_pages_lock`, which it holds with
/// interrupts off: one virtio-balloon message's worth.
const LIST_CHUNK: usize = 256;

/// Makes `slot` an empty C list of pages (linked through `page->lru`) and returns its head,
/// which is valid until `slot` moves or goes out of scope.
fn page_list(slot: &mut MaybeUninit<bindings::list_head>) -> *mut bindings::list_head {
    let head = slot.as_mut_ptr();
    // SAFETY: `head` is valid for writes; the list points to itself until pages are linked.
    unsafe { bindings::INIT_LIST_HEAD(head) };
    head
}

/// A page allocated for, or taken back from, a balloon. Dropping it frees it.
///
/// # Invariants
///
/// `self.0` is a valid page of which this value holds the reference its allocation gave (others,
/// such as compaction's, are only ever temporary), and which is on no list (its `lru` is free).
pub struct BalloonPage(NonNull<bindings::page>);

// SAFETY: By the type invariant the page is owned by this value; freeing it may happen on any
// thread.
unsafe impl Send for BalloonPage {}

impl BalloonPage {
    /// Allocates a page for the balloon (`balloon_page_alloc`): movable when balloon migration
    /// is built in, without retrying hard, warning, or dipping into reserves.
    pub fn alloc() -> Option<Self> {
        // SAFETY: FFI call without preconditions.
        let page = unsafe { bindings::balloon_page_alloc() };
        // INVARIANT: `balloon_page_alloc` returns a new page (or NULL) with one reference, on
        // no list.
        NonNull::new(page).map(Self)
    }

    /// Allocates up to `n` pages for the balloon, hands each to `f`, and returns how many.
    ///
    /// While a whole block's worth is still wanted, it takes free blocks of `2^BULK_ORDER`
    /// pages when the allocator has one right now (no reclaim, no compaction, no kswapd) and
    /// splits each into order-0 pages: one allocation instead of 512, each page still migrates
    /// on its own, and the host gets contiguous ranges (whole huge pages) to discard. The rest,
    /// and everything once no block is free, are single pages as from [`BalloonPage::alloc`].
    /// Stops early when not even a single page can be had.
    pub fn alloc_bulk(n: usize, mut f: impl FnMut(BalloonPage)) -> usize {
        let movable = if cfg!(CONFIG_BALLOON_MIGRATION) {
            bindings::GFP_HIGHUSER_MOVABLE
        } else {
            bindings::GFP_HIGHUSER
        };
        let gfp = (movable & !bindings::__GFP_RECLAIM)
            | bindings::__GFP_NORETRY
            | bindings::__GFP_NOWARN
            | bindings::__GFP_NOMEMALLOC;
        let mut got = 0;
        let mut blocks = true;
        while got < n {
            if blocks && n - got >= BULK_PAGES {
                // SAFETY: FFI call without preconditions. Without `__GFP_COMP` the block is
                // not a compound page.
                match NonNull::new(unsafe { bindings::alloc_pages(gfp, BULK_ORDER) }) {
                    Some(first) => {
                        // SAFETY: `first` heads a non-compound block of order `BULK_ORDER`,
                        // owned by us; afterwards each of its pages has a reference of its own.
                        unsafe { bindings::split_page(first.as_ptr(), BULK_ORDER) };
                        for i in 0..BULK_PAGES {
                            // SAFETY: A buddy block's `struct page`s are contiguous (`split_page`
                            // relies on it): `first + i` is its page `i`, non-null and ours.
                            let page = unsafe { NonNull::new_unchecked(first.as_ptr().add(i)) };
                            // INVARIANT: After `split_page`, page `i` of the block has its own
                            // reference, ours, and is on no list.
                            f(BalloonPage(page));
                        }
                        got += BULK_PAGES;
                        continue;
                    }
                    None => blocks = false,
                }
            }
            match Self::alloc() {
                Some(page) => f(page),
                None => break,
            }
            got += 1;
        }
        got
    }

    /// The page frame number.
    pub fn pfn(&self) -> usize {
        // SAFETY: By the type invariant `self.0` is a valid page owned by us.
        unsafe { bindings::page_to_pfn(self.0.as_ptr()) }
    }
}

impl Drop for BalloonPage {
    fn drop(&mut self) {
        // SAFETY: By the type invariant this value holds a reference to the page, which it
        // gives back here, once.
        unsafe { bindings::put_page(self.0.as_ptr()) };
    }
}

/// Tells the host about migrated balloon pages; owned by [`BalloonPages`].
pub trait Migrate: Send + Sync {
    /// The page at `old_pfn` is being replaced by the one at `new_pfn`: tell the host to take
    /// the new one (inflate) and give back the old one (deflate). Runs in compaction or
    /// migration context with the page locked, and may sleep. Return `EAGAIN` to have the core
    /// retry later. Any error leaves the old page in the balloon.
    fn migrate(&self, new_pfn: usize, old_pfn: usize) -> Result;
}

/// The `migratepage` callback of a `BalloonPages<M>`.
///
/// # Safety
///
/// Only the balloon core calls it, with the `balloon_dev_info` of a `BalloonPages<M>` set up by
/// [`BalloonPages::new`] and two valid, locked pages.
unsafe extern "C" fn migrate_callback<M: Migrate>(
    info: *mut bindings::balloon_dev_info,
    newpage: *mut bindings::page,
    page: *mut bindings::page,
    _mode: bindings::migrate_mode,
) -> c_int {
    // The core passes the `balloon_dev_info` whose `migratepage` this is (`Opaque` is transparent).
    // SAFETY: By the type invariant of `BalloonPages<M>`, it is the pinned `info` field of a live
    // `BalloonPages<M>`.
    let pages = unsafe {
        &*container_of!(
            info.cast::<Opaque<bindings::balloon_dev_info>>(),
            BalloonPages<M>,
            info
        )
    };
    // SAFETY: Both pages are valid and locked by the migration core.
    let (new_pfn, old_pfn) =
        unsafe { (bindings::page_to_pfn(newpage), bindings::page_to_pfn(page)) };
    match pages.migrator.migrate(new_pfn, old_pfn) {
        Ok(()) => 0,
        // -ENOENT would tell the core the old page left the balloon without a dequeue, which
        // breaks the page count: retry instead.
        Err(e) if e == ENOENT => EAGAIN.to_errno(),
        Err(e) => e.to_errno(),
    }
}

/// The pages in a balloon (`struct balloon_dev_info`), and the [`Migrate`] object that tells
/// the host when one moves.
///
/// The migration callback reaches the migrator through the `balloon_dev_info` it is given, so
/// both live in this structure: no other object has to outlive the pages. Dropping a balloon
/// that still holds pages frees them (pages isolated for migration are waited for), so it must
/// happen in process context; drivers deflate first, telling the host.
///
/// # Invariants
///
/// - `info` was initialized by `balloon_devinfo_init`, with `migratepage` set to
///   `migrate_callback::<M>`, and stays pinned for the life of this value.
/// - `count` is the number of pages enqueued and not dequeued. Pages the core isolates for
///   migration stay counted: they come back (or are replaced) on the list.
#[pin_data(PinnedDrop)]
pub struct BalloonPages<M: Migrate> {
    #[pin]
    info: Opaque<bindings::balloon_dev_info>,
    count: AtomicUsize,
    #[pin]
    migrator: M,
}

// SAFETY: The C functions on `info` serialize on the global `balloon_pages_lock`, from any
// thread; `count` is atomic; the migrator is `Send`.
unsafe impl<M: Migrate> Send for BalloonPages<M> {}
// SAFETY: The C functions on `info` serialize on the global `balloon_pages_lock`, so shared
// references may call them concurrently; `count` is atomic; the migrator is `Sync`.
unsafe impl<M: Migrate> Sync for BalloonPages<M> {}

impl<M: Migrate> BalloonPages<M> {
    /// An empty balloon with its migrator. With `adjust_managed`, pages in the balloon leave
    /// the guest's managed memory (MemTotal drops); without, they still count as RAM the guest
    /// may take back.
    pub fn new(adjust_managed: bool, migrator: impl PinInit<M>) -> impl PinInit<Self> {
        // INVARIANT: `info` is initialized with `migrate_callback::<M>`, in place (pinned), and
        // `count` starts at 0 with no page enqueued.
        pin_init!(Self {
            info <- Opaque::ffi_init(move |p: *mut bindings::balloon_dev_info| {
                // SAFETY: `p` is valid for writes and pinned.
                unsafe {
                    bindings::balloon_devinfo_init(p);
                    (*p).adjust_managed_page_count = adjust_managed;
                    (*p).migratepage = Some(migrate_callback::<M>);
                }
            }),
            count: AtomicUsize::new(0),
            migrator <- migrator,
        })
    }

    /// The migrator.
    pub fn migrator(&self) -> &M {
        &self.migrator
    }

    /// Puts `page` into the balloon and returns its page frame number.
    pub fn enqueue(&self, page: BalloonPage) -> usize {
        let pfn = page.pfn();
        let p = page.0.as_ptr();
        core::mem::forget(page);
        // `p`'s reference now belongs to the balloon list.
        // SAFETY: `self.info` is initialized and pinned (type invariant); `p` is a page we owned,
        // on no list (type invariant of `BalloonPage`).
        unsafe { bindings::balloon_page_enqueue(self.info.get(), p) };
        self.count.fetch_add(1, Ordering::Relaxed);
        pfn
    }

    /// Puts every page of `pages` into the balloon and returns how many, a list of up to
    /// 256 pages at a time (`balloon_page_list_enqueue`): one lock round trip, and one managed
    /// page count update per zone, for each.
    pub fn enqueue_all(&self, pages: impl IntoIterator<Item = BalloonPage>) -> usize {
        let mut pages = pages.into_iter();
        let mut total = 0;
        loop {
            let mut slot = MaybeUninit::uninit();
            // Stays in place until the list is handed over below.
            let list = page_list(&mut slot);
            let mut n = 0;
            for page in pages.by_ref().take(LIST_CHUNK) {
                let p = page.0.as_ptr();
                core::mem::forget(page);
                // The list now holds `p`'s reference.
                // SAFETY: `list` is a valid list head; `p` is a page we owned whose `lru` is free
                // (type invariant of `BalloonPage`).
                unsafe { bindings::balloon_page_push(list, p) };
                n += 1;
            }
            if n == 0 {
                return total;
            }
            // SAFETY: By the type invariant `self.info` is initialized and pinned; `list` holds
            // balloon pages we owned, all of which the balloon takes (and `list` is left empty).
            let done = unsafe { bindings::balloon_page_list_enqueue(self.info.get(), list) };
            self.count.fetch_add(done, Ordering::Relaxed);
            total += done;
        }
    }

    /// Takes up to `n` pages out of the balloon, a list of up to 256 at a time
    /// (`balloon_page_list_dequeue`), hands each to `f`, and returns how many: fewer when the
    /// balloon holds fewer, or some of them are isolated for migration right now.
    pub fn dequeue_many(&self, n: usize, mut f: impl FnMut(BalloonPage)) -> usize {
        let mut total = 0;
        while total < n {
            let chunk = min(n - total, LIST_CHUNK);
            // Claim the pages in the count first, as `dequeue` does.
            let Ok(had) = self
                .count
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| {
                    (c > 0).then(|| c - min(c, chunk))
                })
            else {
                break;
            };
            let want = min(had, chunk);
            let mut slot = MaybeUninit::uninit();
            // Stays in place until the list is emptied below.
            let list = page_list(&mut slot);
            // SAFETY: By the type invariant `self.info` is initialized; `list` is an empty list
            // head.
            let got = unsafe { bindings::balloon_page_list_dequeue(self.info.get(), list, want) };
            if got < want {
                self.count.fetch_add(want - got, Ordering::Relaxed);
            }
            // SAFETY: `list` holds only the pages just dequeued, one reference each, now ours.
            while let Some(p) = NonNull::new(unsafe { bindings::balloon_page_pop(list) }) {
                // INVARIANT: Popped off `list`: on no list, and its one reference is ours.
                f(BalloonPage(p));
            }
            total += got;
            if got < want {
                break;
            }
        }
        total
    }

    /// Takes a page out of the balloon, or `None` when it is empty (or every page in it is
    /// isolated for migration right now).
    pub fn dequeue(&self) -> Option<BalloonPage> {
        // `balloon_page_dequeue()` BUG()s on an empty balloon: only call it with a page inside.
        self.count
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .ok()?;
        // SAFETY: By the type invariant `self.info` is initialized, and (`count` was nonzero)
        // at least one page is enqueued or isolated.
        match NonNull::new(unsafe { bindings::balloon_page_dequeue(self.info.get()) }) {
            // INVARIANT: `balloon_page_dequeue` took the page off the balloon list and hands
            // us its reference.
            Some(p) => Some(BalloonPage(p)),
            None => {
                self.count.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// Number of pages in the balloon.
    pub fn len(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    /// Whether the balloon is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[pinned_drop]
impl<M: Migrate> PinnedDrop for BalloonPages<M> {
    fn drop(self: Pin<&mut Self>) {
        // Runs before the fields are dropped, so the migrator still serves migrations of pages
        // that are isolated right now.
        let n = self.len();
        if n != 0 {
            pr_err!("balloon dropped with {} pages inside; freeing them\n", n);
        }
        while !self.is_empty() {
            if self.dequeue().is_none() {
                crate::time::delay::fsleep(crate::time::Delta::from_millis(1));
            }
        }
    }
}

/// Order of a free page hint block: `MAX_PAGE_ORDER`, the largest block the buddy allocator
/// hands out (4 MiB on x86 with 4 KiB pages).
pub const HINT_BLOCK_ORDER: u32 = bindings::MAX_PAGE_ORDER;

/// A block of `2^HINT_BLOCK_ORDER` free pages, taken from the allocator so that a host can be
/// told it is free (free page hinting). Dropping it gives it back.
///
/// The block's memory is never exposed to Rust code as data: a hinted block holds nothing, and
/// the driver must treat its contents as undefined when it gets it back.
///
/// # Invariants
///
/// `self.0` is the first page of a block of `2^HINT_BLOCK_ORDER` pages that this value owns,
/// allocated by `alloc_pages` with this order and without `__GFP_HIGHMEM` (so the block is
/// linearly mapped, `HintBlock::BYTES` long).
pub struct HintBlock(NonNull<bindings::page>);

// SAFETY: By the type invariant the block is owned by this value; freeing it may happen on any
// thread.
unsafe impl Send for HintBlock {}

impl HintBlock {
    /// Pages in a block.
    pub const PAGES: usize = 1 << HINT_BLOCK_ORDER;
    /// Bytes in a block.
    pub const BYTES: usize = crate::page::PAGE_SIZE << HINT_BLOCK_ORDER;

    /// Takes a free block if one is free right now: no reclaim, no retry, no warning, and no
    /// emergency reserves (the C driver's `VIRTIO_BALLOON_FREE_PAGE_ALLOC_FLAG`). Hinting must
    /// never push the guest into reclaim.
    pub fn alloc() -> Option<Self> {
        let gfp = bindings::__GFP_NORETRY | bindings::__GFP_NOWARN | bindings::__GFP_NOMEMALLOC;
        // SAFETY: FFI call without preconditions.
        let block = unsafe { bindings::alloc_pages(gfp, HINT_BLOCK_ORDER) };
        // INVARIANT: A block (or NULL) of `HINT_BLOCK_ORDER`, now ours; `gfp` has no
        // `__GFP_HIGHMEM`.
        NonNull::new(block).map(Self)
    }

    /// The block's kernel virtual address, for a device descriptor.
    pub(crate) fn addr(&self) -> *mut c_void {
        // SAFETY: By the type invariant the block is allocated and not highmem.
        unsafe { bindings::page_address(self.0.as_ptr()) }
    }
}

impl Drop for HintBlock {
    fn drop(&mut self) {
        // SAFETY: By the type invariant we own the block, allocated with this order.
        unsafe { bindings::__free_pages(self.0.as_ptr(), HINT_BLOCK_ORDER) };
    }
}

/// Whether free pages have defined contents (poisoned, or zeroed by `init_on_free`): a device
/// that reports free pages to the host must then preserve them.
pub fn free_pages_have_contents() -> bool {
    // SAFETY: FFI calls without preconditions.
    unsafe { bindings::want_init_on_free() || bindings::page_poisoning_enabled_static() }
}

/// The value a device that preserves free page contents must see in freed pages: 0 with
/// `init_on_free`, the `PAGE_POISON` pattern with page poisoning, `None` when free pages have
/// no defined contents (see [`free_pages_have_contents`]).
pub fn poison_value() -> Option<u32> {
    // SAFETY: FFI call without preconditions.
    let init_on_free = unsafe { bindings::want_init_on_free() };
    // SAFETY: FFI call without preconditions.
    let poisoning = unsafe { bindings::page_poisoning_enabled_static() };
    if init_on_free {
        Some(0)
    } else if poisoning {
        Some(u32::from_ne_bytes([bindings::PAGE_POISON as u8; 4]))
    } else {
        None
    }
}

#[cfg(CONFIG_RUST_BALLOON_KUNIT_TEST)]
#[macros::kunit_tests(rust_kernel_balloon)]
mod tests {
    use super::*;
    use crate::vmstat;

    struct NoHost;

    impl Migrate for NoHost {
        fn migrate(&self, _new_pfn: usize, _old_pfn: usize) -> Result {
            Err(EAGAIN)
        }
    }

    fn balloon(adjust_managed: bool) -> Result<Pin<KBox<BalloonPages<NoHost>>>> {
        KBox::pin_init(BalloonPages::new(adjust_managed, NoHost), GFP_KERNEL)
    }

    #[test]
    fn empty_balloon_dequeues_nothing() -> Result {
        let b = balloon(false)?;
        assert!(b.is_empty());
        // balloon_page_dequeue() would BUG() here.
        assert!(b.dequeue().is_none());
        Ok(())
    }

    #[test]
    fn pages_come_out_as_they_went_in() -> Result {
        let b = balloon(false)?;
        let mut pfns = KVec::new();
        for _ in 0..4 {
            let page = BalloonPage::alloc().ok_or(ENOMEM)?;
            let pfn = page.pfn();
            assert_eq!(b.enqueue(page), pfn);
            pfns.push(pfn, GFP_KERNEL)?;
        }
        assert_eq!(b.len(), 4);
        while let Some(page) = b.dequeue() {
            assert!(pfns.iter().any(|p| *p == page.pfn()));
        }
        assert!(b.is_empty());
        Ok(())
    }

    #[test]
    fn managed_memory_follows_the_flag() -> Result {
        let page_bytes = crate::page::PAGE_SIZE as u64;
        for adjust in [true, false] {
            let b = balloon(adjust)?;
            let total = vmstat::meminfo().total;
            b.enqueue(BalloonPage::alloc().ok_or(ENOMEM)?);
            let inside = vmstat::meminfo().total;
            assert_eq!(inside, if adjust { total - page_bytes } else { total });
            drop(b.dequeue());
            assert_eq!(vmstat::meminfo().total, total);
        }
        Ok(())
    }

    #[test]
    fn dropping_a_full_balloon_frees_its_pages() -> Result {
        let b = balloon(true)?;
        let total = vmstat::meminfo().total;
        b.enqueue(BalloonPage::alloc().ok_or(ENOMEM)?);
        drop(b);
        assert_eq!(vmstat::meminfo().total, total);
        Ok(())
    }

    #[test]
    fn lists_move_every_page_and_count_managed_memory() -> Result {
        let page_bytes = crate::page::PAGE_SIZE as u64;
        let b = balloon(true)?;
        let total = vmstat::meminfo().total;
        // More than one list chunk, and more than one block.
        let mut pages = KVec::with_capacity(2 * BULK_PAGES + 3, GFP_KERNEL)?;
        let n = BalloonPage::alloc_bulk(2 * BULK_PAGES + 3, |p| {
            let _ = pages.push(p, GFP_KERNEL);
        });
        assert_eq!(n, 2 * BULK_PAGES + 3);
        assert_eq!(pages.len(), n);
        assert_eq!(b.enqueue_all(pages.drain_all()), n);
        assert_eq!(b.len(), n);
        assert_eq!(vmstat::meminfo().total, total - n as u64 * page_bytes);
        let mut out = 0;
        let mut got = 0;
        // Compaction may hold a page isolated for a moment.
        for _ in 0..1000 {
            got += b.dequeue_many(n + 10, |_| out += 1);
            if got >= n {
                break;
            }
            crate::time::delay::fsleep(crate::time::Delta::from_millis(1));
        }
        assert_eq!(got, n);
        assert_eq!(out, n);
        assert!(b.is_empty());
        assert!(b.dequeue().is_none());
        assert_eq!(vmstat::meminfo().total, total);
        Ok(())
    }

    #[test]
    fn bulk_pages_come_from_whole_blocks() -> Result {
        // A guest that just booted has free blocks: the first one must be taken whole.
        let mut pfns = KVec::with_capacity(BULK_PAGES, GFP_KERNEL)?;
        let mut pages = KVec::with_capacity(BULK_PAGES, GFP_KERNEL)?;
        BalloonPage::alloc_bulk(BULK_PAGES, |p| {
            let _ = pfns.push(p.pfn(), GFP_KERNEL);
            let _ = pages.push(p, GFP_KERNEL);
        });
        assert_eq!(pfns.len(), BULK_PAGES);
        assert_eq!(pfns[0] % BULK_PAGES, 0);
        for (i, pfn) in pfns.iter().enumerate() {
            assert_eq!(*pfn, pfns[0] + i);
        }
        // Each page is freed on its own.
        drop(pages);
        Ok(())
    }

    #[test]
    fn hint_blocks_are_whole_and_come_back() -> Result {
        // KUnit runs while the boot still frees memory (the initramfs, init sections), so
        // free memory may grow across one allocation; it must fall across one of three.
        let mut fell = false;
        for _ in 0..3 {
            let free = vmstat::meminfo().free;
            let block = HintBlock::alloc().ok_or(ENOMEM)?;
            assert_eq!(block.addr() as usize % HintBlock::BYTES, 0);
            fell |= vmstat::meminfo().free < free;
            drop(block);
        }
        assert!(fell);
        Ok(())
    }

    #[test]
    fn poison_value_follows_free_page_contents() {
        assert_eq!(poison_value().is_some(), free_pages_have_contents());
    }

    #[test]
    fn counters_are_sane() {
        let m = vmstat::meminfo();
        assert!(m.total > 0 && m.free <= m.total);
        assert!(vmstat::mem_available() <= m.total);
    }
}
