"""What every destination kind implements: deliver one series' files, or raise :class:`DeliveryError`."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path


class DeliveryError(RuntimeError):
    """This attempt failed (peer down, refused, a failure status); the dispatcher retries with back-off."""


class Destination(ABC):
    """One configured place synthetic series go to; ``name`` is what Export rows refer to."""

    kind: str = ""

    def __init__(self, name: str) -> None:
        self.name = name

    @abstractmethod
    def send(self, files: Sequence[Path]) -> None:
        """Deliver every file of one series; return only when all of them are accepted."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"
