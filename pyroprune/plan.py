"""The pruning decision as plain data.

A :class:`PruningPlan` says, per gate site, which structures to keep, the score the rule computed, and the
value of the gate to fold into the weights of the kept ones. It is JSON-serialisable and can be applied to
the original network at any later time (:func:`pyroprune.surgery.remove`).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .gates import GateSite

__all__ = ["PruningPlan", "SitePlan", "atomic_write_text", "per_layer_string"]


@dataclass
class SitePlan:
    """The decision for one gate site.

    :param site: the gate site.
    :param keep: keep mask, one bool per structure.
    :param score: the rule's score per structure (e.g. :math:`\\Delta F`, SNR); the sign convention is the
        rule's and is documented with it.
    :param fold: the gate value folded into the weights of each structure (posterior :math:`E[\\theta]`); ``None``
        folds nothing (gates at 1).
    :param forced: indices kept although the rule said prune (a layer is never emptied completely).
    """

    site: GateSite
    keep: list[bool]
    score: list[float]
    fold: list[float] | None = None
    forced: list[int] = field(default_factory=list)

    @property
    def kept(self) -> int:
        return int(sum(self.keep))

    def keep_tensor(self, device=None) -> torch.Tensor:
        return torch.tensor(self.keep, dtype=torch.bool, device=device)

    def to_dict(self) -> dict:
        return {
            "site": self.site.to_dict(),
            "keep": [bool(k) for k in self.keep],
            "score": [float(s) for s in self.score],
            "fold": None if self.fold is None else [float(f) for f in self.fold],
            "forced": [int(i) for i in self.forced],
        }

    @classmethod
    def from_dict(cls, d: Mapping) -> SitePlan:
        site = GateSite.from_dict(d["site"])
        keep = [bool(k) for k in d["keep"]]
        if len(keep) != site.size:
            raise ValueError(f"plan for site {site.name!r}: 'keep' has {len(keep)} entries, site size {site.size}")
        return cls(site, keep, [float(s) for s in d["score"]], d.get("fold"), list(d.get("forced", [])))


@dataclass
class PruningPlan:
    """Per-site keep masks, scores and fold values, with the method that produced them.

    :param method: the rule's name (``"bmrs-n"``, ``"snr"``...).
    :param params: the rule's parameters.
    :param sites: the per-site decisions, in execution order.
    """

    method: str
    params: dict
    sites: list[SitePlan]
    version: int = 1

    def __getitem__(self, name: str) -> SitePlan:
        for sp in self.sites:
            if sp.site.name == name:
                return sp
        raise KeyError(f"plan has no gate site {name!r}")

    def masks(self, device=None) -> dict[str, torch.Tensor]:
        """Keep masks as bool tensors, per site name."""
        return {sp.site.name: sp.keep_tensor(device) for sp in self.sites}

    @property
    def kept(self) -> list[int]:
        """Kept structures per site."""
        return [sp.kept for sp in self.sites]

    @property
    def total(self) -> list[int]:
        return [sp.site.size for sp in self.sites]

    def kept_string(self, input_size: int | None = None) -> str:
        """Kept structures per layer, e.g. ``"64-31-12"`` (input width first when given).

        When the first site gates input features (kind ``"feature"``, e.g. the pixels entering LeNet-500-300's
        first layer) its kept count already stands for the input and ``input_size`` is not repeated: SBP's
        ``"245-160-55"``, not ``"784-245-160-55"``.
        """
        return self._per_layer_string(self.kept, input_size)

    def total_string(self, input_size: int | None = None) -> str:
        """Structures per layer before pruning, e.g. ``"64-50-50"``, read like :meth:`kept_string`."""
        return self._per_layer_string(self.total, input_size)

    def _per_layer_string(self, counts: list[int], input_size: int | None) -> str:
        return per_layer_string([sp.site for sp in self.sites], counts, input_size)

    def with_masks(self, masks: Mapping[str, torch.Tensor]) -> PruningPlan:
        """A copy that also prunes what ``masks`` (site -> bool keep) prunes; never empties a site."""
        sites = []
        for sp in self.sites:
            keep = list(sp.keep)
            forced = list(sp.forced)
            if sp.site.name in masks:
                m = masks[sp.site.name].tolist()
                keep = [k and bool(mk) for k, mk in zip(keep, m, strict=True)]
                if not any(keep):  # keep the surviving structure with the largest gate
                    fold = sp.fold or [1.0] * len(m)
                    best = max((i for i in range(len(m)) if m[i]), key=lambda i: fold[i], default=0)
                    keep[best] = True
                    forced = [best]
            sites.append(SitePlan(sp.site, keep, list(sp.score), sp.fold, forced))
        return PruningPlan(self.method, dict(self.params), sites, self.version)

    def summary(self) -> str:
        return ", ".join(f"{sp.site.name}: {sp.kept}/{sp.site.size}" for sp in self.sites)

    def to_dict(self) -> dict:
        return {
            "format": "pyroprune.PruningPlan",
            "version": self.version,
            "method": self.method,
            "params": self.params,
            "sites": [sp.to_dict() for sp in self.sites],
        }

    @classmethod
    def from_dict(cls, d: Mapping) -> PruningPlan:
        if not isinstance(d, Mapping) or d.get("format") != "pyroprune.PruningPlan":
            raise ValueError("not a pyroprune plan: missing 'format': 'pyroprune.PruningPlan'")
        for key in ("method", "params", "sites"):
            if key not in d:
                raise ValueError(f"pyroprune plan: missing key {key!r}")
        return cls(d["method"], dict(d["params"]), [SitePlan.from_dict(s) for s in d["sites"]], int(d["version"]))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    def save(self, path: str | os.PathLike) -> None:
        """Write the plan as JSON (atomically)."""
        atomic_write_text(path, self.to_json())

    @classmethod
    def load(cls, path: str | os.PathLike) -> PruningPlan:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"plan file not found: {path}")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"plan file {path} is not valid JSON: {e}") from e
        return cls.from_dict(data)


def per_layer_string(sites: Sequence[GateSite], counts: Sequence[int], input_size: int | None = None) -> str:
    """``counts`` per site joined by ``-``, the input width first when given, unless the first site gates input
    features (its count already stands for the input); see :meth:`PruningPlan.kept_string`."""
    if sites and sites[0].kind == "feature":
        input_size = None
    return "-".join(([str(input_size)] if input_size is not None else []) + [str(c) for c in counts])


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file in the same folder and ``os.replace``."""
    write_atomic(path, text.encode())


def write_atomic(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
