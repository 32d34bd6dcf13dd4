"""Fitted gate posteriors as ArviZ data: an :class:`xarray.DataTree` in ArviZ 1.x conventions.

Independent runs (seeds) of one method become ArviZ *chains*, the Monte Carlo draws of the gates its *draws*:

``posterior``
    one variable per gate site, named after the site (e.g. ``features.0``), the draws of :math:`\\theta`,
    dims ``(chain, draw, <site.dim_name>)`` (e.g. ``features_0_unit``).
``prior``
    draws of :math:`\\theta` from each site's prior, same variables and dims.
``posterior_predictive``
    ``y``: a class drawn from :math:`\\mathrm{Categorical}(p(\\cdot \\mid x_n, \\theta^{(s)}))` per draw and test
    example, dims ``(chain, draw, example)``.
``log_likelihood``
    ``y``: :math:`\\log p(y_n \\mid x_n, \\theta^{(s)})`, dims ``(chain, draw, example)``.
``observed_data``
    ``y``: the test labels, dim ``example``.
``predictive_probabilities``
    ``y``: the class probabilities :math:`p(k \\mid x_n, \\theta^{(s)})` (float32), dims
    ``(chain, draw, example, class)``; kept so that reliability metrics (calibration, entropy...) need no second
    pass over the data. A group of its own, with a name no ArviZ function looks for, so that ``observed_data``
    and ``posterior_predictive`` keep the one variable ArviZ's predictive checks pair up; read it with
    :func:`predictive_probabilities`.

The root ``attrs`` record the method, the prior, the guide, the seed, the package versions and
``pyroprune_format`` (checked by :func:`load_datatree`); every value is a string or a number, so they survive
netCDF. ArviZ's own functions (``az.summary``, ``az.loo``, ``az.plot_forest``, ``az.plot_dist``,
``az.plot_ppc_pava(..., data_type="categorical")``) take the tree unchanged.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr

from ..data import TensorSplit
from ..gates import GatedNet
from ..plan import PruningPlan
from ..posterior import GatePosterior

__all__ = [
    "FORMAT",
    "PROBABILITIES_GROUP",
    "build_datatree",
    "load_datatree",
    "posterior_predictive_draws",
    "predictive_probabilities",
    "save_datatree",
]

#: Value of ``attrs["pyroprune_format"]`` on the root of every tree :func:`build_datatree` makes.
FORMAT = "pyroprune.DataTree"
#: Version of the layout, ``attrs["pyroprune_format_version"]``.
FORMAT_VERSION = 1
#: Name of the group holding the class probabilities.
PROBABILITIES_GROUP = "predictive_probabilities"
_OBS = "y"


# -- draws ---------------------------------------------------------------------------------------------------


def _reference(gated: GatedNet) -> torch.Tensor:
    ref = next(iter(gated.parameters()), None)
    return ref if ref is not None else torch.zeros(())


@contextmanager
def _seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Seed the CPU generator (and ``device``'s, if CUDA) inside, restoring them afterwards.

    Pyro distributions sample from torch's default generators; forking them keeps the caller's random state
    untouched (no global state is changed by this module).
    """
    cuda = device.type == "cuda"
    index = device.index if device.index is not None else (torch.cuda.current_device() if cuda else None)
    with torch.random.fork_rng(devices=[index] if cuda else [], device_type="cuda"):
        torch.random.default_generator.manual_seed(seed)
        if cuda:
            with torch.cuda.device(index):
                torch.cuda.manual_seed(seed)
        yield


def _posterior_theta(gated: GatedNet, posterior: GatePosterior, num_draws: int, seed: int) -> dict[str, torch.Tensor]:
    """``num_draws`` draws of :math:`\\theta` per site, ``[S, C]`` on the network's device and dtype."""
    ref = _reference(gated)
    out = {}
    with _seeded(seed, ref.device):
        for site in gated.sites:
            theta = posterior.draws(site.name, num_draws)
            if theta.shape[0] < num_draws:
                raise ValueError(
                    f"posterior of gate site {site.name!r} stores {theta.shape[0]} draws, fewer than "
                    f"num_draws={num_draws}"
                )
            theta = theta[:num_draws].reshape(num_draws, site.size)
            out[site.name] = theta.detach().to(device=ref.device, dtype=ref.dtype)
    return out


@torch.no_grad()
def _prior_theta(gated: GatedNet, num_draws: int, seed: int) -> dict[str, torch.Tensor]:
    """``num_draws`` draws of :math:`\\theta` per site from the prior, ``[S, C]``."""
    ref = _reference(gated)
    with _seeded(seed, ref.device):
        return {
            s.name: gated.prior(s).sample((num_draws,)).reshape(num_draws, s.size).to(ref.device) for s in gated.sites
        }


def _plan_masks(gated: GatedNet, plan: PruningPlan) -> dict[str, torch.Tensor]:
    names = {s.name: s.size for s in gated.sites}
    masks = {}
    for sp in plan.sites:
        name = sp.site.name
        if name not in names:
            raise ValueError(f"plan prunes gate site {name!r}, which the gated network does not have")
        if len(sp.keep) != names[name]:
            raise ValueError(f"plan for gate site {name!r} has {len(sp.keep)} entries, the site has {names[name]}")
        masks[name] = sp.keep_tensor(_reference(gated).device)
    return masks


@torch.no_grad()
def posterior_predictive_draws(
    gated: GatedNet,
    posterior: GatePosterior,
    split: TensorSplit,
    num_draws: int = 100,
    batch_size: int = 512,
    seed: int = 0,
    plan: PruningPlan | None = None,
) -> dict[str, Any]:
    """Posterior predictive quantities of ``split`` under ``num_draws`` draws of the gates.

    The gates are drawn once; then the data are streamed in batches of ``batch_size``, each batch evaluated
    under all draws in **one** batched forward pass (:meth:`~pyroprune.gates.GatedNet.forward_with_gates` with
    ``[S, C]`` gates), so memory is bounded by ``S * batch_size`` activations plus the outputs. The network runs
    in eval mode (its training flag is restored afterwards); masks set with
    :meth:`~pyroprune.gates.GatedNet.set_masks` apply as in training.

    :param gated: the gated network.
    :param posterior: the fitted gate posterior (its sites must be ``gated``'s).
    :param split: the data (e.g. the test split); moved batch by batch to the network's device.
    :param num_draws: number :math:`S` of gate draws. A posterior that stores draws must store at least
        ``num_draws``; the first ``num_draws`` are used.
    :param batch_size: examples per forward pass.
    :param seed: seeds the gate draws and the predicted classes (the caller's random state is left untouched).
    :param plan: if given, the gates of the structures it prunes are 0 in every draw (the pruned Bayesian
        model); the kept structures keep their posterior draws.
    :returns: a dict, every tensor on the network's device:

        * ``"theta"``: site name -> draws of :math:`\\theta`, ``[S, C]`` (before the plan's mask);
        * ``"log_likelihood"``: :math:`\\log p(y_n \\mid x_n, \\theta^{(s)})`, ``[S, N]``;
        * ``"probs"``: class probabilities, ``[S, N, K]``, float32;
        * ``"y_pred"``: a class drawn from :math:`\\mathrm{Categorical}(p)` per draw and example, ``[S, N]``,
          int64.
    :raises ValueError: on a non-positive ``num_draws`` / ``batch_size``, an empty split, or sites that do
        not match.
    """
    if num_draws <= 0:
        raise ValueError(f"num_draws must be positive, got {num_draws}")
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if len(split) == 0:
        raise ValueError("split is empty")
    _check_sites(gated, posterior, "posterior")
    ref = _reference(gated)
    device = ref.device
    theta = _posterior_theta(gated, posterior, num_draws, seed)
    gates = dict(theta)
    if plan is not None:
        for name, keep in _plan_masks(gated, plan).items():
            gates[name] = gates[name] * keep.to(gates[name].dtype)
    generator = torch.Generator(device=device).manual_seed(seed)
    lls, probs, preds = [], [], []
    was_training = gated.training
    gated.eval()
    try:
        for x, y in split.batches(batch_size):
            x = x.to(device=device, dtype=ref.dtype if x.is_floating_point() else None)
            y = y.to(device)
            logits = gated.forward_with_gates(x, gates)  # [S, B, K]
            logp = torch.log_softmax(logits, dim=-1)
            lls.append(logp.gather(-1, y.reshape(1, -1, 1).expand(num_draws, -1, 1)).squeeze(-1))
            p = logp.exp().float()
            u = torch.rand(p.shape[:-1] + (1,), generator=generator, device=device, dtype=p.dtype)
            preds.append((p.cumsum(-1) < u).sum(-1).clamp_max(p.shape[-1] - 1))
            probs.append(p)
    finally:
        gated.train(was_training)
    return {
        "theta": theta,
        "log_likelihood": torch.cat(lls, dim=1),
        "probs": torch.cat(probs, dim=1),
        "y_pred": torch.cat(preds, dim=1),
    }


def _check_sites(gated: GatedNet, posterior: GatePosterior, what: str) -> None:
    expected = {s.name: s.size for s in gated.sites}
    got = {s.name: s.size for s in posterior.sites}
    for name in list(expected) + list(got):
        if name not in got:
            raise ValueError(f"{what} has no gate site {name!r}")
        if name not in expected:
            raise ValueError(f"{what} has gate site {name!r}, which the gated network does not have")
        if got[name] != expected[name]:
            raise ValueError(
                f"gate site {name!r} has {got[name]} structures in {what}, {expected[name]} in the network"
            )


def _check_runs(runs: Sequence[tuple[GatedNet, GatePosterior]]) -> None:
    if not runs:
        raise ValueError("runs is empty: pass at least one (gated, posterior) pair")
    first = {s.name: s for s in runs[0][0].sites}
    for i, (gated, posterior) in enumerate(runs):
        _check_sites(gated, posterior, f"posterior of run {i}")
        sites = {s.name: s for s in gated.sites}
        for name in list(first) + list(sites):
            if name not in sites:
                raise ValueError(f"run {i} has no gate site {name!r} (run 0 has)")
            if name not in first:
                raise ValueError(f"run {i} has gate site {name!r}, which run 0 does not have")
            a, b = first[name], sites[name]
            if (a.size, a.dim_name) != (b.size, b.dim_name):
                raise ValueError(
                    f"gate site {name!r} differs between run 0 ({a.size} {a.kind}s) and run {i} ({b.size})"
                )
        if _OBS in sites:
            raise ValueError(f"a gate site is named {_OBS!r}, the name of the observed variable")


# -- the DataTree ----------------------------------------------------------------------------------------------


def package_version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "unknown"


def _describe(prior: Any) -> str:
    """A readable description of a prior (a distribution's repr often hides its parameters)."""
    if isinstance(prior, str):
        return prior
    params = getattr(prior, "arg_constraints", None)
    if isinstance(params, Mapping):
        parts = []
        for name in params:
            value = getattr(prior, name, None)
            if isinstance(value, torch.Tensor):  # priors are expanded to the site size: show one value if all agree
                flat = value.detach().reshape(-1)
                value = (
                    flat[0].item() if flat.numel() and bool((flat == flat[0]).all()) else f"tensor{tuple(value.shape)}"
                )
            if value is not None:
                parts.append(f"{name}={value}")
        return f"{type(prior).__name__}({', '.join(parts)})"
    return repr(prior)


def _json_safe(key: str, value: Any) -> str | int | float:
    """An attribute value netCDF stores faithfully: strings and numbers (bools as 0/1, containers as JSON)."""
    if isinstance(value, (bool, np.bool_)):
        return int(value)
    if isinstance(value, (np.integer, np.floating)):
        value = value.item()
    if isinstance(value, (str, int, float)):
        return value
    if value is None or isinstance(value, (list, tuple, dict)):
        try:
            return json.dumps(value)
        except TypeError as e:
            raise TypeError(f"attribute {key!r} is not JSON-serialisable: {e}") from e
    raise TypeError(f"attribute {key!r} must be a string, number, or JSON-like container, got {type(value).__name__}")


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


@torch.no_grad()
def build_datatree(
    runs: Sequence[tuple[GatedNet, GatePosterior]],
    split: TensorSplit,
    *,
    method: str,
    prior: Any,
    guide_name: str,
    num_draws: int = 100,
    batch_size: int = 512,
    seed: int = 0,
    plan: PruningPlan | None = None,
    extra_attrs: Mapping[str, Any] | None = None,
) -> xr.DataTree:
    """ArviZ data of the gate posteriors of independent runs of one method, and their predictions on ``split``.

    Run ``i`` becomes chain ``i``; its draws (gates, prior and predictions) are seeded with ``seed + i``. See
    the module docstring for the layout; build with :func:`arviz_base.from_dict`, so the groups follow ArviZ's
    conventions (and carry its ``created_at`` / ``arviz_version`` attributes).

    :param runs: ``(gated, posterior)`` pairs, one per run; all must have the same gate sites.
    :param split: the evaluation data (typically the test split).
    :param method: the pruning method / decision rule (recorded in ``attrs``).
    :param prior: the gate prior (a distribution or a description; recorded as a string).
    :param guide_name: the variational family (recorded).
    :param num_draws: draws per chain.
    :param batch_size: examples per batched forward pass.
    :param seed: base seed.
    :param plan: if given, the predictive groups are those of the pruned Bayesian model (pruned gates at 0 in
        every draw); the ``posterior`` group still holds the fitted gate draws.
    :param extra_attrs: more root attributes (strings and numbers; bools are stored as 0/1, lists and dicts as
        JSON).
    :returns: the :class:`xarray.DataTree`.
    :raises ValueError: if ``runs`` is empty or the runs' gate sites differ (the message names the site).
    """
    from arviz_base import dict_to_dataset, from_dict

    _check_runs(runs)
    sites = runs[0][0].sites
    draws = [
        posterior_predictive_draws(gated, post, split, num_draws, batch_size, seed + i, plan)
        for i, (gated, post) in enumerate(runs)
    ]
    priors = [_prior_theta(gated, num_draws, seed + i) for i, (gated, _) in enumerate(runs)]

    def stack(values: list[torch.Tensor]) -> np.ndarray:
        return np.stack([_numpy(v) for v in values])

    dims: dict[str, list[str]] = {s.name: [s.dim_name] for s in sites}
    dims[_OBS] = ["example"]
    attrs = {
        "pyroprune_format": FORMAT,
        "pyroprune_format_version": FORMAT_VERSION,
        "method": str(method),
        "prior": _describe(prior),
        "guide_name": str(guide_name),
        "seed": int(seed),
        "num_draws": int(num_draws),
        "num_chains": len(runs),
        "chain_meaning": "independent runs (seeds) of the same method; chain i drawn with seed + i",
        "pruned_model": int(plan is not None),
        "plan_method": plan.method if plan is not None else "",
        "gate_sites": json.dumps([s.to_dict() for s in sites]),
        "pyroprune_version": package_version("pyroprune"),
        "torch_version": str(torch.__version__),
        "pyro_version": package_version("pyro-ppl"),
        "arviz_version": package_version("arviz"),
        "xarray_version": xr.__version__,
    }
    for key, value in (extra_attrs or {}).items():
        attrs[str(key)] = _json_safe(str(key), value)
    y_obs = _numpy(split.y)
    data = {
        "posterior": {s.name: stack([d["theta"][s.name] for d in draws]) for s in sites},
        "prior": {s.name: stack([p[s.name] for p in priors]) for s in sites},
        "posterior_predictive": {_OBS: stack([d["y_pred"] for d in draws]).astype(y_obs.dtype)},
        "log_likelihood": {_OBS: stack([d["log_likelihood"] for d in draws])},
        "observed_data": {_OBS: y_obs},
    }
    dt = from_dict(data, dims=dims, attrs={"/": attrs})
    probs = stack([d["probs"] for d in draws])
    dt[PROBABILITIES_GROUP] = dict_to_dataset(
        {_OBS: probs},
        dims={_OBS: ["example", "class"]},
        coords={"class": np.arange(probs.shape[-1])},
        attrs={"description": "class probabilities p(k | x_n, theta^(s)) of the draws behind posterior_predictive"},
    )
    return dt


def predictive_probabilities(dt: xr.DataTree) -> xr.DataArray:
    """The class probabilities of a tree from :func:`build_datatree`, dims ``(chain, draw, example, class)``.

    :raises KeyError: if the tree has no such group.
    """
    if PROBABILITIES_GROUP not in dt.children:
        raise KeyError(f"the DataTree has no {PROBABILITIES_GROUP!r} group (not made by pyroprune.build_datatree?)")
    return dt[PROBABILITIES_GROUP][_OBS]


# -- files ------------------------------------------------------------------------------------------------------


def save_datatree(dt: xr.DataTree, path: str | os.PathLike, force: bool = False) -> Path:
    """Write ``dt`` as netCDF (h5netcdf engine), atomically: a temporary file in the same folder, then a move.

    :param force: overwrite an existing file.
    :returns: the path written.
    :raises FileExistsError: if ``path`` exists and not ``force`` (the file is left untouched).
    """
    path = Path(path)
    if path.exists() and not force:
        raise FileExistsError(f"{path} exists; pass force=True to overwrite it")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        dt.to_netcdf(tmp, mode="w", engine="h5netcdf")
        if force:
            os.replace(tmp, path)
        else:
            _move_exclusive(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _move_exclusive(tmp: str, path: Path) -> None:
    """Move ``tmp`` to ``path`` unless ``path`` exists (a hard link fails atomically if it does)."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise FileExistsError(f"{path} exists; pass force=True to overwrite it") from None
    except OSError:  # no hard links on this file system: check, then move
        if path.exists():
            raise FileExistsError(f"{path} exists; pass force=True to overwrite it") from None
        os.replace(tmp, path)
        return
    os.unlink(tmp)


def _restore_sample_dims(node: xr.DataTree) -> None:
    """ArviZ's ``attrs["sample_dims"]`` list, as netCDF returns it: ``[]`` as an empty array, ``["x"]`` as ``"x"``."""
    value = node.attrs.get("sample_dims")
    if isinstance(value, str):
        node.attrs["sample_dims"] = [value]
    elif isinstance(value, np.ndarray):
        node.attrs["sample_dims"] = [str(v) for v in value.tolist()]


def load_datatree(path: str | os.PathLike) -> xr.DataTree:
    """Read a tree written by :func:`save_datatree` (fully into memory; the file is closed afterwards).

    :raises FileNotFoundError: if ``path`` does not exist.
    :raises ValueError: if it is not netCDF or not a pyroprune DataTree (no ``attrs["pyroprune_format"]``).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"DataTree file not found: {path}")
    try:
        with xr.open_datatree(path, engine="h5netcdf") as tree:
            dt = tree.load().copy()
    except (OSError, ValueError) as e:
        raise ValueError(f"{path} is not a readable netCDF file: {e}") from e
    for node in dt.subtree:
        _restore_sample_dims(node)
    if dt.attrs.get("pyroprune_format") != FORMAT:
        raise ValueError(f"{path} is not a pyroprune DataTree (attrs['pyroprune_format'] != {FORMAT!r})")
    version_ = dt.attrs.get("pyroprune_format_version")
    if not isinstance(version_, (int, np.integer)) or int(version_) > FORMAT_VERSION:
        raise ValueError(f"{path}: unsupported pyroprune DataTree format version {version_!r}")
    return dt
