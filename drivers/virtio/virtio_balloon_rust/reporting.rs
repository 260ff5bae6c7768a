// SPDX-License-Identifier: GPL-2.0

//! Free page reporting (`REPORTING`).
//!
//! The page allocator hands the driver batches of free blocks (at least `pageblock_order`,
//! 2 MiB on x86, unless `page_reporting.page_reporting_order` says otherwise); the driver lends
//! them to the host on the reporting queue and waits until the host gave them back. QEMU
//! discards them, so its resident memory follows the guest's use rather than its high-water
//! mark. With `PAGE_POISON` and a nonzero poison value QEMU keeps them instead.

use super::{Balloon, MESSAGE_INTERVAL};
use kernel::{
    page_reporting::{self, Registration, Report, ReportedPages},
    prelude::*,
    sync::Arc,
};

/// Registers `balloon` as the system's page reporting device, with room for as many blocks per
/// report as the reporting queue has descriptors.
pub(super) fn register(balloon: &Arc<Balloon>) -> Result<Registration<Balloon>> {
    let capacity = balloon
        .reporting_vq
        .as_ref()
        .map_or(0, |vq| vq.vring_size());
    // As the C driver: 2 MiB blocks (order 5) with 64 KiB pages, where pageblock_order would
    // be 512 MiB; otherwise the core's choice (pageblock_order, or its module parameter).
    #[cfg(all(CONFIG_ARM64, CONFIG_ARM64_64K_PAGES))]
    let order = Some(5);
    #[cfg(not(all(CONFIG_ARM64, CONFIG_ARM64_64K_PAGES)))]
    let order = None;
    page_reporting::Registration::new(balloon.clone(), capacity, order)
}

/// Runs from the page reporting work (freezable system work queue, process context).
impl Report for Balloon {
    fn report(&self, pages: &ReportedPages<'_>) -> Result {
        let Some(vq) = &self.reporting_vq else {
            return Err(ENODEV);
        };
        let r = vq.report(pages, |waited| {
            if let Some(suppressed) = self.reporting_msg.lock().allow(MESSAGE_INTERVAL) {
                dev_warn!(
                    self.dev(),
                    "host has held {} reported free pages for {} s; waiting \
                     ({} messages suppressed)\n",
                    pages.bytes() >> 12,
                    waited.as_millis() / 1000,
                    suppressed
                );
            }
        });
        // ENODEV: the device went away (and was reset): the pages go back unreported.
        if let Err(e) = r {
            if e != ENODEV {
                if let Some(suppressed) = self.reporting_msg.lock().allow(MESSAGE_INTERVAL) {
                    dev_warn!(
                        self.dev(),
                        "cannot report {} free blocks: {:?} ({} messages suppressed)\n",
                        pages.nents(),
                        e,
                        suppressed
                    );
                }
            }
        }
        r
    }
}
