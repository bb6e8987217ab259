"""Bounds on what one instance may make the node allocate, checked before the allocation happens.

A C-STORE's data set arrives whole in memory (pynetdicom), so its received size is bounded by the
association; what is not bounded by it: a Deflated data set, which inflates (a 3 MB upload inflating to
3 GB drove the node to 6.3 GB of memory and 78 s before it answered), and the pixel data a header claims
(Rows x Columns x frames), which a decoder allocates for the first frame before any byte is checked.
Both are refused above `storage.max_dataset_mb` with 0xA700 (Refused: Out of Resources).
"""

from __future__ import annotations

import zlib

from pydicom.dataset import Dataset

INFLATE_CHUNK = 16 * 1024 * 1024


class TooLargeError(ValueError):
    """The instance would need more memory than the configured bound."""


def inflated_size(data: bytes | memoryview, limit: int) -> int:
    """The size `data` (raw deflate, PS3.5 A.5) inflates to, counted in chunks without keeping them;
    raises TooLargeError as soon as it passes `limit`, zlib.error for a corrupt stream."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    total = len(inflater.decompress(bytes(data), INFLATE_CHUNK))
    while inflater.unconsumed_tail and total <= limit:
        total += len(inflater.decompress(inflater.unconsumed_tail, INFLATE_CHUNK))
    if total > limit:
        raise TooLargeError(f"the deflated data set inflates to more than {limit // (1024 * 1024)} MB")
    return total


def inflate_bounded(data: bytes | memoryview, limit: int) -> bytes:
    """Inflate a Deflated data set once its inflated size is known to be within `limit`."""
    inflated_size(data, limit)
    return zlib.decompress(bytes(data), -zlib.MAX_WBITS)


def check_pixel_size(ds: Dataset, limit: int) -> None:
    """Refuse pixel data whose header claims more than `limit` bytes, before anything decodes it."""
    try:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        claimed = (int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1) or 1)
                   * max(int(ds.BitsAllocated), 8) // 8 * max(frames, 1))
    except (AttributeError, TypeError, ValueError):
        return  # an incomplete pixel module is the decodability check's to refuse, with its reason
    if claimed > limit:
        raise TooLargeError(f"the pixel data would take {claimed // (1024 * 1024)} MB, more than "
                            f"{limit // (1024 * 1024)} MB")
