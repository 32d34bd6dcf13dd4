"""Progress bars that degrade to a silent iterator (tests, non-interactive runs)."""

from __future__ import annotations

from collections.abc import Iterable

from tqdm.auto import tqdm

__all__ = ["progress_bar"]


class _Silent:
    def __init__(self, it: Iterable) -> None:
        self._it = it

    def __iter__(self):
        return iter(self._it)

    def set_postfix(self, *args, **kwargs) -> None:
        pass


def progress_bar(it: Iterable, description: str, enabled: bool = True):
    """A ``tqdm`` bar over ``it`` (epochs) when ``enabled``, else a silent wrapper with the same API."""
    if not enabled:
        return _Silent(it)
    return tqdm(it, desc=description, unit="epoch", dynamic_ncols=True, leave=True)
