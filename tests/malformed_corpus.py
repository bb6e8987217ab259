"""A deterministic malformed-input corpus made from real CT files by mutation (tests/test_campaign_malformed.py).

`Corpus(sources, seed).mutants(n)` yields named `Mutant`s: the same seed gives the same bytes. Each mutant
is one C-STORE input in two forms: a Part-10 file (for DCMTK storescu) and the data set bytes with the
transfer syntax and command UIDs they are declared under (for a raw requestor that sends them as they are).

Every mutant gets its own SOP Instance UID without re-encoding anything: each source is encoded once by
pydicom with a fixed-length placeholder UID, which a mutant replaces byte for byte (same length, so every
offset stays put), so no two mutants collide as duplicates unless that is the point of the mutation.
"""

from __future__ import annotations

import random
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path

import pydicom
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
)

from dicom_node.part10 import encode_file_meta

MB = 1024 * 1024
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
# 44 characters (even: no padding), each mutant's own value written over it.
PLACEHOLDER_SOP = "2.25." + "1" * 39
LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
ALL_VRS = [b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FD", b"FL", b"IS", b"LO", b"LT", b"OB", b"OD",
           b"OF", b"OL", b"OV", b"OW", b"PN", b"SH", b"SL", b"SQ", b"SS", b"ST", b"SV", b"TM", b"UC", b"UI",
           b"UL", b"UN", b"UR", b"US", b"UT", b"UV", b"XX", b"\x00\x00"]
HUGE_LENGTHS = [0xFFFFFFF0, 0xFFFFFFFE, 0xFFFFFFFF, 0x7FFFFFFF, 0x80000000, 0x10000000]
SOP_INSTANCE, SERIES, STUDY, SOP_CLASS, ROWS, COLUMNS, PIXEL_DATA = (
    0x00080018, 0x0020000E, 0x0020000D, 0x00080016, 0x00280010, 0x00280011, 0x7FE00010)


@dataclass(frozen=True)
class Element:
    tag: int
    header: int  # offset of the tag in the data set
    value: int  # offset of the value
    length: int  # as encoded (0xFFFFFFFF: undefined)
    vr: bytes  # b"" in implicit VR


@dataclass
class Source:
    """One real file, re-encoded once with the placeholder SOP Instance UID; `plain` is the data set not
    deflated (a Deflated source is deflated again after mutation)."""

    name: str
    ts: UID
    sop_class: str
    plain: bytes
    elements: list[Element]

    @property
    def explicit(self) -> bool:
        return not self.ts.is_implicit_VR

    @property
    def little(self) -> bool:
        return self.ts.is_little_endian

    def element(self, tag: int) -> Element | None:
        return next((e for e in self.elements if e.tag == tag), None)


@dataclass
class Mutant:
    name: str  # kind/source/detail, unique within a corpus
    kind: str
    ts: str  # the transfer syntax the data set is declared under (file meta and presentation context)
    sop_class: str  # the command's Affected SOP Class UID
    sop_instance: str  # the command's Affected SOP Instance UID
    dataset_uid: str  # the SOP Instance UID in the data set (what storescu sends as the Affected one)
    dataset: bytes  # the data set as sent raw
    file: bytes  # the Part-10 file given to storescu
    expect: int | None = None  # the one status this mutant must get (None: any failure or a safe success)
    setup: list[Mutant] = field(default_factory=list)  # well-formed inputs sent first (the duplicate's original)


def _header(plain: bytes, pos: int, little: bool, explicit: bool) -> tuple[int, bytes, int, int]:
    """(tag, VR, value length, value offset) of the element at `pos`."""
    e = "<" if little else ">"
    group, elem = struct.unpack(e + "HH", plain[pos:pos + 4])
    vr = plain[pos + 4:pos + 6] if explicit and group != 0xFFFE else b""
    if group == 0xFFFE or not explicit:  # items and delimiters: tag + 4-byte length, whatever the syntax
        (length,), value = struct.unpack(e + "I", plain[pos + 4:pos + 8]), pos + 8
    elif vr in LONG_VRS:
        (length,), value = struct.unpack(e + "I", plain[pos + 8:pos + 12]), pos + 12
    else:
        (length,), value = struct.unpack(e + "H", plain[pos + 6:pos + 8]), pos + 8
    return (group << 16) | elem, vr, length, value


def _skip_undefined(plain: bytes, pos: int, little: bool, explicit: bool) -> int:
    """The offset past the delimiter of an undefined-length value starting at `pos`."""
    depth = 1
    while depth and pos + 8 <= len(plain):
        tag, _, length, value = _header(plain, pos, little, explicit)
        if tag in (0xFFFEE0DD, 0xFFFEE00D):
            depth, pos = depth - 1, value
        elif length == 0xFFFFFFFF:
            depth, pos = depth + 1, value
        else:
            pos = value + length
    return pos


def _walk(plain: bytes, ts: UID) -> list[Element]:
    """The top-level elements of an uncompressed data set, with their offsets."""
    little, explicit = ts.is_little_endian, not ts.is_implicit_VR
    out, pos = [], 0
    while pos + 8 <= len(plain):
        tag, vr, length, value = _header(plain, pos, little, explicit)
        out.append(Element(tag, pos, value, length, vr))
        pos = _skip_undefined(plain, value, little, explicit) if length == 0xFFFFFFFF else value + length
    assert pos == len(plain), f"walked to {pos} of {len(plain)}"
    return out


def load_source(path: Path, name: str) -> Source:
    ds = pydicom.dcmread(path)
    ts = UID(str(ds.file_meta.TransferSyntaxUID))
    ds.SOPInstanceUID = PLACEHOLDER_SOP
    buf = BytesIO()
    # written in its own syntax, not deflated (a Deflated source is deflated per mutant)
    plain_ts = ExplicitVRLittleEndian if ts.is_deflated else ts
    ds.file_meta.TransferSyntaxUID = plain_ts
    ds.save_as(buf, enforce_file_format=False, implicit_vr=plain_ts.is_implicit_VR,
               little_endian=plain_ts.is_little_endian)
    plain = buf.getvalue()
    plain = plain[_dataset_start(plain):] if plain[128:132] == b"DICM" else plain
    assert plain.count(PLACEHOLDER_SOP.encode()) == 1, name
    return Source(name, ts, str(ds.SOPClassUID), plain, _walk(plain, plain_ts))


def _dataset_start(part10: bytes) -> int:
    (group_length,) = struct.unpack("<I", part10[140:144])
    return 144 + group_length


def _raw_deflate(data: bytes) -> bytes:
    c = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    return c.compress(data) + c.flush()


class Corpus:
    """Named mutants of `sources`, drawn by `random.Random(seed)`."""

    KINDS = ("truncate_file", "truncate_dataset", "flip_header", "wrong_vr", "huge_length", "deflate_bomb",
             "wrong_transfer_syntax", "missing_uid", "conflicting_uid", "uid_with_letters",
             "duplicate_other_content", "rows_columns_too_large", "flip_pixel_data")

    def __init__(self, sources: list[Source], seed: int, bomb_mb: tuple[int, ...] = (1024, 3072)) -> None:
        self.sources = sources
        self.rng = random.Random(seed)
        self.seed = seed
        self.bomb_mb = bomb_mb
        self._uid_counter = 0
        self._zeros: dict[int, bytes] = {}

    # -- helpers ------------------------------------------------------------------------------------

    def _new_uid(self) -> str:
        self._uid_counter += 1
        tail = f"{self.seed % 10**9:09d}{self._uid_counter:06d}{self.rng.getrandbits(64):024d}"[:39]
        return "2.25." + ("9" + tail[1:])

    def _finish(self, name: str, kind: str, src: Source, plain: bytes, uid: str, *, ts: str | None = None,
                sop_class: str | None = None, command_uid: str | None = None, meta_uid: str | None = None,
                expect: int | None = None, file_cut: int | None = None, deflate: bool | None = None) -> Mutant:
        ts = ts or str(src.ts)
        deflate = UID(ts).is_deflated if deflate is None else deflate
        body = plain.replace(PLACEHOLDER_SOP.encode(), uid.encode())
        if deflate:
            body = _raw_deflate(body)
        sop_class = sop_class or src.sop_class
        meta = encode_file_meta(sop_class, meta_uid or uid, ts, source_ae_title="MUTATOR")
        file = meta + body
        dataset = body
        if file_cut is not None:  # truncation of the whole Part-10 file: what is left of the data set goes raw
            file = file[:file_cut]
            # what is left of the data set; cut inside the file meta, the partial header is sent as the data set
            dataset = file[len(meta):] if file_cut > len(meta) else file
        return Mutant(name, kind, ts, sop_class, command_uid or uid, uid, dataset, file, expect)

    def _pick(self, pred=None) -> Source:
        pool = [s for s in self.sources if pred is None or pred(s)]
        return self.rng.choice(pool)

    # -- the mutations --------------------------------------------------------------------------------

    def truncate_file(self, i: int) -> Mutant:
        src = self._pick()
        uid = self._new_uid()
        whole = len(encode_file_meta(src.sop_class, uid, str(src.ts), source_ae_title="MUTATOR")) + len(src.plain)
        if src.ts.is_deflated:
            whole = min(whole, 64 * 1024)
        # random offsets, weighted towards the first 2 KB (file meta and the start of the data set)
        cut = self.rng.choice([self.rng.randrange(1, 2048), self.rng.randrange(1, whole)])
        return self._finish(f"truncate_file/{src.name}/{i}@{cut}", "truncate_file", src, src.plain, uid,
                            file_cut=cut)

    def truncate_dataset(self, i: int) -> Mutant:
        src = self._pick()
        # random offsets, weighted towards the header, where the structure is
        cut = self.rng.choice([self.rng.randrange(1, min(4096, len(src.plain))),
                               self.rng.randrange(1, len(src.plain))])
        return self._finish(f"truncate_dataset/{src.name}/{i}@{cut}", "truncate_dataset", src,
                            src.plain[:cut], self._new_uid())

    def flip_header(self, i: int) -> Mutant:
        src = self._pick()
        plain = bytearray(src.plain)
        uid_at = src.plain.find(PLACEHOLDER_SOP.encode())
        flips = []
        for _ in range(self.rng.randint(1, 8)):
            at = self.rng.randrange(0, min(2048, len(plain)))
            if uid_at <= at < uid_at + len(PLACEHOLDER_SOP):
                continue  # keep the UID substitutable; the UID mutations cover it
            plain[at] ^= self.rng.randrange(1, 256)
            flips.append(at)
        return self._finish(f"flip_header/{src.name}/{i}@{','.join(map(str, flips))}", "flip_header", src,
                            bytes(plain), self._new_uid())

    def wrong_vr(self, i: int) -> Mutant:
        src = self._pick(lambda s: s.explicit)
        el = self.rng.choice([e for e in src.elements if e.vr])
        vr = self.rng.choice([v for v in ALL_VRS if v != el.vr])
        plain = bytearray(src.plain)
        plain[el.header + 4:el.header + 6] = vr
        return self._finish(f"wrong_vr/{src.name}/{i}/({el.tag >> 16:04X},{el.tag & 0xFFFF:04X}) "
                            f"{el.vr.decode()}->{vr.decode(errors='replace')}", "wrong_vr", src, bytes(plain),
                            self._new_uid())

    def huge_length(self, i: int) -> Mutant:
        src = self._pick()
        candidates = [e for e in src.elements if e.tag != SOP_INSTANCE]
        el = self.rng.choice([src.element(PIXEL_DATA) or candidates[0], *candidates])
        plain = bytearray(src.plain)
        fmt = "<" if src.little else ">"
        if src.explicit and el.vr not in LONG_VRS and el.length != 0xFFFFFFFF:
            value = self.rng.choice([0xFFFF, 0xFFFE, 0xFFF0])
            plain[el.value - 2:el.value] = struct.pack(fmt + "H", value)
        else:
            value = self.rng.choice(HUGE_LENGTHS)
            plain[el.value - 4:el.value] = struct.pack(fmt + "I", value)
        return self._finish(f"huge_length/{src.name}/{i}/({el.tag >> 16:04X},{el.tag & 0xFFFF:04X})=0x{value:X}",
                            "huge_length", src, bytes(plain), self._new_uid())

    def _zeros_segment(self, mb: int) -> bytes:
        """Raw deflate of `mb` MB of zeros, full-flushed (byte-aligned, no back-references across it), so
        it can be spliced between independently compressed head and tail."""
        if not self._zeros:  # 16 MB of zeros, flushed: repeated, each copy inflates to 16 MB more
            c = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
            self._zeros[16] = c.compress(b"\0" * 16 * MB) + c.flush(zlib.Z_FULL_FLUSH)
        if mb not in self._zeros:
            assert mb % 16 == 0
            self._zeros[mb] = self._zeros[16] * (mb // 16)
        return self._zeros[mb]

    def deflate_bomb(self, i: int, max_mb: int | None = None) -> Mutant:
        """A real header, then a private OB element of zeros that inflates to `mb`, then the rest: a Deflated
        data set of a few MB that inflates to gigabytes. Built as in tests/test_limits.py."""
        src = self._pick(lambda s: s.explicit and s.little and s.element(PIXEL_DATA) is not None)
        sizes = [m for m in self.bomb_mb if max_mb is None or m <= max_mb]
        mb = self.rng.choice(sizes)
        uid = self._new_uid()
        plain = src.plain.replace(PLACEHOLDER_SOP.encode(), uid.encode())
        # split before the first element past group 0008 (a private group 0009 fits there)
        split = next(e.header for e in src.elements if e.tag >> 16 > 0x0008)
        head = plain[:split] + struct.pack("<HH2sH", 0x0009, 0x0010, b"LO", 4) + b"BOMB" \
            + struct.pack("<HH2sHI", 0x0009, 0x1010, b"OB", 0, mb * MB)
        c = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
        body = c.compress(head) + c.flush(zlib.Z_FULL_FLUSH) + self._zeros_segment(mb)
        t = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
        body += t.compress(plain[split:]) + t.flush()
        ts = DeflatedExplicitVRLittleEndian
        meta = encode_file_meta(src.sop_class, uid, ts, source_ae_title="MUTATOR")
        return Mutant(f"deflate_bomb/{src.name}/{i}/{mb}MB", "deflate_bomb", ts, src.sop_class, uid, uid, body,
                      meta + body, expect=0xA700)

    def wrong_transfer_syntax(self, i: int) -> Mutant:
        src = self._pick()
        wrong = self.rng.choice([t for t in (ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian,
                                             JPEGLSLossless, JPEG2000Lossless, DeflatedExplicitVRLittleEndian,
                                             "1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.70")
                                  if t != str(src.ts) and not (src.ts.is_deflated and t == ExplicitVRLittleEndian)])
        # the bytes as the source's syntax encodes them (deflated if it is Deflated), declared as `wrong`
        return self._finish(f"wrong_transfer_syntax/{src.name}/{i}/as {UID(wrong).name}",
                            "wrong_transfer_syntax", src, src.plain, self._new_uid(), ts=str(wrong),
                            deflate=src.ts.is_deflated)

    def _without(self, src: Source, tag: int) -> bytes:
        el = src.element(tag)
        assert el is not None and el.length != 0xFFFFFFFF
        return src.plain[:el.header] + src.plain[el.value + el.length:]

    def missing_uid(self, i: int) -> Mutant:
        src = self._pick()
        tag, name = self.rng.choice([(SOP_INSTANCE, "SOPInstanceUID"), (SERIES, "SeriesInstanceUID"),
                                     (STUDY, "StudyInstanceUID"), (SOP_CLASS, "SOPClassUID")])
        return self._finish(f"missing_uid/{src.name}/{i}/{name}", "missing_uid", src, self._without(src, tag),
                            self._new_uid())

    def conflicting_uid(self, i: int) -> Mutant:
        src = self._pick()
        uid = self._new_uid()
        how = self.rng.choice(["command_instance", "command_class", "meta_instance"])
        if how == "command_instance":  # the command's Affected SOP Instance UID is not the data set's
            return self._finish(f"conflicting_uid/{src.name}/{i}/{how}", "conflicting_uid", src, src.plain, uid,
                                command_uid=self._new_uid(), meta_uid=None)
        if how == "command_class":  # the data set is CT, the command (and presentation context) says MR
            return self._finish(f"conflicting_uid/{src.name}/{i}/{how}", "conflicting_uid", src, src.plain, uid,
                                sop_class=MR_IMAGE)
        # the file meta's Media Storage SOP Instance UID is not the data set's (storescu's view of it)
        return self._finish(f"conflicting_uid/{src.name}/{i}/{how}", "conflicting_uid", src, src.plain, uid,
                            meta_uid=self._new_uid())

    def uid_with_letters(self, i: int) -> Mutant:
        src = self._pick()
        which = self.rng.choice(["SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID"])
        letters = "".join(self.rng.choice("abcxyzQ-_/") for _ in range(3))
        if which == "SOPInstanceUID":
            uid = self._new_uid()
            bad = uid[:20] + letters + uid[23:]
            return self._finish(f"uid_with_letters/{src.name}/{i}/{which}={bad}", "uid_with_letters", src,
                                src.plain, bad)
        el = src.element(SERIES if which == "SeriesInstanceUID" else STUDY)
        plain = bytearray(src.plain)
        at = el.value + max(0, min(8, el.length - 4))
        plain[at:at + 3] = letters.encode()
        return self._finish(f"uid_with_letters/{src.name}/{i}/{which}", "uid_with_letters", src, bytes(plain),
                            self._new_uid())

    def duplicate_other_content(self, i: int) -> Mutant:
        """A well-formed instance sent first, then other content under its SOP Instance UID: 0xC240."""
        src = self._pick(lambda s: s.element(PIXEL_DATA) is not None and not s.ts.is_compressed
                         and s.element(PIXEL_DATA).length != 0xFFFFFFFF)
        uid = self._new_uid()
        original = self._finish(f"duplicate_other_content/{src.name}/{i}/original", "setup", src, src.plain, uid,
                                expect=0x0000)
        pix = src.element(PIXEL_DATA)
        plain = bytearray(src.plain)
        at = pix.value + self.rng.randrange(0, pix.length // 2) * 2
        plain[at] ^= 0x01  # one pixel's value differs: still well-formed, another object
        dup = self._finish(f"duplicate_other_content/{src.name}/{i}@{at}", "duplicate_other_content", src,
                           bytes(plain), uid, expect=0xC240)
        dup.setup.append(original)
        return dup

    def rows_columns_too_large(self, i: int) -> Mutant:
        src = self._pick(lambda s: s.element(ROWS) is not None and s.element(COLUMNS) is not None)
        rows, cols = self.rng.choice([(65535, 65535), (65535, 512), (4096, 4096), (1024, 1024), (513, 512)])
        plain = bytearray(src.plain)
        fmt = "<H" if src.little else ">H"
        plain[src.element(ROWS).value:src.element(ROWS).value + 2] = struct.pack(fmt, rows)
        plain[src.element(COLUMNS).value:src.element(COLUMNS).value + 2] = struct.pack(fmt, cols)
        return self._finish(f"rows_columns_too_large/{src.name}/{i}/{rows}x{cols}", "rows_columns_too_large", src,
                            bytes(plain), self._new_uid())

    def flip_pixel_data(self, i: int) -> Mutant:
        """Flipped bytes in a compressed codestream: the decoders get damaged input (they must not crash)."""
        src = self._pick(lambda s: s.ts.is_compressed and s.element(PIXEL_DATA) is not None)
        pix = src.element(PIXEL_DATA)
        plain = bytearray(src.plain)
        span = len(plain) - pix.value
        flips = []
        for _ in range(self.rng.randint(1, 16)):
            at = pix.value + self.rng.randrange(0, min(span, self.rng.choice([64, 512, 4096, span])))
            plain[at] ^= self.rng.randrange(1, 256)
            flips.append(at - pix.value)
        return self._finish(f"flip_pixel_data/{src.name}/{i}@{','.join(map(str, flips[:4]))}", "flip_pixel_data",
                            src, bytes(plain), self._new_uid())

    # -- the corpus ---------------------------------------------------------------------------------------

    def mutants(self, n: int, bomb_max_mb: int | None = None) -> Iterator[Mutant]:
        """`n` mutants, every kind in turn (so a small corpus has each), the sources and details drawn."""
        for i in range(n):
            kind = self.KINDS[i % len(self.KINDS)]
            if kind == "deflate_bomb":
                yield self.deflate_bomb(i, bomb_max_mb)
            else:
                yield getattr(self, kind)(i)
