"""TFRecord shards of ``tf.train.Example`` records (as TFDS and the ImageNet TF tooling write them), read
without TensorFlow.

A shard is a run of records: ``uint64`` length (little-endian), the masked CRC-32C of those 8 bytes
(``uint32``), the data, the masked CRC-32C of the data; masked = ``((crc >> 15 | crc << 17) +
0xa282ead8) mod 2**32``. Both checksums of every record are checked (CRC-32C by ``google-crc32c``
or ``crc32c``: ``pip install 'gpustats[tfrecord]'``). The data is a ``tf.train.Example`` protobuf;
its wire format is parsed here (:func:`example_features`, a few dozen lines with every bound
checked) rather than with protobuf and TensorFlow's generated classes.

The image of a record is the feature named by ``column=`` (``--column``), else ``image/encoded``
(the ImageNet tooling's key), else ``image`` (TFDS's), a ``bytes_list`` holding one encoded image.

Names: the shards are recognized by name (``*.tfrecord``, ``*.tfrecords``, ``*.tfrec``,
``*.tfrecord-00000-of-01024`` and ``train-00000-of-01024`` as the ImageNet tooling names them;
gzip-compressed ones, ``TFRecordOptions(compression_type="GZIP")``, by content). Item ``n`` of a
shard is named ``shard:n`` (its record number). A record whose data checksum fails, or whose
Example holds no image, is a bad item with the reason and its byte offset; a record whose length
checksum fails, or that runs past the end of the file, ends the shard: a problem named after the
shard, with the byte offset, and the records after it are not read (their boundaries are lost).

A local uncompressed shard is indexed (12 bytes read per record, as a tar's headers are) and its
records are read at random, by byte range, by the decode workers (``units.TFRecordUnit``); a
compressed or remote shard is read from start to end (``units.TFRecordStream``, :mod:`.streamed`).

>>> import struct
>>> def varint(n): return bytes([n]) if n < 128 else bytes([n & 127 | 128]) + varint(n >> 7)
>>> def field(number, payload): return varint(number << 3 | 2) + varint(len(payload)) + payload
>>> feature = field(1, field(1, b"\\x89PNG..."))                      # Feature{bytes_list{value}}
>>> example = field(1, field(1, field(1, b"image/encoded") + field(2, feature)))
>>> example_features(example)["image/encoded"]
('bytes', [b'\\x89PNG...'])
>>> image_of(example_features(example), None)
b'\\x89PNG...'
>>> masked_crc(b"123456789") == ((0xE3069283 >> 15 | 0xE3069283 << 17) + 0xA282EAD8) & 0xFFFFFFFF
True
"""

from __future__ import annotations

import functools
import re
from typing import Any, Callable, Iterator

from .errors import BadImage, SourceError
from .tarindex import MAX_MEMBER_BYTES, pread

__all__ = ["DEFAULT_FEATURES", "example_features", "image_of", "index_shard", "is_tfrecord_name", "iter_records",
           "masked_crc", "read_record", "require_crc32c"]

#: features tried, in order, when ``column`` is not given
DEFAULT_FEATURES = ("image/encoded", "image")
_NAME = re.compile(r"(\.tfrecords?|\.tfrec)(-\d+-of-\d+)?(\.gz|\.gzip)?$|-\d+-of-\d+$")
_HEAD = 12
_KINDS = {1: "bytes", 2: "float", 3: "int64"}


def is_tfrecord_name(name: str) -> bool:
    """True for the names read as TFRecord shards (module docstring; any case).

    >>> [is_tfrecord_name(n) for n in ["train-00000-of-01024", "mnist-train.tfrecord-00000-of-00001", "a.png"]]
    [True, True, False]
    """
    return _NAME.search(name.lower()) is not None


# ------------------------------------------------------------------------------------ CRC-32C
@functools.lru_cache(maxsize=1)
def _crc32c() -> Callable[[Any], int]:
    try:
        import google_crc32c

        return google_crc32c.value
    except ImportError:
        pass
    try:
        import crc32c

        return crc32c.crc32c
    except ImportError:
        raise SourceError("reading TFRecord shards needs CRC-32C (their records' checksums); install it: pip "
                          "install 'gpustats[tfrecord]'") from None


def require_crc32c() -> None:
    """Raise the one-line :class:`SourceError` saying what to install when no CRC-32C package is there."""
    _crc32c()


def masked_crc(data: Any) -> int:
    """TFRecord's masked CRC-32C of ``data``."""
    crc = _crc32c()(bytes(data) if isinstance(data, memoryview) else data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _length(head: bytes, offset: int) -> int:
    """The data length a record header gives; :class:`BadImage` (the reason) when its checksum fails."""
    if masked_crc(head[:8]) != int.from_bytes(head[8:12], "little"):
        raise BadImage(f"corrupt TFRecord at byte {offset} (the record length's CRC-32C does not match)")
    return int.from_bytes(head[:8], "little")


# ------------------------------------------------------------------------------------ protobuf
class _Malformed(Exception):
    pass


def _varint(buf: memoryview, pos: int, stop: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= stop:
            raise _Malformed("a varint runs past its message")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise _Malformed("a varint longer than 10 bytes")


def _fields(buf: memoryview, start: int, stop: int) -> Iterator[tuple[int, int, int, int]]:
    """``(field number, wire type, start, stop)`` of each field of the message ``buf[start:stop]``
    (for a varint, ``start`` is its value)."""
    pos = start
    while pos < stop:
        key, pos = _varint(buf, pos, stop)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos, stop)
            yield number, 0, value, pos
        elif wire == 2:
            length, pos = _varint(buf, pos, stop)
            if pos + length > stop:
                raise _Malformed("a field runs past its message")
            yield number, 2, pos, pos + length
            pos += length
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
            if pos > stop:
                raise _Malformed("a field runs past its message")
        else:
            raise _Malformed(f"wire type {wire} (groups are not used by tf.train.Example)")


def example_features(data: Any) -> dict[str, tuple[str, list | None]]:
    """The features of a serialized ``tf.train.Example``: name -> (``"bytes"``, the values) or
    (``"float"``/``"int64"``/``"empty"``, None). Raises ``ValueError`` for a malformed message."""
    buf = memoryview(data)
    features: dict[str, tuple[str, list | None]] = {}
    try:
        for number, wire, start, stop in _fields(buf, 0, len(buf)):
            if number != 1 or wire != 2:
                continue  # Example.features is field 1
            for entry_number, entry_wire, entry_start, entry_stop in _fields(buf, start, stop):
                if entry_number != 1 or entry_wire != 2:
                    continue  # Features.feature (a map) is field 1
                key, value = b"", None
                for f_number, f_wire, f_start, f_stop in _fields(buf, entry_start, entry_stop):
                    if f_number == 1 and f_wire == 2:
                        key = bytes(buf[f_start:f_stop])
                    elif f_number == 2 and f_wire == 2:
                        value = (f_start, f_stop)
                name = key.decode("utf-8", "replace")
                kind, values = "empty", None
                if value is not None:
                    for k_number, k_wire, k_start, k_stop in _fields(buf, *value):
                        if k_wire == 2 and k_number in _KINDS:
                            kind = _KINDS[k_number]  # a oneof: the last one set wins
                            values = [bytes(buf[v_start:v_stop]) for v_number, v_wire, v_start, v_stop
                                      in _fields(buf, k_start, k_stop) if v_number == 1 and v_wire == 2
                                      ] if kind == "bytes" else None
                features[name] = (kind, values)  # a map: the last entry of a key wins
    except _Malformed as exc:
        raise ValueError(f"not a tf.train.Example ({exc})") from None
    return features


def image_of(features: dict[str, tuple[str, list | None]], column: str | None) -> bytes:
    """The encoded image among ``features`` (``column``, else :data:`DEFAULT_FEATURES`); BadImage else."""
    names = [column] if column is not None else [n for n in DEFAULT_FEATURES if n in features]
    if not names or names[0] not in features:
        listed = ", ".join(sorted(features)) or "none"
        wanted = repr(column) if column is not None else " or ".join(repr(n) for n in DEFAULT_FEATURES)
        raise BadImage(f"no {wanted} feature in the record (its features: {listed}); pass --column NAME")
    kind, values = features[names[0]]
    if kind != "bytes":
        raise BadImage(f"the feature {names[0]!r} is a {kind} list, not encoded image bytes")
    if len(values) != 1:
        raise BadImage(f"the feature {names[0]!r} holds {len(values)} values (one encoded image expected)")
    return values[0]


def _image(data: Any, column: str | None, where: str) -> bytes:
    try:
        return image_of(example_features(data), column)
    except ValueError as exc:
        raise BadImage(f"{exc} ({where})") from None


# ------------------------------------------------------------------------------------ reading
def index_shard(fd: Any, unit: Any, size: int) -> None:
    """Add each record of the uncompressed shard open as ``fd`` to ``unit`` (a ``units.TFRecordUnit``: its
    header offset, data length); a problem that ends the shard is an item named after it, with the reason."""
    offset, n = 0, 0
    while offset < size:
        head = pread(fd, _HEAD, offset)
        if len(head) < _HEAD:
            unit.add("", refused=f"truncated TFRecord: a record header at byte {offset} is cut short")
            return
        try:
            length = _length(head, offset)
        except BadImage as exc:
            unit.add("", refused=f"{exc.reason}; the rest of this shard is not read")
            return
        if offset + _HEAD + length + 4 > size:
            unit.add("", refused=f"truncated TFRecord: the record at byte {offset} needs {length} bytes of data, "
                                 "past the end of the file")
            return
        refused = (f"too large: record of {length} bytes > {MAX_MEMBER_BYTES} bytes; refused"
                   if length > MAX_MEMBER_BYTES else None)
        unit.add(str(n), offset, length, refused)
        offset += _HEAD + length + 4
        n += 1


def _checked(record: bytes, offset: int, length: int) -> memoryview:
    """The data of a whole record (header, data, checksum) once both checksums pass."""
    if len(record) < _HEAD + length + 4:
        raise BadImage(f"truncated TFRecord: the record at byte {offset} is cut short")
    _length(record[:_HEAD], offset)
    data = memoryview(record)[_HEAD:_HEAD + length]
    if masked_crc(data) != int.from_bytes(record[_HEAD + length:_HEAD + length + 4], "little"):
        raise BadImage(f"corrupt TFRecord record at byte {offset} (the data's CRC-32C does not match)")
    return data


def read_record(fd: Any, unit: Any, i: int) -> bytes:
    """The encoded image of record ``i`` (both checksums checked); :class:`BadImage` with the reason."""
    offset, length = unit.offsets[i], unit.sizes[i]
    data = _checked(pread(fd, _HEAD + length + 4, offset), offset, length)
    return _image(data, unit.feature, f"record at byte {offset}")


def iter_records(reader: Any, label: str, column: str | None) -> Iterator[tuple[str, bytes | None, str | None]]:
    """``(name, image bytes, None)`` or ``(name, None, reason)`` for each record of a shard read in order
    (``reader.read(n)``); a problem that ends the shard is named after it (``label``)."""
    offset, n = 0, 0
    while True:
        head = reader.read(_HEAD)
        if not head:
            return
        if len(head) < _HEAD:
            yield label, None, f"truncated TFRecord: a record header at byte {offset} is cut short"
            return
        try:
            length = _length(head, offset)
        except BadImage as exc:
            yield label, None, f"{exc.reason}; the rest of this shard is not read"
            return
        if length > MAX_MEMBER_BYTES:
            yield label, None, f"a record of {length} bytes at byte {offset} (over {MAX_MEMBER_BYTES}); the rest of this shard is not read"
            return
        rest = reader.read(length + 4)
        if len(rest) < length + 4:
            yield label, None, (f"truncated TFRecord: the record at byte {offset} needs {length} bytes of data, past "
                                "the end of the file")
            return
        name = f"{label}:{n}"
        try:
            yield name, _image(_checked(head + rest, offset, length), column, f"record at byte {offset}"), None
        except BadImage as exc:
            yield name, None, exc.reason
        offset += _HEAD + length + 4
        n += 1
