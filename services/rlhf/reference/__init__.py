"""pi_SFT: the ReferencePolicy service (per-token log-probs of given ids) and its clients.

from rlhf.reference import ReferenceClient, LocalReference
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rlhf.core.lazy import lazy_exports

if TYPE_CHECKING:
    from rlhf.reference.client import ReferenceClient
    from rlhf.reference.local import LocalReference

__all__ = ["LocalReference", "ReferenceClient"]
__getattr__ = lazy_exports(
    __name__, {"ReferenceClient": "rlhf.reference.client", "LocalReference": "rlhf.reference.local"}
)
