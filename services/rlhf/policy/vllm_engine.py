"""The vLLM engine behind rlhf.v1.PolicyInference (`rlhf serve policy --engine vllm`).

The contract is the transformers engine's (rlhf.policy.model.PolicyModel), and so is everything but the
sampling: a copy of the model in host memory checks requests and weight streams, holds the tokenizer, merges
LoRA pushes into the base weights (rlhf.policy.adapter) and describes the model. vLLM samples:
- one vLLM request per row, seeded from (request seed, row) like the transformers engine's generators, so
  a prompt's n samples differ and a seed reproduces them (not token for token the transformers engine's:
  the two draw differently; greedy decoding agrees);
- `logprobs=0` in vLLM's default `raw_logprobs` mode: the sampled token's log-prob under the unmodified
  distribution, before temperature, top-k and top-p, as Sample.logprobs promises;
- the engine runs in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0), so a weight update is one
  `collective_rpc("reload_weights")` between batches with the WHOLE host state dict: a partial reload
  leaves tied weights (GPT-2's lm_head) stale.
The host copy costs the model's size in RAM again: the price of checking and merging where vLLM cannot.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import torch

from rlhf.core.errors import UserError
from rlhf.core.modeling import describe_model
from rlhf.core.tensors import dtype_name
from rlhf.policy.config import VllmSettings
from rlhf.policy.model import PolicyModel, Row, RowResult
from rlhf.policy.sampling import row_seed
from rlhf.v1 import common_pb2

FINISH_REASONS = {"stop": "eos", "length": "length"}  # vLLM's -> Sample.finish_reason


def set_engine_environment() -> None:
    """What vLLM reads at import: the engine in this process (weights reload in place); on a CPU, every core
    for compute (its default binding reserves one and, on a small machine, runs ~15x slower)."""
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
    os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")


def import_vllm():
    set_engine_environment()
    try:
        import vllm
    except ImportError as err:
        raise UserError(
            f"--engine vllm needs vLLM in this environment ({err}): pip install 'rlhf[vllm]' on a GPU machine; "
            "without a GPU see docs/policy.md#the-vllm-engine"
        ) from None
    return vllm


class VllmPolicyModel(PolicyModel):
    """PolicyModel whose rows are sampled by a vLLM engine; the host copy is the source of its weights."""

    def __init__(self, path: str | os.PathLike, dtype: str, settings: VllmSettings):
        super().__init__(path, "cpu", dtype)
        vllm = import_vllm()
        if settings.max_model_len > self.max_context:
            raise UserError(
                f"--vllm-max-model-len {settings.max_model_len} is beyond the model's context {self.max_context}"
            )
        self.max_context = settings.max_model_len or self.max_context
        self.llm = vllm.LLM(
            model=self.path,
            dtype=dtype_name(self.model.dtype),
            max_model_len=self.max_context,
            kv_cache_memory_bytes=int(settings.kv_cache_gb * 2**30),
            enforce_eager=settings.enforce_eager,
            generation_config="vllm",  # the request's settings only, never the model dir's sampling defaults
            enable_prefix_caching=False,  # a cached prefix would outlive a weight update
        )
        self._vllm = vllm
        self.reload_engine()  # the host copy's weights: vLLM's own loading may differ (e.g. tied heads)

    @staticmethod
    def batch_key(row: Row) -> None:
        """Any rows share a batch: each is its own vLLM request with its own settings."""
        return None

    def generate_rows(self, rows: Sequence[Row]) -> list[RowResult]:
        """One vLLM batch; rows may have different settings (each is its own vLLM request)."""
        prompts = [self._vllm.inputs.TokensPrompt(prompt_token_ids=r.prompt_ids) for r in rows]
        outputs = self.llm.generate(prompts, [self.sampling_params(r) for r in rows], use_tqdm=False)
        results = []
        for out in outputs:
            (completion,) = out.outputs
            ids = list(completion.token_ids)
            logprobs = [step[token].logprob for step, token in zip(completion.logprobs, ids, strict=True)]
            text = self.tokenizer.decode(ids, skip_special_tokens=True)
            results.append(RowResult(ids, logprobs, FINISH_REASONS[completion.finish_reason], text, self.version))
        return results

    def sampling_params(self, row: Row):
        s = row.settings
        return self._vllm.SamplingParams(
            n=1,
            max_tokens=s.max_new_tokens,
            min_tokens=s.min_new_tokens,
            temperature=s.temperature,
            top_p=s.top_p,
            top_k=s.top_k,
            ignore_eos=not s.stop_at_eos,
            # EOS and end-of-turn ids (rlhf.core.chat.stop_token_ids), as the hf engine stops; kept as the last token
            stop_token_ids=list(self.stop_ids) if s.stop_at_eos else [],
            seed=None if row.seed is None else row_seed(row.seed, row.index),
            logprobs=0,  # the sampled token's only, raw (logprobs_mode's default)
            detokenize=False,  # the host tokenizer decodes, as the transformers engine does
        )

    def apply_weights(self, state_dict: Mapping[str, torch.Tensor], version: int) -> None:
        """Checked tensors (or merged LoRA factors) into the host copy, then the whole copy into vLLM."""
        super().apply_weights(state_dict, version)
        self.reload_engine()

    def reload_engine(self) -> None:
        weights = iter(list(self.model.state_dict().items()))
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights})

    @property
    def device(self) -> str:
        return self._vllm.platforms.current_platform.device_type

    def info(self, **fields) -> common_pb2.ModelInfo:
        info = describe_model(self.model, self.tokenizer, self.path, weights_version=self.version, **fields)
        info.device = self.device
        info.max_context = self.max_context
        return info
