"""pi_SFT: the ReferencePolicy service (per-token log-probs of given ids) and its clients.

    from rlhf.reference import ReferenceClient, LocalReference
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rlhf.reference.client import ReferenceClient
    from rlhf.reference.local import LocalReference

__all__ = ["LocalReference", "ReferenceClient"]


def __getattr__(name: str):
    # Imported on first use, so `rlhf --help` (which imports rlhf.reference.cli) stays free of torch.
    if name == "ReferenceClient":
        from rlhf.reference.client import ReferenceClient

        return ReferenceClient
    if name == "LocalReference":
        from rlhf.reference.local import LocalReference

        return LocalReference
    raise AttributeError(name)
