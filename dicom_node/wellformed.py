"""Is every element of a received data set readable? A C-STORE is acknowledged only for an object the
node can read back in full: the node itself reads a few attributes, but a PACS retrieving the object, or
a viewer, reads them all. Checked cheaply on the raw elements: a value whose length is not a whole number
of its VR's fixed-size items (a 6-byte SL, say), or whose VR is none of PS3.5's, cannot be read, and
sequences are checked item by item.
About 0.2 ms for a CT header, against 1.2 ms for converting every element.
"""

from __future__ import annotations

from pydicom.datadict import dictionary_VR
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.valuerep import VR

# Bytes per value of the VRs whose values have a fixed size (PS3.5 6.2).
ITEM_BYTES = {"AT": 4, "FL": 4, "FD": 8, "OD": 8, "OF": 4, "OL": 4, "OV": 8, "OW": 2, "SL": 4, "SS": 2, "SV": 8,
              "UL": 4, "US": 2, "UV": 8}
UNDEFINED_LENGTH = 0xFFFFFFFF
KNOWN_VRS = frozenset(vr.value for vr in VR)


class MalformedElementError(ValueError):
    """An element whose value cannot be read; the message names its tag and why."""


def _vr_of(raw: RawDataElement) -> str:
    if raw.VR:
        return str(raw.VR)
    try:
        return dictionary_VR(raw.tag)  # implicit VR: what the data dictionary says
    except KeyError:
        return "UN"  # a private or unknown element in implicit VR: opaque bytes, always readable


def check_elements(ds: Dataset, *, explicit_vr: bool, depth: int = 0) -> None:
    """Raise MalformedElementError for the first element whose value cannot be read. In an explicit VR
    data set every element must carry a VR of PS3.5's (pydicom guesses implicit VR for an item whose VR
    bytes are not one, and the object would then read differently elsewhere)."""
    if depth > 16:
        raise MalformedElementError("sequences nested more than 16 deep")
    for elem in ds.elements():
        if not isinstance(elem, RawDataElement):
            if elem.VR == "SQ":  # the decoder parses sequences at once; their items' elements stay raw
                for item in elem.value or ():
                    check_elements(item, explicit_vr=explicit_vr, depth=depth + 1)
            continue  # otherwise already read by the decoder
        if explicit_vr and not elem.VR:
            raise MalformedElementError(f"element {elem.tag}: no valid VR in an explicit VR data set")
        vr = _vr_of(elem)
        if not all(v.strip() in KNOWN_VRS for v in vr.split(" or ")):
            raise MalformedElementError(f"element {elem.tag}: unknown VR {vr.encode('ascii', 'backslashreplace')!r}")
        if vr == "SQ" or elem.length == UNDEFINED_LENGTH and vr in ("UN", "SQ"):
            try:
                items = ds[elem.tag].value
            except Exception as exc:
                raise MalformedElementError(f"sequence {elem.tag} cannot be read ({type(exc).__name__})") from exc
            for item in items or ():
                check_elements(item, explicit_vr=explicit_vr, depth=depth + 1)
            continue
        sizes = {ITEM_BYTES.get(v.strip()) for v in vr.split(" or ")}  # e.g. "US or SS": 2 either way
        size = sizes.pop() if len(sizes) == 1 else None
        if size and elem.length != UNDEFINED_LENGTH and elem.length % size:
            raise MalformedElementError(f"element {elem.tag} ({vr}): {elem.length} bytes is not a whole number "
                                        f"of {size}-byte values")
