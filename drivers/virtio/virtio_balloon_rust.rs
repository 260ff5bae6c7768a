// SPDX-License-Identifier: GPL-2.0

//! Virtio memory balloon driver, written in Rust.
//!
//! This is the module skeleton: it builds beside the C `virtio_balloon` in the
//! same image and loads, but does not bind to the device yet. The driver
//! proper needs the Rust virtio bus abstraction, which comes next.

use kernel::prelude::*;

module! {
    type: VirtioBalloonRust,
    name: "virtio_balloon_rust",
    authors: ["The virtio-balloon Rust authors"],
    description: "Virtio memory balloon driver (Rust)",
    license: "GPL",
}

struct VirtioBalloonRust;

impl kernel::Module for VirtioBalloonRust {
    fn init(_module: &'static ThisModule) -> Result<Self> {
        pr_info!("loaded; the driver is not implemented yet, the device stays unbound\n");
        Ok(VirtioBalloonRust)
    }
}
