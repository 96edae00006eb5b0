"""The weight-stream codec: a state dict as a stream of rlhf.v1.WeightChunk messages and back.

Used by policy UpdateWeights (learner -> replicas) and learner GetWeights (replica pulls).
Each chunk stays under the message limit, carries name, dtype, shape, a byte range and a CRC32;
the stream ends with a `commit` message. The receiver checks everything before it hands over a
state dict, so the caller can apply it all or nothing.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping

import grpc
import torch

from rlhf.core.errors import StatusError
from rlhf.core.tensors import TensorDecodeError, byte_view, bytes_to_tensor, dtype_name, parse_dtype
from rlhf.v1 import common_pb2

DEFAULT_CHUNK_BYTES = 4 * 1024 * 1024  # well under the 64 MiB default message limit
FULL, LORA = common_pb2.WEIGHTS_KIND_FULL, common_pb2.WEIGHTS_KIND_LORA
LORA_SUFFIXES = (".lora_A", ".lora_B")  # the tensor names of a LoRA stream: MODULE.lora_A, MODULE.lora_B


def weights_kind(state_dict: Mapping[str, torch.Tensor]) -> int:
    """LORA for a state dict of LoRA factors only (MODULE.lora_A / MODULE.lora_B), FULL otherwise."""
    factors = [name.endswith(LORA_SUFFIXES) for name in state_dict]
    if any(factors) and not all(factors):
        raise ValueError("a weight stream carries model tensors or LoRA factors, not both")
    return LORA if factors and all(factors) else FULL


class WeightStreamError(StatusError):
    """A stream that cannot be applied; `code` is the gRPC status to answer with."""


def _chunk_headers(
    state_dict: Mapping[str, torch.Tensor], version: int, chunk_bytes: int
) -> Iterator[tuple[common_pb2.WeightChunk, memoryview]]:
    """Each chunk's message without its data, and the data as a view of the tensor (not copied)."""
    kind = weights_kind(state_dict)
    for name, tensor in state_dict.items():
        raw = byte_view(tensor)
        dtype, shape = dtype_name(tensor.dtype), list(tensor.shape)
        for offset in range(0, max(len(raw), 1), chunk_bytes):
            piece = raw[offset : offset + chunk_bytes]
            header = common_pb2.WeightChunk(
                name=name,
                dtype=dtype,
                shape=shape,
                offset=offset,
                total_bytes=len(raw),
                crc32=zlib.crc32(piece),
                target_version=version,
                kind=kind,
            )
            yield header, piece


def _commit_message(state_dict: Mapping[str, torch.Tensor], version: int) -> common_pb2.WeightChunk:
    return common_pb2.WeightChunk(
        commit=True, num_tensors=len(state_dict), target_version=version, kind=weights_kind(state_dict)
    )


def weight_chunks(
    state_dict: Mapping[str, torch.Tensor], version: int, chunk_bytes: int = DEFAULT_CHUNK_BYTES
) -> Iterator[common_pb2.WeightChunk]:
    """Split each tensor into chunks of at most chunk_bytes, then a commit message."""
    for header, piece in _chunk_headers(state_dict, version, chunk_bytes):
        header.data = piece.tobytes()
        yield header
    yield _commit_message(state_dict, version)


_DATA_TAG = bytes([(4 << 3) | 2])  # WeightChunk.data: field 4, length-delimited


def serialized_weight_chunks(
    state_dict: Mapping[str, torch.Tensor], version: int, chunk_bytes: int = DEFAULT_CHUNK_BYTES
) -> Iterator[bytes]:
    """The weight_chunks stream as serialized messages, for a stub that sends bytes as they are.

    Protobuf reads concatenated fields as one message, so the data field is appended to the
    serialized header by hand: one copy of the tensor bytes per chunk, where building and then
    serializing a message costs three (the sender's CPU was the bottleneck of UpdateWeights).
    """
    for header, piece in _chunk_headers(state_dict, version, chunk_bytes):
        data_field = (_DATA_TAG, _varint(len(piece)), piece) if len(piece) else ()
        yield b"".join((header.SerializeToString(), *data_field))
    yield _commit_message(state_dict, version).SerializeToString()


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


TensorSpec = tuple[torch.dtype, tuple[int, ...]]


def cast_floating(state_dict: Mapping[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The state dict with its floating-point tensors in `dtype` (integer buffers stay as they are),
    e.g. a float32 learner's weights for a replica serving bfloat16. Tensors already in `dtype` are
    not copied."""
    return {name: t.to(dtype) if t.is_floating_point() else t for name, t in state_dict.items()}


def specs_of(state_dict: Mapping[str, torch.Tensor]) -> dict[str, TensorSpec]:
    return {name: (t.dtype, tuple(t.shape)) for name, t in state_dict.items()}


def expected_bytes(dtype: torch.dtype, shape: tuple[int, ...]) -> int:
    """The bytes of a dense tensor of this dtype and shape."""
    return math.prod(shape) * dtype.itemsize


AdapterCheck = Callable[[str, TensorSpec], str | None]  # (name, spec) -> why it does not fit, or None


class WeightStreamAssembler:
    """Collects chunks into tensors, checking each against the expected names, dtypes and shapes: a FULL
    stream against the model's own tensors (`expected`), a LORA stream through `adapter_check`."""

    def __init__(
        self,
        expected: Mapping[str, TensorSpec] | None = None,
        buffers: dict[str, bytearray] | None = None,
        adapter_check: AdapterCheck | None = None,
    ):
        """`buffers`, when given, is a receive area kept between streams (name -> bytes): tensors land in
        buffers allocated once instead of fresh memory per stream, which first-touch page faults make slow.
        The tensors `finish` returns then share that memory, so use them before the next stream starts.
        Without `adapter_check` a LORA stream is refused."""
        self.expected = expected
        self.adapter_check = adapter_check
        self._reusable = buffers if buffers is not None else {}
        self.kind: int | None = None
        self.version: int | None = None
        self.bytes_received = 0
        self.committed = False
        self._buffers: dict[str, bytearray] = {}
        self._filled: dict[str, int] = {}
        self._specs: dict[str, TensorSpec] = {}

    def add(self, chunk: common_pb2.WeightChunk) -> None:
        if self.committed:
            raise WeightStreamError(grpc.StatusCode.INVALID_ARGUMENT, "chunk after the commit message")
        if self.version is None:
            self.version = chunk.target_version
        elif chunk.target_version != self.version:
            raise WeightStreamError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"chunk for version {chunk.target_version} in a stream for version {self.version}",
            )
        self._check_kind(chunk.kind)
        if chunk.commit:
            self._commit(chunk.num_tensors)
            return
        self._check_spec(chunk)
        data = chunk.data  # each access of a bytes field makes a new copy
        if zlib.crc32(data) != chunk.crc32:
            raise WeightStreamError(grpc.StatusCode.DATA_LOSS, f"{chunk.name}: CRC mismatch at offset {chunk.offset}")
        buffer = self._buffers.get(chunk.name)
        if buffer is None:  # not setdefault: that would allocate a whole tensor's buffer for every chunk
            buffer = self._reusable.get(chunk.name)
            if buffer is None or len(buffer) != chunk.total_bytes:
                buffer = self._reusable[chunk.name] = bytearray(chunk.total_bytes)
            self._buffers[chunk.name] = buffer
        if len(buffer) != chunk.total_bytes or chunk.offset != self._filled.get(chunk.name, 0):
            raise WeightStreamError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"{chunk.name}: chunk at offset {chunk.offset} out of order "
                f"(expected {self._filled.get(chunk.name, 0)} of {len(buffer)})",
            )
        end = chunk.offset + len(data)
        if end > len(buffer):
            raise WeightStreamError(grpc.StatusCode.INVALID_ARGUMENT, f"{chunk.name}: chunk runs past the tensor end")
        memoryview(buffer)[chunk.offset : end] = data  # ~10x faster than bytearray slice assignment
        self._filled[chunk.name] = end
        self.bytes_received += len(data)

    def _check_kind(self, kind: int) -> None:
        if kind not in (FULL, LORA):
            raise WeightStreamError(grpc.StatusCode.INVALID_ARGUMENT, f"unknown weights kind {kind}")
        if self.kind is None:
            if kind == LORA and self.adapter_check is None:
                raise WeightStreamError(
                    grpc.StatusCode.INVALID_ARGUMENT, "a LoRA adapter stream, but this receiver takes full weights only"
                )
            self.kind = kind
        elif kind != self.kind:
            raise WeightStreamError(
                grpc.StatusCode.INVALID_ARGUMENT,
                "a stream that mixes full weights and LoRA factors (the kind changed mid-stream)",
            )

    def _check_spec(self, chunk: common_pb2.WeightChunk) -> None:
        try:
            spec = (parse_dtype(chunk.dtype), tuple(chunk.shape))
        except TensorDecodeError as err:
            raise WeightStreamError(grpc.StatusCode.INVALID_ARGUMENT, f"{chunk.name}: {err}") from None
        if self.kind == LORA:
            why = "negative shape" if any(d < 0 for d in spec[1]) else self.adapter_check(chunk.name, spec)
            if why:
                raise WeightStreamError(
                    grpc.StatusCode.INVALID_ARGUMENT, f"{chunk.name}: {why} (a LoRA adapter stream)"
                )
        elif self.expected is not None:
            if chunk.name not in self.expected:
                raise WeightStreamError(grpc.StatusCode.INVALID_ARGUMENT, f"unknown tensor name {chunk.name!r}")
            want = self.expected[chunk.name]
            if spec[0] != want[0]:
                raise WeightStreamError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"{chunk.name}: dtype {chunk.dtype} does not match the model's {dtype_name(want[0])}",
                )
            if spec[1] != want[1]:
                raise WeightStreamError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"{chunk.name}: shape {list(spec[1])} does not match the model's {list(want[1])}",
                )
        if self._specs.setdefault(chunk.name, spec) != spec:
            raise WeightStreamError(
                grpc.StatusCode.INVALID_ARGUMENT, f"{chunk.name}: dtype or shape changed mid-tensor"
            )
        # Checked before any buffer is allocated: a forged total_bytes (negative, 1 TiB) must not become memory.
        if any(d < 0 for d in spec[1]):
            raise WeightStreamError(grpc.StatusCode.INVALID_ARGUMENT, f"{chunk.name}: negative shape {list(spec[1])}")
        size = expected_bytes(*spec)
        if chunk.total_bytes != size:
            raise WeightStreamError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"{chunk.name}: total_bytes {chunk.total_bytes} is not {size}, the size of a {dtype_name(spec[0])} "
                f"tensor of shape {list(spec[1])}",
            )

    def _commit(self, num_tensors: int) -> None:
        incomplete = [n for n, buf in self._buffers.items() if self._filled.get(n, 0) != len(buf)]
        if incomplete:
            raise WeightStreamError(grpc.StatusCode.INVALID_ARGUMENT, f"incomplete tensors at commit: {incomplete[:5]}")
        if num_tensors != len(self._buffers):
            raise WeightStreamError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"commit announces {num_tensors} tensors but {len(self._buffers)} arrived",
            )
        self.committed = True

    def finish(self) -> tuple[int, dict[str, torch.Tensor]]:
        """The version and state dict of a committed stream."""
        if not self.committed:
            raise WeightStreamError(
                grpc.StatusCode.INVALID_ARGUMENT, "weight stream ended before its commit message (truncated)"
            )
        tensors = {}
        for name, buffer in self._buffers.items():
            dtype, shape = self._specs[name]
            tensors[name] = bytes_to_tensor(buffer, dtype, shape)
        return int(self.version or 0), tensors


def assemble(chunks: Iterable[common_pb2.WeightChunk], expected: Mapping[str, TensorSpec] | None = None):
    """Collect a whole (synchronous) stream; returns (version, state_dict)."""
    assembler = WeightStreamAssembler(expected)
    for chunk in chunks:
        assembler.add(chunk)
    return assembler.finish()
