"""The round engine of each protection mode: adding a mode adds one engine module and one line."""

from __future__ import annotations

from coordinator.service.context import ServiceContext
from coordinator.service.engines.base import RoundEngine
from coordinator.service.engines.none_engine import PlainRoundEngine
from coordinator.service.engines.paillier_engine import PaillierRoundEngine
from coordinator.service.engines.secagg_engine import SecAggRoundEngine
from coordinator.service.round_ledger import RoundLedger
from fedsilo.protection import Protection

__all__ = ["ENGINES", "RoundEngines"]

ENGINES: dict[Protection, type[RoundEngine]] = {
    Protection.NONE: PlainRoundEngine,
    Protection.SECAGG: SecAggRoundEngine,
    Protection.PAILLIER: PaillierRoundEngine,
}
"""Every protection mode and how to build its engine."""


class RoundEngines:
    """One engine per protection mode, built once per coordinator process."""

    def __init__(self, ctx: ServiceContext, ledger: RoundLedger) -> None:
        self._engines = {mode: build(ctx, ledger) for mode, build in ENGINES.items()}

    def __getitem__(self, protection: Protection) -> RoundEngine:
        return self._engines[protection]
