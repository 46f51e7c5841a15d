"""What every destination kind implements, and the registry that finds a kind's class by its ``kind`` string.

As mercure's ``dispatch/target_types/``: one file per kind in ``export/``, each a :class:`Destination` subclass
registered with ``@register(ItsSettingsModel)``; :func:`destination_class` looks the kind up, so the dispatcher
never names a kind. The kind modules are found by importing every module of this package once (no list to
keep): a new kind is its settings model in ``config.py`` plus one file here.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar, Generic, Self, TypeVar

from codebrain_node.config import DestinationSettingsBase, Settings

EntryT = TypeVar("EntryT", bound=DestinationSettingsBase)
DestinationT = TypeVar("DestinationT", bound="type[Destination[Any]]")
#: Told each file the destination has acknowledged, as soon as it has (the dispatcher records it, so a resend
#: after a crash or a failure mid-series sends only the rest).
Delivered = Callable[[Path], None]


def ignore_delivery(path: Path) -> None:
    """The default :data:`Delivered`: nobody is keeping count."""


class DeliveryError(RuntimeError):
    """This attempt failed (peer down, refused, a failure status); the dispatcher retries with back-off."""


class Destination(ABC, Generic[EntryT]):
    """One configured place synthetic series go to; ``name`` is what Export rows refer to."""

    #: Set by :func:`register` from the settings model's ``kind`` literal: one spelling of each kind.
    kind: ClassVar[str] = ""
    settings_model: ClassVar[type[DestinationSettingsBase]]

    def __init__(self, name: str) -> None:
        self.name = name

    @classmethod
    @abstractmethod
    def from_settings(cls, entry: EntryT, settings: Settings) -> Self:
        """Build from this kind's validated ``[[export.destinations]]`` entry (and node-wide settings)."""

    @abstractmethod
    def send(self, files: Sequence[Path], delivered: Delivered = ignore_delivery) -> None:
        """Deliver every file of one series; return only when all of them are accepted. Call ``delivered`` with
        each file the moment the destination has accepted it."""

    def check(self) -> None:
        """Raise if this destination could never work as configured (a TLS file that cannot be read, say);
        ``serve`` calls it once at start. Nothing to check by default."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


_KINDS: dict[str, type[Destination[Any]]] = {}


def register(model: type[DestinationSettingsBase]) -> Callable[[DestinationT], DestinationT]:
    """Class decorator: ``cls`` delivers the destinations configured with ``model`` (its ``kind`` default)."""
    kind = model.model_fields["kind"].default
    if not isinstance(kind, str) or not kind:
        raise TypeError(f"{model.__name__}.kind needs a Literal default, e.g. kind: Literal['x'] = 'x'")

    def add(cls: DestinationT) -> DestinationT:
        known = _KINDS.get(kind)
        if known is not None and known is not cls:
            raise ValueError(f"destination kind {kind!r} is registered twice: {known.__name__} and {cls.__name__}")
        cls.kind, cls.settings_model = kind, model
        _KINDS[kind] = cls
        return cls

    return add


def registered_kinds() -> dict[str, type[Destination[Any]]]:
    """Every kind with its class, after importing the kind modules of this package."""
    _import_kind_modules()
    return dict(_KINDS)


def destination_class(kind: str) -> type[Destination[Any]]:
    """The class registered for ``kind``; ``ValueError`` names the known kinds."""
    kinds = registered_kinds()
    if kind not in kinds:
        raise ValueError(f"no export destination kind {kind!r} (known: {', '.join(sorted(kinds))})")
    return kinds[kind]


@functools.cache
def _import_kind_modules() -> None:
    """Import each module of ``codebrain_node.export`` once: importing a kind's file registers it."""
    package = __name__.rpartition(".")[0]
    for module in pkgutil.iter_modules(importlib.import_module(package).__path__):
        importlib.import_module(f"{package}.{module.name}")
