"""The reward model: training (`rlhf train rm`), the RewardScoring service, and its clients.

    data.py       preference rows -> per-prompt rankings -> batches of whole prompts
    loss.py       the K-wise ranking loss
    model.py      r_theta(x, y): loading, encoding, the forward every path shares
    normalize.py  folding the mean reward into a bias
    train.py      the training loop
    service.py    the gRPC servicer over a dynamic batcher
    client.py     RewardClient (gRPC);  local.py  LocalReward (in-process), same interface
    cli.py        `rlhf train rm`, `rlhf serve reward`, `rlhf score`
"""

from rlhf.reward.client import RewardClient

__all__ = ["RewardClient"]
