// SPDX-License-Identifier: GPL-2.0

//! Config space fields, the byte order of queue payloads, and feature negotiation.
//!
//! C header: [`include/linux/virtio_config.h`](srctree/include/linux/virtio_config.h)

use super::{Device, VqSet, FEATURE_BITS};
use crate::{bindings, device, prelude::*};

/// A field of a device's config space, for [`VqSet::read_config_le32`] and
/// [`VqSet::write_config_le32`].
#[derive(Clone, Copy)]
pub struct ConfigField {
    offset: usize,
    len: usize,
    feature: Option<u32>,
}

impl ConfigField {
    /// A 32-bit field at byte `offset` of the driver's `Config` (use `offset_of!`), present
    /// only when `feature` is negotiated (`None`: always present).
    ///
    /// # Examples
    ///
    /// ```
    /// use core::mem::offset_of;
    /// use kernel::virtio::ConfigField;
    ///
    /// #[repr(C)]
    /// struct Config {
    ///     num_pages: u32,
    ///     actual: u32,
    ///     poison_val: u32,
    /// }
    ///
    /// const ACTUAL: ConfigField = ConfigField::le32(offset_of!(Config, actual), None);
    /// // Exists only when feature bit 4 (`VIRTIO_BALLOON_F_PAGE_POISON`) is negotiated.
    /// const POISON_VAL: ConfigField = ConfigField::le32(offset_of!(Config, poison_val), Some(4));
    /// ```
    pub const fn le32(offset: usize, feature: Option<u32>) -> Self {
        Self {
            offset,
            len: 4,
            feature,
        }
    }

    /// The field's offset if it is aligned, lies within `config_size` bytes (without
    /// wrapping), and its feature (if any) is negotiated according to `has_feature`.
    fn offset_in(self, config_size: usize, has_feature: impl FnOnce(u32) -> bool) -> Result<u32> {
        let end = self.offset.checked_add(self.len).ok_or(EINVAL)?;
        if self.len == 0 || self.offset % self.len != 0 || end > config_size {
            return Err(EINVAL);
        }
        if self.feature.is_some_and(|bit| !has_feature(bit)) {
            return Err(EINVAL);
        }
        u32::try_from(self.offset).map_err(|_| EINVAL)
    }
}

impl VqSet {
    /// Checks that `field` lies inside the driver's `Config` and, for a field that exists only
    /// with a feature, that the feature was negotiated: only then does the device expose it.
    ///
    /// # Safety
    ///
    /// `vdev` must be the device `with_live` passed to the closure this runs in.
    unsafe fn check_config(
        &self,
        vdev: *mut bindings::virtio_device,
        field: ConfigField,
    ) -> Result<u32> {
        // SAFETY: By the safety requirements this runs inside `with_live` with its device,
        // which by the type invariant of `VqSet` is valid there.
        field.offset_in(self.config_size, |bit| unsafe {
            bindings::__virtio_test_bit(vdev, bit)
        })
    }

    /// Reads the little-endian 32-bit config field `field`. May sleep.
    pub fn read_config_le32(&self, field: ConfigField) -> Result<u32> {
        if field.len != 4 {
            return Err(EINVAL);
        }
        self.with_live(|vdev| {
            // SAFETY: `vdev` is the device `with_live` passed to this closure.
            let offset = unsafe { self.check_config(vdev, field) }?;
            // SAFETY: The device is valid and bound inside `with_live` (type invariant of `VqSet`);
            // `offset` is inside the config space the device exposes (checked above).
            Ok(unsafe { bindings::virtio_cread_le32(vdev, offset) })
        })?
    }

    /// Writes the little-endian 32-bit config field `field`. May sleep.
    pub fn write_config_le32(&self, field: ConfigField, v: u32) -> Result {
        if field.len != 4 {
            return Err(EINVAL);
        }
        self.with_live(|vdev| {
            // SAFETY: `vdev` is the device `with_live` passed to this closure.
            let offset = unsafe { self.check_config(vdev, field) }?;
            // SAFETY: The device is valid and bound inside `with_live` (type invariant of `VqSet`);
            // `offset` is inside the config space the device exposes (checked above).
            unsafe { bindings::virtio_cwrite_le32(vdev, offset, v) };
            Ok(())
        })?
    }
}

/// The byte order of a device's virtqueue payloads: little-endian with VERSION_1 (or a legacy
/// device on a little-endian guest), guest-native otherwise. Get it with
/// [`Device::byte_order`].
#[derive(Clone, Copy)]
pub struct ByteOrder {
    pub(super) little: bool,
}

impl ByteOrder {
    /// `v`, a CPU value, in the device's byte order (`cpu_to_virtio16`).
    pub fn to_device_u16(self, v: u16) -> u16 {
        if self.little {
            v.to_le()
        } else {
            v
        }
    }

    /// `v`, a CPU value, in the device's byte order (`cpu_to_virtio32`).
    pub fn to_device_u32(self, v: u32) -> u32 {
        if self.little {
            v.to_le()
        } else {
            v
        }
    }

    /// `v`, a CPU value, in the device's byte order (`cpu_to_virtio64`).
    pub fn to_device_u64(self, v: u64) -> u64 {
        if self.little {
            v.to_le()
        } else {
            v
        }
    }
}

/// The device's features during [`Driver::validate`]: the only thing it may touch then.
///
/// [`Driver::validate`]: super::Driver::validate
pub struct Features<'a>(pub(super) &'a Device<device::Core<'a>>);

impl Features<'_> {
    /// Whether feature `bit` is negotiated so far.
    pub fn has(&self, bit: u32) -> bool {
        self.0.has_feature(bit)
    }

    /// Drops feature `bit` from the negotiated set (bits past the 128 the core knows are
    /// never set).
    pub fn clear(&self, bit: u32) {
        if bit >= FEATURE_BITS {
            return;
        }
        // `validate` runs under the device lock, before the features are final.
        // SAFETY: The device is valid (type invariant of `Device`); `bit` is within the feature
        // array (checked above).
        unsafe { bindings::__virtio_clear_bit(self.0.as_raw(), bit) }
    }
}

#[cfg(CONFIG_RUST_BALLOON_KUNIT_TEST)]
#[macros::kunit_tests(rust_kernel_virtio)]
mod tests {
    use super::*;

    #[test]
    fn config_fields_stay_inside() {
        let yes = |_| true;
        assert_eq!(ConfigField::le32(0, None).offset_in(16, yes), Ok(0));
        assert_eq!(ConfigField::le32(12, None).offset_in(16, yes), Ok(12));
        // Past the end, unaligned, and `offset + len` wrapping around.
        assert_eq!(ConfigField::le32(16, None).offset_in(16, yes), Err(EINVAL));
        assert_eq!(ConfigField::le32(2, None).offset_in(16, yes), Err(EINVAL));
        assert_eq!(
            ConfigField::le32(usize::MAX - 1, None).offset_in(usize::MAX, yes),
            Err(EINVAL)
        );
    }

    #[test]
    fn feature_fields_need_their_feature() {
        let field = ConfigField::le32(12, Some(4));
        assert_eq!(field.offset_in(16, |bit| bit == 4), Ok(12));
        assert_eq!(field.offset_in(16, |_| false), Err(EINVAL));
    }
}
