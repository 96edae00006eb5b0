"""Fuzzing every RPC: hypothesis strategies built from the request descriptors, plus raw byte mutations.

Shared by tests/core/test_fuzz.py (a bounded number of examples in `make test`) and benchmarks/fuzz.py
(long runs). Every answer must be a proper status, never UNKNOWN, and the server must keep serving.
"""

from __future__ import annotations

import grpc
from google.protobuf import descriptor as pb
from google.protobuf import message_factory
from hypothesis import strategies as st

# Small values mostly (cheap requests), the edges always in reach.
INT32 = st.one_of(st.integers(-3, 40), st.sampled_from([-(2**31), 2**31 - 1, 2**16]))
INT64 = st.one_of(st.integers(-3, 600), st.sampled_from([-(2**63), 2**63 - 1, 2**40, 2**34]))
UINT32 = st.one_of(st.integers(0, 40), st.sampled_from([2**32 - 1]))
FLOATS = st.floats(allow_nan=True, allow_infinity=True, width=32)
TEXT = st.one_of(st.text(max_size=40), st.just("Human: Tell me about cats.\nAssistant:"))


def scalar(field: pb.FieldDescriptor) -> st.SearchStrategy:
    t = pb.FieldDescriptor
    kinds = {
        t.TYPE_INT32: INT32,
        t.TYPE_SINT32: INT32,
        t.TYPE_SFIXED32: INT32,
        t.TYPE_INT64: INT64,
        t.TYPE_SINT64: INT64,
        t.TYPE_SFIXED64: INT64,
        t.TYPE_UINT32: UINT32,
        t.TYPE_FIXED32: UINT32,
        t.TYPE_UINT64: st.integers(0, 2**64 - 1),
        t.TYPE_FIXED64: st.integers(0, 2**64 - 1),
        t.TYPE_FLOAT: FLOATS,
        t.TYPE_DOUBLE: st.floats(allow_nan=True, allow_infinity=True),
        t.TYPE_BOOL: st.booleans(),
        t.TYPE_STRING: TEXT,
        t.TYPE_BYTES: st.binary(max_size=64),
    }
    if field.type == t.TYPE_ENUM:
        return st.sampled_from([v.number for v in field.enum_type.values])
    return kinds[field.type]


def field_values(field: pb.FieldDescriptor, depth: int) -> st.SearchStrategy | None:
    if field.message_type is not None:
        if field.message_type.GetOptions().map_entry:
            key, value = field.message_type.fields_by_name["key"], field.message_type.fields_by_name["value"]
            return st.dictionaries(scalar(key), scalar(value), max_size=3)
        if depth >= 3:
            return None
        one = messages(field.message_type, depth + 1)
    else:
        one = scalar(field)
    return st.lists(one, max_size=5) if field.is_repeated else one


def messages(descriptor: pb.Descriptor, depth: int = 0) -> st.SearchStrategy:
    """Messages of this type with any subset of their fields set to arbitrary values."""
    cls = message_factory.GetMessageClass(descriptor)
    optional = {f.name: s for f in descriptor.fields if (s := field_values(f, depth)) is not None}

    def build(values: dict):
        message = cls()
        for name, value in values.items():
            field = descriptor.fields_by_name[name]
            if field.message_type is not None and field.message_type.GetOptions().map_entry:
                getattr(message, name).update(value)
            elif field.is_repeated:
                getattr(message, name).extend(value)
            elif field.message_type is not None:
                getattr(message, name).CopyFrom(value)
            else:
                setattr(message, name, value)
        return message

    return st.fixed_dictionaries({}, optional=optional).map(build)


@st.composite
def mutated(draw, descriptor: pb.Descriptor) -> bytes:
    """A valid message's bytes with some flipped, cut, inserted or duplicated."""
    data = bytearray(draw(messages(descriptor)).SerializeToString())
    for _ in range(draw(st.integers(1, 4))):
        kind, at = draw(st.sampled_from(["flip", "cut", "insert", "double"])), draw(st.integers(0, len(data)))
        if kind == "flip" and data:
            data[at % len(data)] ^= draw(st.integers(1, 255))
        elif kind == "cut":
            data = data[:at]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif data:
            data += data[at:]
    return bytes(data)


def call(
    channel: grpc.Channel,
    service: pb.ServiceDescriptor,
    method: pb.MethodDescriptor,
    payload: bytes,
    timeout: float = 60,
) -> grpc.StatusCode:
    """The status code of `answer`."""
    return answer(channel, service, method, payload, timeout)[0]


def answer(
    channel: grpc.Channel,
    service: pb.ServiceDescriptor,
    method: pb.MethodDescriptor,
    payload: bytes,
    timeout: float = 60,
) -> tuple[grpc.StatusCode, str]:
    """Send the request bytes with the method's own cardinality (one message for a streamed request);
    (status code, details) of the answer."""
    kinds = {
        (False, False): channel.unary_unary,
        (False, True): channel.unary_stream,
        (True, False): channel.stream_unary,
        (True, True): channel.stream_stream,
    }
    rpc = kinds[(method.client_streaming, method.server_streaming)](f"/{service.full_name}/{method.name}")
    try:
        reply = rpc(iter([payload]) if method.client_streaming else payload, timeout=timeout)
        if method.server_streaming:
            for _ in reply:
                pass
    except grpc.RpcError as err:
        return err.code(), err.details() or ""
    return grpc.StatusCode.OK, ""
