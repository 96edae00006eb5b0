"""Tensor wire message and the weight-stream codec."""

import grpc
import pytest
import torch

from rlhf.core.tensors import TensorDecodeError, bytes_to_tensor, from_proto, to_proto
from rlhf.core.weights import WeightStreamAssembler, WeightStreamError, assemble, specs_of, weight_chunks


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.int64, torch.bool])
def test_tensor_roundtrip_is_bit_exact(dtype):
    t = (torch.randn(3, 5) * 10).to(dtype)
    back = from_proto(to_proto(t))
    assert back.dtype == dtype and back.shape == t.shape
    assert torch.equal(back, t)


def test_tensor_bytes_are_little_endian_raw():
    msg = to_proto(torch.tensor([1, 256], dtype=torch.int32))
    assert msg.data == b"\x01\x00\x00\x00\x00\x01\x00\x00"
    assert list(msg.shape) == [2] and msg.dtype == "int32"


def test_tensor_size_mismatch_is_rejected():
    with pytest.raises(TensorDecodeError, match="do not fit shape"):
        bytes_to_tensor(b"\x00" * 7, torch.float32, [2])


def _state():
    torch.manual_seed(0)
    return {"a.weight": torch.randn(64, 33), "a.bias": torch.randn(33), "empty": torch.zeros(0), "n": torch.arange(5)}


def test_weight_stream_roundtrip_with_small_chunks():
    state = _state()
    chunks = list(weight_chunks(state, version=7, chunk_bytes=100))
    assert all(len(c.data) <= 100 for c in chunks)
    assert chunks[-1].commit and chunks[-1].num_tensors == 4
    version, back = assemble(chunks, specs_of(state))
    assert version == 7
    assert set(back) == set(state) and all(torch.equal(back[k], state[k]) for k in state)


def test_truncated_stream_is_rejected():
    chunks = list(weight_chunks(_state(), version=1, chunk_bytes=100))[:-3]
    with pytest.raises(WeightStreamError, match="truncated") as info:
        assemble(chunks)
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_corrupt_chunk_is_data_loss():
    chunks = list(weight_chunks(_state(), version=1, chunk_bytes=100))
    chunks[2].data = bytes([chunks[2].data[0] ^ 1]) + chunks[2].data[1:]
    with pytest.raises(WeightStreamError, match="CRC") as info:
        assemble(chunks)
    assert info.value.code == grpc.StatusCode.DATA_LOSS


@pytest.mark.parametrize(
    ("expected_change", "message"),
    [
        ({"a.weight": (torch.float32, (33, 64))}, "shape"),
        ({"a.weight": (torch.bfloat16, (64, 33))}, "dtype"),
    ],
)
def test_mismatched_spec_is_rejected(expected_change, message):
    state = _state()
    expected = {**specs_of(state), **expected_change}
    with pytest.raises(WeightStreamError, match=message):
        assemble(weight_chunks(state, version=1), expected)


def test_unknown_name_is_rejected():
    state = _state()
    expected = specs_of(state)
    del expected["n"]
    assembler = WeightStreamAssembler(expected)
    with pytest.raises(WeightStreamError, match="unknown tensor name 'n'"):
        for chunk in weight_chunks(state, version=1):
            assembler.add(chunk)
