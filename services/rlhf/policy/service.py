"""rlhf.v1.PolicyInference: Generate with dynamic batching, UpdateWeights, GetModelInfo.

    rlhf serve policy --model models/sft --port 50052 [--learner localhost:50054]

Rows from concurrent Generate calls share model batches when their sampling settings match.
UpdateWeights checks the whole stream against the model before it swaps anything in, and the
swap runs on the batcher's model thread between batches, so no Generate mixes two versions.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import functools
import logging
import sys
import threading
from collections.abc import AsyncIterator

import grpc
from prometheus_client import Counter

from rlhf.core.chat import use_chat_template
from rlhf.core.checks import InvalidRequest
from rlhf.core.client import BaseClient, ClientOptions
from rlhf.core.errors import UserError
from rlhf.core.servicer import ModelServicer
from rlhf.core.tensors import dtype_name
from rlhf.core.weights import WeightStreamAssembler, WeightStreamError
from rlhf.policy.config import PolicyServiceConfig
from rlhf.policy.convert import params_from_proto, prompts_from_proto, sample_to_proto
from rlhf.policy.model import PolicyModel, Row, RowResult
from rlhf.v1 import common_pb2, learner_pb2, learner_pb2_grpc, policy_pb2, policy_pb2_grpc

log = logging.getLogger("rlhf.policy")

GENERATED_TOKENS = Counter("rlhf_generated_tokens", "Response tokens sampled by the policy service")


def load_engine(c: PolicyServiceConfig) -> PolicyModel:
    """The served model behind the chosen engine (both answer PolicyModel's interface)."""
    if c.engine == "vllm":
        from rlhf.policy.vllm_engine import VllmPolicyModel

        return VllmPolicyModel(c.model, c.dtype, c.vllm)
    return PolicyModel(c.model, c.device, c.dtype)


def keep_freed_memory() -> None:
    """glibc: keep freed heap memory in the process rather than hand it back to the kernel.

    Every received weight chunk is a fresh 4 MiB allocation. By default glibc returns such blocks
    to the kernel when they are freed, so the next chunk page-faults all its pages again; that
    halved UpdateWeights throughput. The cost: the process keeps its peak heap size.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (e.g. musl): nothing to tune
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    libc.mallopt(m_mmap_threshold, 32 * 1024 * 1024)  # blocks up to 32 MiB come from the heap...
    libc.mallopt(m_trim_threshold, 2**31 - 1)  # ...which is never trimmed


def pull_weights(target: str, policy: PolicyModel, options: ClientOptions, stall_timeout: float) -> tuple[int, dict]:
    """(version, state dict) from the learner's GetWeights stream, checked against the model. A stream that
    goes `stall_timeout` seconds without a chunk is cancelled (grpc.RpcError CANCELLED), as is one that
    outlasts options.timeout (DEADLINE_EXCEEDED)."""
    with BaseClient(target, options) as learner:
        stream = learner_pb2_grpc.LearnerStub(learner.channel).GetWeights(
            learner_pb2.GetWeightsRequest(dtype=dtype_name(policy.model.dtype)), **learner.call_kwargs()
        )
        assembler = WeightStreamAssembler(policy.specs, adapter_check=policy.adapter.spec_error)
        with cancelled_when_stalled(stream, stall_timeout) as progress:
            for chunk in stream:
                progress.set()
                assembler.add(chunk)
        version, tensors = assembler.finish()
        try:
            policy.check_weights(tensors)
        except InvalidRequest as err:
            raise WeightStreamError(grpc.StatusCode.INVALID_ARGUMENT, str(err)) from None
        return version, tensors


@contextlib.contextmanager
def cancelled_when_stalled(call: grpc.Future, timeout: float):
    """Yields an Event to set on each chunk; a watchdog thread cancels `call` once none comes for `timeout`s."""
    progress, done = threading.Event(), threading.Event()

    def watch() -> None:
        while not done.is_set():
            if not progress.wait(timeout):
                if not done.is_set():
                    log.warning("the weight pull stalled; cancelling it", extra={"stall_s": timeout})
                    call.cancel()
                return
            progress.clear()

    watchdog = threading.Thread(target=watch, name="weights-pull-watchdog", daemon=True)
    watchdog.start()
    try:
        yield progress
    finally:
        done.set()
        progress.set()
        watchdog.join()


async def until_stalled(chunks, timeout: float):
    """The stream's chunks; WeightStreamError (DEADLINE_EXCEEDED) once none arrives for `timeout` seconds, so a
    sender that hangs cannot hold the receive lock (and a half-filled receive area) forever."""
    iterator = aiter(chunks)
    while True:
        try:
            async with asyncio.timeout(timeout):  # no task per chunk, unlike wait_for
                chunk = await anext(iterator)
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise WeightStreamError(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"the weight stream stalled: no chunk for {timeout:g}s (--weights-stream-timeout); nothing was applied",
            ) from None
        yield chunk


class PolicyService(
    ModelServicer[PolicyServiceConfig, PolicyModel, Row, RowResult], policy_pb2_grpc.PolicyInferenceServicer
):
    name = "policy"
    service_names = ("rlhf.v1.PolicyInference",)

    def __init__(self, config: PolicyServiceConfig):
        super().__init__(config)
        # One weight stream at a time lands in a receive area kept between pushes: fresh memory
        # for every push would cost a page fault per 4 KiB, which dominated the transfer.
        self._receive_area: dict[str, bytearray] = {}
        self._receiving = asyncio.Lock()

    @property
    def policy(self) -> PolicyModel | None:
        """The served model (None while it loads)."""
        return self.model

    # -- bootstrap hooks ------------------------------------------------------------------------

    def add_to_server(self, server: grpc.aio.Server) -> None:
        policy_pb2_grpc.add_PolicyInferenceServicer_to_server(self, server)

    async def load(self) -> None:
        c = self.config
        policy = await asyncio.to_thread(load_engine, c)
        use_chat_template(policy.tokenizer, c.chat_template)
        if c.learner:
            await self._pull_from_learner(policy)
        self.serve_batched(
            policy, policy.generate_rows, length_of=lambda row: len(row.prompt_ids), group_of=policy.batch_key
        )
        log.info(
            "policy loaded",
            extra={"model": c.model, "engine": c.engine, "weights_version": policy.version, "device": policy.device},
        )

    async def _pull_from_learner(self, policy: PolicyModel) -> None:
        """A replica that starts mid-run takes the learner's current weights before it serves.

        An unreachable learner is not fatal: the replica serves the model dir as version 0, and
        the learner pushes its weights when it (re)starts or sees the stale version.
        """
        c = self.config
        options = ClientOptions(
            timeout=c.learner_timeout,
            auth_token_file=c.learner_auth_token_file,
            **dataclasses.asdict(c.learner_tls),
        )
        try:
            version, tensors = await asyncio.to_thread(
                pull_weights, c.learner, policy, options, c.weights_stream_timeout
            )
        except grpc.RpcError as err:
            log.warning(
                "could not pull weights from the learner; serving the model dir as version 0",
                extra={"learner": c.learner, "code": err.code().name, "details": err.details()},
            )
            return
        except WeightStreamError as err:
            raise UserError(f"the learner at {c.learner} sent weights that do not fit {c.model}: {err}") from err
        policy.apply_weights(tensors, version)
        log.info("pulled weights from the learner", extra={"learner": c.learner, "weights_version": version})

    # -- RPCs -----------------------------------------------------------------------------------

    async def Generate(
        self, request: policy_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> policy_pb2.GenerateResponse:
        policy = await self.loaded(context)
        params = params_from_proto(request.params)
        rows = await self.checked(
            context,
            lambda: policy.rows(
                prompts_from_proto(request.prompts, policy.tokenizer), params, self.config.max_items_per_request
            ),
        )
        results = await self.batched(context, rows)
        GENERATED_TOKENS.inc(sum(len(r.token_ids) for r in results))
        samples = policy.samples(rows, results)
        return policy_pb2.GenerateResponse(samples=[sample_to_proto(s) for s in samples])

    async def UpdateWeights(
        self, request_iterator: AsyncIterator[common_pb2.WeightChunk], context: grpc.aio.ServicerContext
    ) -> policy_pb2.UpdateWeightsResponse:
        policy = await self.loaded(context)
        async with self._receiving:
            assembler = WeightStreamAssembler(policy.specs, self._receive_area, policy.adapter.spec_error)
            try:
                async for chunk in until_stalled(request_iterator, self.config.weights_stream_timeout):
                    assembler.add(chunk)
                version, tensors = assembler.finish()
                try:  # the stream as a whole: for LoRA, both factors of every module, the replica's layout
                    policy.check_weights(tensors)
                except InvalidRequest as err:
                    raise WeightStreamError(grpc.StatusCode.INVALID_ARGUMENT, str(err)) from None
            except WeightStreamError as err:
                log.warning("weight stream refused", extra={"code": err.code.name, "reason": str(err)})
                await context.abort(err.code, str(err))
            await self.batcher.run_exclusive(functools.partial(policy.apply_weights, tensors, version))
        log.info(
            "weights updated",
            extra={"weights_version": version, "tensors": len(tensors), "bytes": assembler.bytes_received},
        )
        return policy_pb2.UpdateWeightsResponse(
            weights_version=version, tensors_updated=len(tensors), bytes_received=assembler.bytes_received
        )

    def describe(self, model: PolicyModel) -> common_pb2.ModelInfo:
        return model.info()
