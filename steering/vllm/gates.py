"""Per-request gate state of probe-gated steering (worker side, updated once per step)."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from steering.spec import ResolvedGate


@dataclass
class GateState:
    spec: ResolvedGate
    open: bool = False
    hold_left: int = 0
    scores: deque[float] = field(default_factory=deque)

    def __post_init__(self) -> None:
        self.open = self.spec.initial == "open"
        self.scores = deque(maxlen=self.spec.window)

    def update(self, score: float) -> None:
        """Fold in the probe score of the newest sampled token; decides the next step."""
        self.scores.append(score)
        if self.spec.fires(sum(self.scores) / len(self.scores)):
            self.open, self.hold_left = True, self.spec.hold
        elif self.hold_left > 0:
            self.hold_left -= 1
        else:
            self.open = False
