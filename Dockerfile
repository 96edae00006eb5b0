# syntax=docker/dockerfile:1
# One image runs every part of rlhf: `rlhf serve reward|policy|reference`, `rlhf train sft|rm|ppo`.
#
#   docker build -t rlhf:dev .                                  # CPU (default): torch's CPU wheel
#   docker build -t rlhf:cuda --build-arg VARIANT=cuda .        # CUDA: torch's CUDA wheel, CUDA libs inside
#   docker build -t rlhf-vllm:cuda --build-arg VARIANT=cuda --build-arg ENGINE=vllm .   # + vLLM, for the policy
#   docker run --rm rlhf:dev serve reward --model /models/rm --port 50051
#
# The CUDA variant needs only the NVIDIA driver on the node (the wheel brings the CUDA runtime),
# so both variants share one slim base. Pick another CUDA build with
# --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126 (for instance).

# Pinned: an exact patch release on an exact Debian release. Pin by digest in your own
# registry's copy for bit-for-bit rebuilds (python:3.11.14-slim-bookworm@sha256:...).
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ARG VARIANT=cpu
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=""
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/rlhf
ENV PATH=/opt/rlhf/bin:$PATH
# torch first and alone: it is the big layer, and the project's own changes don't rebuild it.
RUN set -eu; \
    case "$VARIANT" in \
      cpu)  index="${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}" ;; \
      cuda) index="${TORCH_INDEX_URL:-https://pypi.org/simple}" ;; \
      *)    echo "VARIANT must be cpu or cuda, not '$VARIANT'" >&2; exit 1 ;; \
    esac; \
    pip install --index-url "$index" "torch==${TORCH_VERSION}"; \
    python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
WORKDIR /src
# README.md* : the README is optional here (it only feeds the package metadata).
COPY pyproject.toml README.md* ./
COPY services ./services
# torch is already there and satisfies the pin, so pip keeps the variant installed above.
RUN pip install . && pip check
# ENGINE=vllm adds vLLM for `rlhf serve policy --engine vllm` (k8s/components/vllm runs the policy on it). CUDA
# only: vLLM's PyPI wheels are CUDA builds. vLLM pins its own torch and transformers, so this image is the policy
# pod's, built apart from the one the other pods run.
ARG ENGINE=hf
RUN set -eu; \
    case "$ENGINE" in \
      hf)   ;; \
      vllm) [ "$VARIANT" = cuda ] || { echo "ENGINE=vllm needs VARIANT=cuda" >&2; exit 1; }; \
            pip install ".[vllm]" && pip check && python -c "import vllm; print('vllm', vllm.__version__)" ;; \
      *)    echo "ENGINE must be hf or vllm, not '$ENGINE'" >&2; exit 1 ;; \
    esac

FROM ${PYTHON_IMAGE} AS runtime
ARG VARIANT=cpu
ARG ENGINE=hf
LABEL org.opencontainers.image.title="rlhf" \
      org.opencontainers.image.description="RLHF (SFT, reward model, PPO) as gRPC services" \
      io.rlhf.variant="${VARIANT}" \
      io.rlhf.engine="${ENGINE}"
# tini is PID 1: it forwards SIGTERM to rlhf (servers drain, the learner checkpoints) and reaps.
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 rlhf \
    && useradd --system --uid 10001 --gid rlhf --home-dir /home/rlhf --create-home --shell /usr/sbin/nologin rlhf
COPY --from=build /opt/rlhf /opt/rlhf
# Models come from mounted volumes, never from the network: offline unless a run opts in.
# Caches go to /tmp, which is writable even with a read-only root filesystem (an emptyDir in k8s).
ENV PATH=/opt/rlhf/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    HF_HOME=/tmp/huggingface \
    MPLCONFIGDIR=/tmp/matplotlib \
    TRITON_CACHE_DIR=/tmp/triton \
    TOKENIZERS_PARALLELISM=false \
    RLHF_LOG_FORMAT=json
USER 10001:10001
WORKDIR /home/rlhf
EXPOSE 50051 50052 50053 50054 9090
ENTRYPOINT ["tini", "--", "rlhf"]
CMD ["--help"]
