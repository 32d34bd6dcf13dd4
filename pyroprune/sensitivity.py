"""How much each residual block matters: SR-init's stochastic re-initialisation, with its uncertainty.

SR-init (Tang, Lu & Xuan 2023) re-initialises one block's parameters and batch-norm statistics, measures the
accuracy drop, and removes the blocks whose drop is small. The original measures once, with one seed, on the test
set. :func:`block_sensitivity` measures on a held-out split with :math:`R` seeds and puts a posterior on each
block's expected drop.

For block :math:`b`, seed :math:`r` and validation example :math:`n`, let :math:`c_n` and :math:`c^{(b,r)}_n` be
1 if the trained network, and the network with block :math:`b` re-initialised with seed :math:`r`, classify the
example correctly. The drop (in percentage points) is

.. math::

    \\delta_{b,r} = \\frac{100}{N} \\sum_{n=1}^{N} \\big(c_n - c^{(b,r)}_n\\big), \\qquad
    \\bar\\delta_b = \\frac1R \\sum_r \\delta_{b,r}.

The quantity of interest is the drop expected over the population of examples *and* of re-initialisations,
:math:`\\Delta_b = E_{r,n}[100\\,(c_n - c^{(b,r)}_n)]`. Its posterior is drawn with the Bayesian bootstrap (Rubin
1981) over both: per draw :math:`t`, weights :math:`w^{(t)} \\sim \\mathrm{Dirichlet}(1_N)` over examples
(shared by all blocks, so the draws of different blocks are paired) and :math:`v^{(t)} \\sim
\\mathrm{Dirichlet}(1_R)` over seeds,

.. math::

    \\Delta_b^{(t)} = 100 \\sum_r v^{(t)}_r \\sum_n w^{(t)}_n \\big(c_n - c^{(b,r)}_n\\big),

from which the intervals and :math:`P(\\Delta_b \\le \\tau)` are read (``bootstrap="classical"``: multinomial
resampling counts instead, Efron's bootstrap). Every (block, seed) evaluation starts from the network in memory:
the fresh parameters are passed with :func:`torch.func.functional_call`, and the :math:`R` seeds of a block are
evaluated in one vectorised call (:func:`torch.func.vmap`), which also computes the layers before the block once
for all seeds.
"""

from __future__ import annotations

import json
import os
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.func import functional_call, vmap

from .blocks import ResidualBlock, find_residual_blocks, reinitialise, resolve_init
from .data import TensorSplit
from .plan import atomic_write_text

__all__ = ["BlockSensitivity", "block_sensitivity", "BOOTSTRAPS"]

#: Kinds of bootstrap for the drops' uncertainty.
BOOTSTRAPS = ("bayesian", "classical")

_FORMAT = "pyroprune.BlockSensitivity"


@dataclass
class BlockSensitivity:
    """The measured sensitivity of every removable block to re-initialisation.

    :param blocks: the removable blocks (identity shortcut), in execution order; one row of ``drops`` / ``draws``
        each.
    :param fixed: the blocks that cannot be removed, with the reason (:attr:`ResidualBlock.reason`).
    :param baseline_accuracy: accuracy (fraction) of the trained network on the scoring split.
    :param drops: ``[B, R]`` accuracy drop per block and seed, in percentage points.
    :param draws: ``[B, T]`` posterior (bootstrap) draws of each block's expected drop, percentage points.
    :param num_examples: examples of the scoring split.
    :param seeds: the seeds of the re-initialisations (seed ``r`` of block ``b`` is
        ``crc32(f"{seed}:{path}:{r}")``, so a block's draws do not depend on which other blocks are scored).
    :param init: the re-initialisation's name (or the function's qualified name).
    :param bootstrap: ``"bayesian"`` or ``"classical"``.
    :param split: the name of the scoring split (``"val"``).
    :param total_params: parameters of the whole network.
    :param total_macs: multiply-accumulates of the whole network for one example.
    """

    blocks: list[ResidualBlock]
    fixed: list[ResidualBlock]
    baseline_accuracy: float
    drops: torch.Tensor
    draws: torch.Tensor
    num_examples: int
    seeds: list[int]
    init: str
    bootstrap: str
    split: str = "val"
    total_params: int = 0
    total_macs: int = 0

    @property
    def paths(self) -> list[str]:
        return [b.path for b in self.blocks]

    def index(self, path: str) -> int:
        for i, b in enumerate(self.blocks):
            if b.path == path:
                return i
        raise KeyError(f"no removable block {path!r} (removable: {', '.join(self.paths)})")

    def mean(self) -> torch.Tensor:
        """:math:`\\bar\\delta_b`, the mean drop over seeds (percentage points), ``[B]``."""
        return self.drops.mean(1)

    def std(self) -> torch.Tensor:
        """Standard deviation of the drop across seeds (percentage points), ``[B]``; 0 for one seed."""
        if self.drops.shape[1] < 2:
            return torch.zeros(self.drops.shape[0], dtype=self.drops.dtype)
        return self.drops.std(1)

    def interval(self, level: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
        """Central ``level`` interval of the posterior draws of each block's expected drop, ``([B], [B])``."""
        if not 0.0 < level < 1.0:
            raise ValueError(f"'level' must be in (0, 1), got {level}")
        q = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=self.draws.dtype)
        lo, hi = torch.quantile(self.draws, q, dim=1)
        return lo, hi

    def prob_below(self, tau: float) -> torch.Tensor:
        """:math:`P(\\Delta_b \\le \\tau)` under the draws, ``[B]``."""
        return (self.draws <= tau).to(torch.float64).mean(1)

    def table(self, level: float = 0.95, tau: float | None = None) -> list[dict]:
        """One row per block (removable first, then fixed): path, stage, params, MACs, mean, sd, interval and,
        with ``tau``, :math:`P(\\Delta \\le \\tau)`; fixed blocks carry their reason."""
        lo, hi = self.interval(level)
        mean, sd = self.mean(), self.std()
        p = self.prob_below(tau) if tau is not None else None
        rows = []
        for i, b in enumerate(self.blocks):
            row = {
                "block": b.path,
                "stage": b.stage,
                "params": b.params,
                "macs": b.macs,
                "mean": float(mean[i]),
                "sd": float(sd[i]),
                "low": float(lo[i]),
                "high": float(hi[i]),
            }
            if p is not None:
                row["p_below"] = float(p[i])
            rows.append(row)
        rows += [
            {"block": b.path, "stage": b.stage, "params": b.params, "macs": b.macs, "fixed": b.reason}
            for b in self.fixed
        ]
        return rows

    # -- persistence ---------------------------------------------------------------------------------------

    def to_dict(self) -> dict:
        return {
            "format": _FORMAT,
            "version": 1,
            "blocks": [b.to_dict() for b in self.blocks],
            "fixed": [b.to_dict() for b in self.fixed],
            "baseline_accuracy": self.baseline_accuracy,
            "drops": self.drops.double().tolist(),
            "draws": [[round(float(v), 6) for v in row] for row in self.draws.double()],
            "num_examples": self.num_examples,
            "seeds": list(self.seeds),
            "init": self.init,
            "bootstrap": self.bootstrap,
            "split": self.split,
            "total_params": self.total_params,
            "total_macs": self.total_macs,
        }

    @classmethod
    def from_dict(cls, d: dict) -> BlockSensitivity:
        if not isinstance(d, dict) or d.get("format") != _FORMAT:
            raise ValueError(f"not a block sensitivity: missing 'format': {_FORMAT!r}")
        blocks = [ResidualBlock.from_dict(b) for b in d["blocks"]]
        drops = torch.tensor(d["drops"], dtype=torch.float64).reshape(len(blocks), -1)
        draws = torch.tensor(d["draws"], dtype=torch.float64).reshape(len(blocks), -1)
        return cls(
            blocks,
            [ResidualBlock.from_dict(b) for b in d["fixed"]],
            float(d["baseline_accuracy"]),
            drops,
            draws,
            int(d["num_examples"]),
            [int(s) for s in d["seeds"]],
            str(d["init"]),
            str(d["bootstrap"]),
            str(d.get("split", "val")),
            int(d.get("total_params", 0)),
            int(d.get("total_macs", 0)),
        )

    def save(self, path: str | os.PathLike) -> None:
        """Write as JSON (atomically)."""
        atomic_write_text(path, json.dumps(self.to_dict()))

    @classmethod
    def load(cls, path: str | os.PathLike) -> BlockSensitivity:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"block sensitivity file not found: {path}")
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON: {e}") from None

    def to_datatree(self):
        """The draws as an ArviZ :class:`xarray.DataTree`: variable ``drop`` in group ``posterior`` with dims
        ``(chain, draw, block)`` (one chain), and the per-seed drops in ``observed_data`` as ``seed_drop``
        ``(block, seed)``; ``arviz.summary`` / ``arviz.plot_forest`` read it directly."""
        import arviz as az

        coords = {"block": self.paths, "seed": list(range(self.drops.shape[1]))}
        return az.from_dict(
            {
                "posterior": {"drop": self.draws.double().T.numpy()[None]},
                "observed_data": {"seed_drop": self.drops.double().numpy()},
            },
            coords=coords,
            dims={"drop": ["block"], "seed_drop": ["block", "seed"]},
        )


def _seed_for(seed: int, path: str, r: int) -> int:
    # A deterministic, per-(block, seed) stream: a block's re-initialisations do not depend on which other
    # blocks are scored or in which order.
    return zlib.crc32(f"{seed}:{path}:{r}".encode())


@torch.no_grad()
def _correct(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return logits.argmax(-1) == y


@torch.no_grad()
def block_sensitivity(
    net: nn.Module,
    split: TensorSplit,
    *,
    blocks: Sequence[str] | None = None,
    num_seeds: int = 5,
    init: str | Callable[[nn.Module, torch.Generator], None] = "kaiming",
    seed: int = 0,
    batch_size: int = 256,
    num_draws: int = 2000,
    bootstrap: str = "bayesian",
    vectorize: bool = True,
    split_name: str = "val",
) -> BlockSensitivity:
    """Re-initialise each removable residual block with ``num_seeds`` seeds and measure the accuracy drop on
    ``split`` (a held-out validation split; never the test split), with a posterior over each block's expected
    drop (see the module docstring).

    :param net: the trained network (not modified; evaluated in eval mode, its mode restored after).
    :param split: the scoring split, on the network's device.
    :param blocks: block paths or patterns (see :func:`~pyroprune.blocks.find_residual_blocks`); default: found.
    :param num_seeds: :math:`R`, re-initialisations per block (>= 1; >= 2 for a spread over seeds).
    :param init: ``"kaiming"`` (the ResNets' own initialisation), ``"default"`` (PyTorch's) or a function
        ``(block, generator) -> None``.
    :param seed: base seed of the re-initialisations and of the bootstrap.
    :param batch_size: validation examples per forward pass (times ``num_seeds`` when vectorised).
    :param num_draws: :math:`T`, bootstrap draws.
    :param bootstrap: ``"bayesian"`` (Dirichlet weights) or ``"classical"`` (resampling counts).
    :param vectorize: evaluate a block's seeds in one :func:`torch.func.vmap` call (else one after another).
    :returns: a :class:`BlockSensitivity`; ``fixed`` lists the blocks that cannot be removed and why.
    :raises ValueError: (one line) for invalid counts, an unknown ``bootstrap`` or ``init``, or a network without
        a removable block.
    """
    from .measure import count_macs, count_params

    for name, value, minimum in (
        ("num_seeds", num_seeds, 1),
        ("batch_size", batch_size, 1),
        ("num_draws", num_draws, 1),
    ):
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise ValueError(f"'{name}' must be an integer >= {minimum}, got {value!r}")
    if bootstrap not in BOOTSTRAPS:
        raise ValueError(f"'bootstrap' must be one of {', '.join(BOOTSTRAPS)}, got {bootstrap!r}")
    init_fn = resolve_init(init)
    if len(split) == 0:
        raise ValueError("the scoring split is empty")
    found = find_residual_blocks(net, split.x[:1], blocks)
    removable = [b for b in found if b.removable]
    fixed = [b for b in found if not b.removable]
    if not removable:
        why = "; ".join(f"{b.path}: {b.reason}" for b in fixed[:3])
        raise ValueError(f"no removable residual block (identity shortcut, same shape): {why}")
    device = split.x.device
    was = net.training
    net.eval()
    try:
        base_state = {**dict(net.named_parameters()), **dict(net.named_buffers())}
        modules = dict(net.named_modules())
        baseline = torch.cat([_correct(net(xb), yb) for xb, yb in split.batches(batch_size)])  # [N]
        correct = []  # per block [R, N]
        seeds = list(range(num_seeds))
        for block in removable:
            module = modules[block.path]
            states = []
            for r in seeds:
                g = torch.Generator(device=device).manual_seed(_seed_for(seed, block.path, r))
                states.append(reinitialise(module, g, init_fn))
            stacked = {f"{block.path}.{k}": torch.stack([s[k] for s in states]) for k in states[0]}

            def run(fresh: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
                return functional_call(net, {**base_state, **fresh}, (x,))

            if vectorize:
                batched = vmap(run, in_dims=(0, None))
                rows = [_correct(batched(stacked, xb), yb) for xb, yb in split.batches(batch_size)]
                correct.append(torch.cat(rows, dim=1))
            else:
                per_seed = []
                for i in range(num_seeds):
                    fresh = {k: v[i] for k, v in stacked.items()}
                    per_seed.append(torch.cat([_correct(run(fresh, xb), yb) for xb, yb in split.batches(batch_size)]))
                correct.append(torch.stack(per_seed))
    finally:
        net.train(was)
    diff = baseline.float()[None, None] - torch.stack(correct).float()  # [B, R, N]
    drops = 100.0 * diff.mean(2)
    draws = 100.0 * _bootstrap_means(diff, num_draws, bootstrap, seed)
    return BlockSensitivity(
        removable,
        fixed,
        float(baseline.float().mean()),
        drops.double().cpu(),
        draws.double().cpu(),
        len(split),
        [int(s) for s in seeds],
        init if isinstance(init, str) else getattr(init, "__qualname__", repr(init)),
        bootstrap,
        split_name,
        count_params(net),
        int(count_macs(net, split.x[:1])),
    )


def _bootstrap_means(diff: torch.Tensor, num_draws: int, kind: str, seed: int, chunk: int = 256) -> torch.Tensor:
    """``[B, T]`` bootstrap draws of :math:`\\sum_r v_r \\sum_n w_n\\, \\mathrm{diff}_{b,r,n}` (see the module
    docstring); the example weights are shared by all blocks. Drawn in chunks of ``chunk`` so memory stays
    :math:`O(\\text{chunk} \\cdot N)`."""
    b, r, n = diff.shape
    device = diff.device
    g = torch.Generator(device=device).manual_seed(zlib.crc32(f"{seed}:bootstrap".encode()))
    flat = diff.reshape(b * r, n)
    out = []
    for start in range(0, num_draws, chunk):
        t = min(chunk, num_draws - start)
        w = _weights(t, n, kind, g, device)  # [t, N]
        v = _weights(t, r, kind, g, device)  # [t, R]
        per_seed = (flat @ w.T).reshape(b, r, t)  # [B, R, t]
        out.append(torch.einsum("brt,tr->bt", per_seed, v))
    return torch.cat(out, dim=1)


def _weights(t: int, n: int, kind: str, g: torch.Generator, device) -> torch.Tensor:
    """``[t, n]`` weights summing to 1 per row: flat Dirichlet (Bayesian bootstrap) or resampling counts / n."""
    if kind == "bayesian":
        e = -torch.log1p(-torch.rand(t, n, generator=g, device=device))  # Exp(1), never log(0)
        return e / e.sum(1, keepdim=True)
    idx = torch.randint(n, (t, n), generator=g, device=device)
    counts = torch.zeros(t, n, device=device).scatter_add_(1, idx, torch.ones(t, n, device=device))
    return counts / n
