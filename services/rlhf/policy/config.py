"""`rlhf serve policy` settings; its flags and --help are generated from the field docstrings (rlhf.core.flags).
Kept apart from rlhf.policy.service so that building the CLI imports no torch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from rlhf.core.client import ClientTLS
from rlhf.core.flags import setting

DEFAULT_PORT = 50052  # rlhf serve policy


@dataclass
class VllmSettings:
    """The vLLM engine's own settings (`--engine vllm`; docs/policy.md#the-vllm-engine)."""

    kv_cache_gb: float = 2.0
    """GiB of KV cache (per GPU; host memory on a CPU); vLLM's own sizing would take 0.9 of all memory"""
    max_model_len: int = 0
    """longest prompt + response the engine plans for (0: the model's context)"""
    enforce_eager: bool = False
    """no CUDA graphs or compilation: starts in seconds, samples slower"""


@dataclass
class PolicyServiceConfig:
    """`rlhf serve policy` (the server flags themselves come from rlhf.core.server.ServerOptions)."""

    model: str
    """causal LM dir to serve (usually the SFT model)"""
    device: str = "auto"
    """auto, cpu, cuda, mps"""
    dtype: str = "float32"
    """auto, float32, bfloat16 or float16 (float32 keeps log-probs comparable with the reference's and the
    learner's, and is what the learner sends)"""
    max_batch_size: int = 32
    """most samples decoded together"""
    # Generation batches take 0.1-1 s, so a 50 ms window costs a lone client little, while a shorter one
    # let clients that were slow to send their next request split into two half-full batches for good.
    max_wait_ms: float = 50.0
    """longest a request waits for its batch to fill"""
    max_items_per_request: int = 1024
    """most prompts x n in one request"""
    max_queue: int = 16384
    """admission control: most rows (prompts x n) waiting for a batch; a request that would pass it is answered
    RESOURCE_EXHAUSTED at once (clients back off and retry)"""
    learner: str | None = None
    """learner HOST:PORT: pull its current weights at start (replicas added mid-run)"""
    learner_auth_token_file: str | None = None
    """bearer token for the learner, if it wants one"""
    learner_tls: ClientTLS = setting(factory=ClientTLS, prefix="learner_")
    """TLS towards the learner: --learner-tls-ca, --learner-tls-cert, --learner-tls-key"""
    learner_timeout: float = 300.0
    """seconds the whole start-up pull from --learner may take; a stall (no chunk for --weights-stream-timeout)
    ends it sooner"""
    weights_stream_timeout: float = 60.0
    """seconds a weight stream may go without a chunk before it is cut, the served weights untouched: an
    UpdateWeights push (DEADLINE_EXCEEDED) or the start-up GetWeights pull"""
    chat_template: str = ""
    """Jinja chat template file for conversational prompts, in place of the model tokenizer's own"""
    engine: Literal["hf", "vllm"] = "hf"
    """what samples: hf (transformers and this service's own KV-cache loop) or vllm (vLLM's engine in this
    process, from its own environment: pip install 'rlhf[vllm]')"""
    vllm: VllmSettings = setting(factory=VllmSettings, prefix="vllm_")
    """--engine vllm: --vllm-kv-cache-gb, --vllm-max-model-len, --vllm-enforce-eager"""
