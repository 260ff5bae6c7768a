// SPDX-License-Identifier: GPL-2.0

#include <linux/virtio.h>
#include <linux/virtio_config.h>

#if IS_BUILTIN(CONFIG_VIRTIO)

__rust_helper bool rust_helper___virtio_test_bit(const struct virtio_device *vdev,
						 unsigned int fbit)
{
	return __virtio_test_bit(vdev, fbit);
}

__rust_helper void rust_helper___virtio_clear_bit(struct virtio_device *vdev,
						  unsigned int fbit)
{
	__virtio_clear_bit(vdev, fbit);
}

__rust_helper bool rust_helper_virtio_is_little_endian(struct virtio_device *vdev)
{
	return virtio_is_little_endian(vdev);
}

__rust_helper int rust_helper_virtio_find_vqs(struct virtio_device *vdev, unsigned int nvqs,
					      struct virtqueue *vqs[],
					      struct virtqueue_info vqs_info[],
					      struct irq_affinity *desc)
{
	return virtio_find_vqs(vdev, nvqs, vqs, vqs_info, desc);
}

__rust_helper void rust_helper_virtio_del_vqs(struct virtio_device *vdev)
{
	vdev->config->del_vqs(vdev);
}

__rust_helper u8 rust_helper_virtio_get_status(struct virtio_device *vdev)
{
	return vdev->config->get_status(vdev);
}

__rust_helper void rust_helper_virtio_device_ready(struct virtio_device *vdev)
{
	virtio_device_ready(vdev);
}

/* virtio_cread_le() and virtio_cwrite_le() for one __le32 field at @offset. */
__rust_helper u32 rust_helper_virtio_cread_le32(struct virtio_device *vdev, unsigned int offset)
{
	__le32 v;

	might_sleep();
	vdev->config->get(vdev, offset, &v, sizeof(v));
	return le32_to_cpu(v);
}

__rust_helper void rust_helper_virtio_cwrite_le32(struct virtio_device *vdev,
						  unsigned int offset, u32 val)
{
	__le32 v = cpu_to_le32(val);

	might_sleep();
	vdev->config->set(vdev, offset, &v, sizeof(v));
}

#endif /* IS_BUILTIN(CONFIG_VIRTIO) */
