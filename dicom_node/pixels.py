"""Turn a pydicom Dataset's pixel module into numpy frames and Hounsfield units.

This is the only place in isonode that touches pixel decoders, so that the C-STORE SCP (which refuses
undecodable data at the door) and the volume assembler agree on what "decodable" means.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable

import numpy as np
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.pixels import get_decoder
from pydicom.uid import (
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

log = logging.getLogger(__name__)

# Preferred decoder plugin per syntax, tried first; the others pydicom has are the fallback. Pinning a
# plugin makes lossy decodes reproducible (pillow and libjpeg round the IDCT differently) and avoids
# pillow, which cannot decode 12-bit JPEG Extended.
_PREFERRED_PLUGIN: dict[str, str] = {
    JPEGBaseline8Bit: "pylibjpeg",
    JPEGExtended12Bit: "pylibjpeg",
    JPEGLossless: "pylibjpeg",
    JPEGLosslessSV1: "pylibjpeg",
    JPEGLSLossless: "pyjpegls",
    JPEGLSNearLossless: "pyjpegls",
    JPEG2000Lossless: "pylibjpeg",
    JPEG2000: "pylibjpeg",
    RLELossless: "pydicom",
}

_CANDIDATE_SYNTAXES: tuple[str, ...] = (
    ImplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
    RLELossless,
)

LOSSY_SYNTAXES: frozenset[str] = frozenset(
    {JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLSNearLossless, JPEG2000}
)


class PixelDecodeError(ValueError):
    """Pixel data cannot be turned into frames; `reason` says why in words an operator understands."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _decoder_available(uid: str) -> bool:
    try:
        return bool(get_decoder(UID(uid)).is_available)
    except (NotImplementedError, ValueError):
        return False


def _accepted_syntaxes(candidates: Iterable[str]) -> tuple[str, ...]:
    """Keep only the syntaxes a decoder plugin installed here can really decode."""
    return tuple(uid for uid in candidates if _decoder_available(uid))


# Computed once at import from the installed plugins: a syntax whose plugin is missing must not be
# offered in association negotiation, otherwise we would accept data we then cannot decode.
TRANSFER_SYNTAXES_ACCEPTED: tuple[str, ...] = _accepted_syntaxes(_CANDIDATE_SYNTAXES)


def _transfer_syntax(ds: Dataset, transfer_syntax_uid: str | None) -> UID:
    if transfer_syntax_uid:
        return UID(transfer_syntax_uid)
    meta = getattr(ds, "file_meta", None)
    uid = getattr(meta, "TransferSyntaxUID", None) if meta is not None else None
    if not uid:
        raise PixelDecodeError("no transfer syntax: dataset has no file meta TransferSyntaxUID")
    return UID(str(uid))


def _check_pixel_module(ds: Dataset, ts: UID) -> None:
    if "PixelData" not in ds:
        other = [kw for kw in ("FloatPixelData", "DoubleFloatPixelData") if kw in ds]
        detail = f" (has {other[0]}, not supported for CT)" if other else ""
        raise PixelDecodeError(f"no pixel data{detail}")
    if ts not in TRANSFER_SYNTAXES_ACCEPTED:
        name = ts.name if ts.is_valid else "unknown"
        raise PixelDecodeError(f"unsupported transfer syntax {ts} ({name})")
    spp = int(ds.get("SamplesPerPixel", 1) or 1)
    if spp != 1:
        raise PixelDecodeError(f"SamplesPerPixel={spp}: only single-sample (greyscale) CT is supported")
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise PixelDecodeError(f"PhotometricInterpretation={photometric}: only MONOCHROME1/2 is supported")
    for kw in ("Rows", "Columns", "BitsAllocated", "BitsStored", "PixelRepresentation"):
        if ds.get(kw) is None:
            raise PixelDecodeError(f"pixel module incomplete: {kw} missing")
    bits = int(ds.BitsAllocated)
    if bits not in (8, 16, 32):
        raise PixelDecodeError(f"BitsAllocated={bits} not supported (8, 16 or 32)")
    if int(ds.Rows) < 1 or int(ds.Columns) < 1:
        raise PixelDecodeError(f"empty image: Rows={ds.Rows} Columns={ds.Columns}")


def _j2k_codestream_signed(ds: Dataset) -> bool | None:
    """Read the signedness of the first component from the J2K SIZ marker (None if not found)."""
    head = bytes(ds.PixelData[:4096])
    pos = head.find(b"\xff\x4f\xff\x51")
    if pos < 0 or pos + 43 > len(head):
        return None
    ssiz = head[pos + 2 + 40]
    return bool(ssiz & 0x80)


def _fix_j2k_sign(ds: Dataset, ts: UID, arr: np.ndarray) -> np.ndarray:
    """A signed J2K codestream under PixelRepresentation=0 holds two's-complement values.

    pylibjpeg returns the raw bit pattern as unsigned; the values are only HU-correct read as signed
    (checked against the same SOP instance stored with PixelRepresentation=1), so trust the codestream.
    """
    if ts not in (JPEG2000Lossless, JPEG2000) or int(ds.PixelRepresentation) != 0:
        return arr
    if arr.dtype.kind != "u" or not _j2k_codestream_signed(ds):
        return arr
    log.warning("event=j2k_sign_mismatch detail=codestream_signed_pixel_representation_0 action=read_signed")
    return arr.view(arr.dtype.str.replace("u", "i"))


_JPEG_FAMILY: frozenset[str] = frozenset(
    {
        JPEGBaseline8Bit,
        JPEGExtended12Bit,
        JPEGLossless,
        JPEGLosslessSV1,
        JPEGLSLossless,
        JPEGLSNearLossless,
        JPEG2000Lossless,
        JPEG2000,
    }
)


def _check_codestream_ends(ds: Dataset, ts: UID, index: int | None) -> None:
    """Refuse JPEG/JPEG-LS/J2K frames without their end marker (FFD9).

    libjpeg silently decodes a truncated JPEG or JPEG-LS stream into a partly blank image, so the
    decoder succeeding is not proof the data are whole.
    """
    if ts not in _JPEG_FAMILY:
        return
    nframes = number_of_frames(ds)
    wanted = range(nframes) if index is None else (index,)
    try:
        frames = list(generate_frames(ds.PixelData, number_of_frames=nframes))
    except Exception as exc:
        raise PixelDecodeError(f"encapsulated pixel data unreadable ({ts.name}): {exc}") from exc
    if len(frames) < nframes:
        raise PixelDecodeError(f"truncated pixel data: {len(frames)} of {nframes} frames present ({ts.name})")
    for i in wanted:
        tail = frames[i].rstrip(b"\x00")
        if tail.endswith(b"\xd9\xff"):  # one 0xFF pad byte to even length is common
            tail = tail[:-1]
        if not tail.endswith(b"\xff\xd9"):
            raise PixelDecodeError(
                f"truncated pixel data: frame {i + 1} has no end-of-image marker ({ts.name})"
            )


def _decode(ds: Dataset, ts: UID, index: int | None) -> np.ndarray:
    """Decode with the preferred plugin; other plugins are used only when it is not installed.

    A plugin that refuses a stream is not second-guessed by a laxer one (libjpeg decodes damaged
    JPEG-LS that CharLS rightly rejects), so a refusal is a decode failure.
    """
    decoder = get_decoder(ts)
    plugins = list(decoder.available_plugins) or [""]
    preferred = _PREFERRED_PLUGIN.get(ts)
    plugin = preferred if preferred in plugins else plugins[0]
    try:
        arr, _ = decoder.as_array(ds, index=index, decoding_plugin=plugin)
    except Exception as exc:  # decoders raise anything from ValueError to RuntimeError
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        detail = lines[-1] if lines else type(exc).__name__
        detail = detail[:240]
        low = detail.lower()
        if any(w in low for w in ("less than expected", "truncat", "doesn't match the expected amount")):
            raise PixelDecodeError(f"truncated pixel data ({ts.name}): {detail}") from exc
        raise PixelDecodeError(f"decoder failure ({ts.name}, plugin {plugin or 'native'}): {detail}") from exc
    return arr


def number_of_frames(ds: Dataset) -> int:
    """NumberOfFrames, treating absent/empty/zero as one frame."""
    try:
        n = int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError):
        n = 1
    return max(n, 1)


def decode_frames(
    ds: Dataset, *, index: int | None = None, transfer_syntax_uid: str | None = None
) -> np.ndarray:
    """Decode stored values as (frames, rows, cols) in native byte order.

    `index` (0-based) decodes a single frame only (shape (1, rows, cols)) so callers can stream a
    multi-frame object. `transfer_syntax_uid` is for datasets without file meta (e.g. from the network).
    """
    ts = _transfer_syntax(ds, transfer_syntax_uid)
    _check_pixel_module(ds, ts)
    nframes = number_of_frames(ds)
    if index is not None and not 0 <= index < nframes:
        raise PixelDecodeError(f"frame index {index} out of range (NumberOfFrames={nframes})")
    _check_codestream_ends(ds, ts, index)
    arr = _decode(ds, ts, index)
    arr = _fix_j2k_sign(ds, ts, arr)
    rows, cols = int(ds.Rows), int(ds.Columns)
    expected = 1 if index is not None else nframes
    if arr.size != expected * rows * cols:
        raise PixelDecodeError(
            f"decoded {arr.size} values, expected {expected} frame(s) of {rows}x{cols} (truncated pixel data?)"
        )
    arr = arr.reshape(expected, rows, cols)
    if not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))
    return arr


def check_decodable(ds: Dataset, *, transfer_syntax_uid: str | None = None) -> np.ndarray | None:
    """Raise PixelDecodeError unless the pixel data can be turned into frames; runs on every C-STORE.

    Native (uncompressed) data only needs a valid pixel module and enough bytes for every frame, so it is
    checked without a copy (returns None); compressed data must decode its first frame (decoders are the
    only judge), which is returned as (1, rows, cols) so the node can keep it for the series' job.
    """
    ts = _transfer_syntax(ds, transfer_syntax_uid)
    if not ts.is_compressed:  # native, or deflated (inflated when read)
        _check_pixel_module(ds, ts)
        expected = int(ds.Rows) * int(ds.Columns) * int(ds.BitsAllocated) // 8 * number_of_frames(ds)
        actual = len(ds.PixelData)
        if actual < expected:
            raise PixelDecodeError(f"truncated pixel data: {actual} bytes, expected {expected} "
                                   f"({number_of_frames(ds)} frame(s) of {ds.Rows}x{ds.Columns}x{ds.BitsAllocated} bits)")
        return None
    frame = decode_frames(ds, index=0, transfer_syntax_uid=transfer_syntax_uid)
    if frame.shape[1:] != (int(ds.Rows), int(ds.Columns)):
        raise PixelDecodeError(f"first frame has shape {frame.shape[1:]}, expected {ds.Rows}x{ds.Columns}")
    return frame


def rescale_for_frame(ds: Dataset, frame_index: int | None) -> tuple[float, float]:
    """(slope, intercept) for one frame: per-frame, then shared functional groups, then top level.

    Enhanced CT puts the Pixel Value Transformation in the functional groups and may vary it per frame.
    """

    def from_item(item: Dataset | None) -> tuple[float, float] | None:
        if item is None:
            return None
        seq = item.get("PixelValueTransformationSequence")
        if not seq:
            return None
        pvt = seq[0]
        if pvt.get("RescaleSlope") is None and pvt.get("RescaleIntercept") is None:
            return None
        return float(pvt.get("RescaleSlope", 1) or 1), float(pvt.get("RescaleIntercept", 0) or 0)

    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame and frame_index is not None and frame_index < len(per_frame):
        found = from_item(per_frame[frame_index])
        if found:
            return found
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared:
        found = from_item(shared[0])
        if found:
            return found
    slope = ds.get("RescaleSlope")
    intercept = ds.get("RescaleIntercept")
    return (
        float(slope) if slope not in (None, "") else 1.0,
        float(intercept) if intercept not in (None, "") else 0.0,
    )


def _is_integral(x: float) -> bool:
    return math.isfinite(x) and float(x).is_integer()


def apply_rescale(stored: np.ndarray, slope: float, intercept: float) -> np.ndarray:
    """HU = stored * slope + intercept: int16 when integral and in range, else float32."""
    if _is_integral(slope) and _is_integral(intercept):
        lo, hi = (int(stored.min()), int(stored.max())) if stored.size else (0, 0)
        ends = (lo * slope + intercept, hi * slope + intercept)
        if min(ends) >= -32768 and max(ends) <= 32767:
            out = stored.astype(np.int32)
            if slope != 1:
                out *= int(slope)
            if intercept != 0:
                out += int(intercept)
            return out.astype(np.int16)
    out = stored.astype(np.float32)
    if slope != 1:
        out *= np.float32(slope)
    if intercept != 0:
        out += np.float32(intercept)
    return out


def to_hu(ds: Dataset, frames: np.ndarray, frame_index: int | None = None) -> np.ndarray:
    """Apply RescaleSlope/Intercept to stored values from `decode_frames`.

    With `frame_index` None, `frames` holds all frames of `ds` in order and each frame gets its own
    transformation; otherwise `frames` is the single frame `frame_index` (0-based). The result is int16
    when every transformation is integral and all values fit, else float32, with the input's shape.
    """
    if frame_index is not None:
        slope, intercept = rescale_for_frame(ds, frame_index)
        return apply_rescale(frames, slope, intercept)
    stack = frames if frames.ndim == 3 else frames[np.newaxis]
    params = [rescale_for_frame(ds, i) for i in range(stack.shape[0])]
    if len(set(params)) == 1:
        return apply_rescale(frames, *params[0])
    parts = [apply_rescale(stack[i], s, b) for i, (s, b) in enumerate(params)]
    dtype = np.int16 if all(p.dtype == np.int16 for p in parts) else np.float32
    return np.stack([p.astype(dtype) for p in parts]).reshape(frames.shape)
