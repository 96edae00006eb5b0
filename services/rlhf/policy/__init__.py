"""pi_RL served: the PolicyInference service and its clients (SFT and DPO training are in rlhf.training).

from rlhf.policy import PolicyClient, LocalPolicy
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rlhf.core.lazy import lazy_exports

if TYPE_CHECKING:
    from rlhf.policy.client import PolicyClient
    from rlhf.policy.local import LocalPolicy

__all__ = ["LocalPolicy", "PolicyClient"]
__getattr__ = lazy_exports(__name__, {"PolicyClient": "rlhf.policy.client", "LocalPolicy": "rlhf.policy.local"})
