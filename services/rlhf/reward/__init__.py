"""The reward model served: the RewardScoring service and its clients (training is in rlhf.training; r_theta itself,
shared by both, in rlhf.core.reward_model).

service.py    the gRPC servicer over a dynamic batcher
client.py     RewardClient (gRPC);  local.py  LocalReward (in-process), same interface
cli.py        `rlhf train rm`, `rlhf serve reward`, `rlhf score`

from rlhf.reward import RewardClient, LocalReward
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rlhf.core.lazy import lazy_exports

if TYPE_CHECKING:
    from rlhf.reward.client import RewardClient
    from rlhf.reward.local import LocalReward

__all__ = ["LocalReward", "RewardClient"]
__getattr__ = lazy_exports(__name__, {"RewardClient": "rlhf.reward.client", "LocalReward": "rlhf.reward.local"})
