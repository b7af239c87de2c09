"""Batches assembled one image at a time, over channels_last memory."""

import pytest
import torch

from training.data.batching import BatchBuilder, empty_batch

SHAPE = (3, 4, 5)


def image(value: int) -> torch.Tensor:
    """A CHW view of HWC memory, what the decoders return."""
    return torch.full((4, 5, 3), value, dtype=torch.uint8).permute(2, 0, 1)


def fill(builder: BatchBuilder, value: int, n: int | None = None):
    """A batch whose images are all ``value``."""
    for _ in range(builder.size if n is None else n):
        builder.add(image(value), label=value)
    return builder.take()


def test_the_batch_is_channels_last_and_holds_what_was_added():
    images, labels, skipped = fill(BatchBuilder(4), 7)
    assert images.shape == (4, *SHAPE) and images.is_contiguous(memory_format=torch.channels_last)
    assert images.eq(7).all() and labels.tolist() == [7] * 4 and skipped == 0


def test_images_in_chw_memory_are_copied_in_with_the_same_pixels():
    builder = BatchBuilder(2)
    chw = torch.arange(60, dtype=torch.uint8).view(SHAPE)
    builder.add(chw, 0)
    builder.add(chw.flip(-1), 1)
    images = builder.take()[0]
    assert images[0].equal(chw) and images[1].equal(chw.flip(-1))


def test_ten_crop_stacks_get_a_batch_of_their_own_shape():
    images = empty_batch(2, (10, 3, 4, 5))
    assert images.shape == (2, 10, 3, 4, 5) and images[0, 0].stride() == (1, 15, 3)


def test_every_batch_has_memory_of_its_own():
    builder = BatchBuilder(4)
    batches = [fill(builder, v)[0] for v in range(5)]
    assert all(b.eq(v).all() for v, b in enumerate(batches))
    assert len({b.data_ptr() for b in batches}) == 5


def test_a_short_batch_is_a_copy_of_its_rows():
    images, labels, _ = fill(BatchBuilder(4), 5, n=3)
    assert images.shape == (3, *SHAPE) and images.eq(5).all()
    assert images.untyped_storage().nbytes() == 3 * 60
    assert images.is_contiguous(memory_format=torch.channels_last)


def test_skipped_samples_take_a_turn_but_not_a_row():
    builder = BatchBuilder(4)
    builder.skip()
    builder.add(image(1), 1)
    assert builder.slots == 2
    images, labels, skipped = builder.take()
    assert images.shape == (1, *SHAPE) and images.eq(1).all() and skipped == 1


def test_an_image_of_the_wrong_shape_is_a_clear_error():
    builder = BatchBuilder(2)
    builder.add(torch.zeros(SHAPE, dtype=torch.uint8), 0)
    with pytest.raises(ValueError, match=r"shape \(3, 1, 1\).*holds \(3, 4, 5\)"):
        builder.add(torch.zeros(3, 1, 1, dtype=torch.uint8), 1)


def test_a_batch_of_only_skipped_samples_is_empty():
    builder = BatchBuilder(2)
    builder.skip()
    builder.skip()
    images, labels, skipped = builder.take()
    assert len(images) == 0 and len(labels) == 0 and skipped == 2
