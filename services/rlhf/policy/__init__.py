"""pi_RL: supervised fine-tuning (`sft`), the PolicyInference service, and its clients.

    from rlhf.policy import PolicyClient, LocalPolicy
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rlhf.policy.client import PolicyClient
    from rlhf.policy.local import LocalPolicy

__all__ = ["LocalPolicy", "PolicyClient"]


def __getattr__(name: str):
    # Imported on first use, so `rlhf --help` (which imports rlhf.policy.cli) stays free of torch.
    if name == "PolicyClient":
        from rlhf.policy.client import PolicyClient

        return PolicyClient
    if name == "LocalPolicy":
        from rlhf.policy.local import LocalPolicy

        return LocalPolicy
    raise AttributeError(name)
