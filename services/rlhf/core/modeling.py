"""Loading models and tokenizers, picking devices, and fingerprinting tokenizers."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import torch

from rlhf.core.errors import UserError

log = logging.getLogger("rlhf.modeling")

DTYPE_CHOICES = ("auto", "float32", "bfloat16", "float16")


def resolve_device(name: str = "auto") -> torch.device:
    """ "auto" picks CUDA when present, then MPS, then CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise UserError(f"unknown device {name!r}") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {name} requested but CUDA is not available")
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """ "auto" is bfloat16 on GPUs that support it, float32 elsewhere."""
    if name == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if name not in DTYPE_CHOICES:
        raise UserError(f"unknown dtype {name!r}; choose from {', '.join(DTYPE_CHOICES)}")
    return getattr(torch, name)


ADAPTER_CONFIG = "adapter_config.json"
# Beside an adapter: model-config fields it carries (e.g. a reward model's reward_offset), set at load.
CONFIG_OVERRIDES = "rlhf_config_overrides.json"


def check_model_path(path: str | os.PathLike) -> str:
    """A local dir must hold a config.json (or a PEFT adapter's adapter_config.json); anything else is taken
    as a Hub name (offline: cached only)."""
    text = str(path)
    local = Path(text)
    if local.exists():
        if not (local / "config.json").is_file() and not (local / ADAPTER_CONFIG).is_file():
            raise UserError(f"{text} is not a model directory (no config.json or {ADAPTER_CONFIG})")
        return text
    if text.startswith((".", "/")) or text.count("/") > 1:
        raise UserError(f"model directory {text} does not exist")
    return text


def load_tokenizer(path: str | os.PathLike):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(check_model_path(path))
    except OSError as err:
        raise UserError(f"cannot load tokenizer from {path}: {str(err).splitlines()[0]}") from err
    if tokenizer.pad_token is None:
        # Common for causal LMs; padding positions are always masked, so EOS is a safe stand-in.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def adapter_base(path: str | os.PathLike) -> str | None:
    """The base model a PEFT adapter dir names (adapter_config.json), or None for a full model dir."""
    config = Path(path) / ADAPTER_CONFIG
    if (Path(path) / "config.json").is_file() or not config.is_file():
        return None
    base = json.loads(config.read_text()).get("base_model_name_or_path")
    if not base:
        raise UserError(f"{config} names no base model (base_model_name_or_path)")
    return base


def merge_adapter(model, path: str | os.PathLike):
    """`model` (the base) with the PEFT adapter in `path` merged into its weights: a plain model again."""
    import warnings

    from peft import PeftConfig, PeftModel

    try:
        config = PeftConfig.from_pretrained(str(path))
        if config.task_type == "CAUSAL_LM" and not hasattr(model, "prepare_inputs_for_generation"):
            config.task_type = None  # a causal LM's adapter (LoRA SFT) merged into a classifier on its backbone
        with warnings.catch_warnings():  # peft asks transformers a deprecated question; not ours to answer
            warnings.filterwarnings("ignore", category=FutureWarning, message=".*gradient_checkpointing")
            merged = PeftModel.from_pretrained(model, str(path), config=config).merge_and_unload()
        overrides = Path(path) / CONFIG_OVERRIDES
        for key, value in (json.loads(overrides.read_text()) if overrides.is_file() else {}).items():
            setattr(merged.config, key, value)
        return merged
    except (OSError, ValueError, RuntimeError) as err:
        raise UserError(f"cannot apply the adapter in {path}: {str(err).splitlines()[0]}") from err


def load_causal_lm(path: str | os.PathLike, device: torch.device, dtype: torch.dtype):
    """A causal LM from a model dir, or from a PEFT adapter dir: its base, with the adapter merged in."""
    from transformers import AutoModelForCausalLM

    base = adapter_base(check_model_path(path))
    if base:  # the base may be an adapter dir itself (LoRA SFT, then LoRA PPO on it): merged first, recursively
        return merge_adapter(load_causal_lm(base, torch.device("cpu"), dtype), path).to(device).eval()
    try:
        model = AutoModelForCausalLM.from_pretrained(check_model_path(path), dtype=dtype)
    except OSError as err:
        raise UserError(f"cannot load model from {path}: {str(err).splitlines()[0]}") from err
    return model.to(device).eval()


def load_score_model(path: str | os.PathLike, device: torch.device, dtype: torch.dtype, what: str = "reward model"):
    """AutoModelForSequenceClassification with one label: a reward model or a critic.

    From a causal-LM dir the score head is new and starts from random weights, as intended; that is
    said once, in one log line, instead of transformers' load report and its advice to train."""
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    base = adapter_base(check_model_path(path))
    if base:  # the adapter brings its trained score head (peft's modules_to_save); its base may be an adapter too
        return merge_adapter(load_score_model(base, torch.device("cpu"), dtype, what), path).to(device)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        model, info = AutoModelForSequenceClassification.from_pretrained(
            check_model_path(path), num_labels=1, dtype=dtype, output_loading_info=True
        )
    except (OSError, ValueError) as err:
        raise UserError(f"cannot load {what} from {path}: {str(err).splitlines()[0]}") from err
    finally:
        hf_logging.set_verbosity(verbosity)
    missing = list(info.get("missing_keys", []))
    head = [k for k in missing if k.split(".")[0] in ("score", "classifier")]
    if head:
        log.info(
            f"{what}: {path} has no score head yet, so it starts from random weights",
            extra={"path": str(path), "new": head},
        )
    if other := [k for k in missing if k not in head]:
        log.warning(f"{what}: weights missing from {path}, left as initialised", extra={"missing": other})
    if unused := list(info.get("unexpected_keys", [])) + [str(k) for k in info.get("mismatched_keys", [])]:
        log.warning(f"{what}: weights in {path} that the model does not use", extra={"unused": unused})
    return model.to(device)


def load_causal_lm_and_tokenizer(path: str | os.PathLike, device: str = "auto", dtype: str = "float32"):
    """(tokenizer, model in eval mode) for serving, from device and dtype names ("auto" allowed)."""
    torch_device = resolve_device(device)
    return load_tokenizer(path), load_causal_lm(path, torch_device, resolve_dtype(dtype, torch_device))


def tokenizer_fingerprint(tokenizer) -> str:
    """sha256 over the vocabulary and special tokens: equal fingerprints mean equal token ids."""
    payload = {
        "vocab": sorted(tokenizer.get_vocab().items()),
        "special": {k: str(v) for k, v in sorted(tokenizer.special_tokens_map.items())},
        "special_ids": sorted(tokenizer.all_special_ids),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def model_dir_version(path: str | os.PathLike) -> str:
    """A short content tag for a model dir: config plus weight file names and sizes."""
    local = Path(path)
    digest = hashlib.sha256(str(path).encode())
    if local.is_dir():
        for file in sorted(local.iterdir()):
            if file.name == "config.json":
                digest.update(file.read_bytes())
            elif file.suffix in (".safetensors", ".bin"):
                digest.update(f"{file.name}:{file.stat().st_size}:{file.stat().st_mtime_ns}".encode())
    return digest.hexdigest()[:12]


def context_length(config) -> int:
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return 2048


def parameter_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def describe_model(model: torch.nn.Module, tokenizer, path: str | os.PathLike, **fields):
    """An rlhf.v1.ModelInfo for a loaded model; `fields` fills the service-specific rest
    (weights_version, max_batch_size, max_items_per_request)."""
    from rlhf.v1 import common_pb2

    parameter = next(model.parameters())
    return common_pb2.ModelInfo(
        model_name=Path(path).name or str(path),
        parameter_count=parameter_count(model),
        dtype=str(parameter.dtype).removeprefix("torch."),
        device=str(parameter.device),
        tokenizer_fingerprint=tokenizer_fingerprint(tokenizer),
        max_context=context_length(model.config),
        model_version=model_dir_version(path),
        vocab_size=model.get_input_embeddings().num_embeddings,
        **fields,
    )


def save_model_dir(model: torch.nn.Module, tokenizer, out: str | os.PathLike) -> Path:
    """Write model + tokenizer as a standard Hugging Face dir, atomically: to `out.tmp`, then swapped in
    (rlhf.core.files.replace_dir), so `out` holds the old dir or the new one at every moment."""
    import shutil

    from rlhf.core.files import replace_dir

    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    return replace_dir(tmp, out)
