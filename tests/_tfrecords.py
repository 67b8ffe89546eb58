"""TFRecord shards for the tests, written independently of the reader under test.

``tf.train.Example`` records are built and serialized by Google's ``protobuf`` package from a message
descriptor declared here (the messages of TensorFlow's ``example.proto`` and ``feature.proto``), and
framed with a CRC-32C written here bit by bit from its definition (reflected polynomial 0x82F63B78),
checked against the standard check value ``CRC-32C("123456789") = 0xE3069283``. Neither shares code
with :mod:`gpustats.sources.tfrecord`.
"""

from __future__ import annotations

import functools
import struct

__all__ = ["crc32c", "example", "frame", "masked", "shard"]


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), bitwise: slow and obviously right, for test data only."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


assert crc32c(b"123456789") == 0xE3069283  # the standard check value


def masked(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


@functools.lru_cache(maxsize=1)
def _example_class():
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    field = descriptor_pb2.FieldDescriptorProto
    proto = descriptor_pb2.FileDescriptorProto(name="gpustats_test_example.proto", package="tensorflow",
                                               syntax="proto3")
    for name, kind in (("BytesList", field.TYPE_BYTES), ("FloatList", field.TYPE_FLOAT),
                       ("Int64List", field.TYPE_INT64)):
        message = proto.message_type.add(name=name)
        message.field.add(name="value", number=1, type=kind, label=field.LABEL_REPEATED)
    feature = proto.message_type.add(name="Feature")
    feature.oneof_decl.add(name="kind")
    for number, name, kind in ((1, "bytes_list", "BytesList"), (2, "float_list", "FloatList"),
                               (3, "int64_list", "Int64List")):
        feature.field.add(name=name, number=number, type=field.TYPE_MESSAGE, label=field.LABEL_OPTIONAL,
                          type_name=f".tensorflow.{kind}", oneof_index=0)
    features = proto.message_type.add(name="Features")
    entry = features.nested_type.add(name="FeatureEntry")
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, type=field.TYPE_STRING, label=field.LABEL_OPTIONAL)
    entry.field.add(name="value", number=2, type=field.TYPE_MESSAGE, label=field.LABEL_OPTIONAL,
                    type_name=".tensorflow.Feature")
    features.field.add(name="feature", number=1, type=field.TYPE_MESSAGE, label=field.LABEL_REPEATED,
                       type_name=".tensorflow.Features.FeatureEntry")
    example_type = proto.message_type.add(name="Example")
    example_type.field.add(name="features", number=1, type=field.TYPE_MESSAGE, label=field.LABEL_OPTIONAL,
                           type_name=".tensorflow.Features")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("tensorflow.Example"))


def example(**features) -> bytes:
    """A serialized ``tf.train.Example``: ``bytes`` values and lists of bytes go to ``bytes_list``, ints to
    ``int64_list``, floats to ``float_list`` (a key's ``/`` is written ``__``: ``image__encoded=``)."""
    message = _example_class()()
    for key, value in features.items():
        feature = message.features.feature[key.replace("__", "/")]
        values = value if isinstance(value, list) else [value]
        if all(isinstance(v, bytes) for v in values):
            feature.bytes_list.value.extend(values)
        elif all(isinstance(v, int) for v in values):
            feature.int64_list.value.extend(values)
        else:
            feature.float_list.value.extend(values)
    return message.SerializeToString()


def frame(data: bytes) -> bytes:
    """One TFRecord record: length, its masked CRC, the data, its masked CRC."""
    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", masked(length)) + data + struct.pack("<I", masked(data))


def shard(images: list[tuple[str, bytes]], key: str = "image/encoded") -> bytes:
    """A shard of one Example per image, as the ImageNet tooling writes them (``key`` holds the image)."""
    out = []
    for n, (name, data) in enumerate(images):
        fields = {key.replace("/", "__"): data, "image__class__label": n % 7, "image__filename": name.encode()}
        out.append(frame(example(**fields)))
    return b"".join(out)
