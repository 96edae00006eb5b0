"""The tensor wire message: raw bytes + dtype + shape (rlhf.v1.Tensor). Never pickle."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from rlhf.v1 import common_pb2

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float64": torch.float64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "int64": torch.int64,
    "int32": torch.int32,
    "int16": torch.int16,
    "int8": torch.int8,
    "uint8": torch.uint8,
    "bool": torch.bool,
}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}


class TensorDecodeError(ValueError):
    """A tensor message whose dtype, shape and byte count do not agree."""


def dtype_name(dtype: torch.dtype) -> str:
    try:
        return DTYPE_NAMES[dtype]
    except KeyError:
        raise TensorDecodeError(f"unsupported dtype {dtype}") from None


def parse_dtype(name: str) -> torch.dtype:
    try:
        return DTYPES[name]
    except KeyError:
        raise TensorDecodeError(f"unknown dtype {name!r}; expected one of {sorted(DTYPES)}") from None


def byte_view(tensor: torch.Tensor) -> memoryview:
    """The tensor's contents as little-endian raw bytes; no copy for a contiguous CPU tensor."""
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy())


def tensor_bytes(tensor: torch.Tensor) -> bytes:
    """The tensor's contents as little-endian raw bytes (CPU, contiguous)."""
    return byte_view(tensor).tobytes()


def bytes_to_tensor(data: bytes | bytearray | memoryview, dtype: torch.dtype, shape: Sequence[int]) -> torch.Tensor:
    numel = 1
    for dim in shape:
        if dim < 0:
            raise TensorDecodeError(f"negative dimension in shape {list(shape)}")
        numel *= dim
    itemsize = torch.empty((), dtype=dtype).element_size()
    if len(data) != numel * itemsize:
        raise TensorDecodeError(
            f"{len(data)} bytes do not fit shape {list(shape)} of {dtype_name(dtype)} ({numel * itemsize} expected)"
        )
    if numel == 0:
        return torch.empty(tuple(shape), dtype=dtype)
    buffer = data if isinstance(data, bytearray) else bytearray(data)
    return torch.frombuffer(buffer, dtype=torch.uint8).view(dtype).reshape(tuple(shape))


def to_proto(tensor: torch.Tensor) -> common_pb2.Tensor:
    return common_pb2.Tensor(dtype=dtype_name(tensor.dtype), shape=list(tensor.shape), data=tensor_bytes(tensor))


def from_proto(message: common_pb2.Tensor) -> torch.Tensor:
    return bytes_to_tensor(message.data, parse_dtype(message.dtype), list(message.shape))
