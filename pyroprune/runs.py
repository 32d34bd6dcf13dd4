"""Run directories: everything needed to rebuild a fitted run later, without pickle.

A run directory written by :func:`save_run` holds

============================  ==============================================================================
``run.json``                  format tag, pyroprune version, architecture (registry name + kwargs), data set
                              (name + split seed), the ``PruneConfig``, per-epoch history
``plan.json``                 the :class:`~pyroprune.plan.PruningPlan`
``metrics.json``              dense vs pruned figures (written by the caller)
``model/``                    the pruned network (:func:`~pyroprune.serialization.save_pruned`)
``dense/``                    the dense network before gating
``posterior/net.safetensors`` the network weights fitted jointly with the gates
``posterior/guide.safetensors`` the guide's parameters (the gate posterior)
``depth/plan.json``           SR-init runs (alone or before a width method): the block plan
``depth/sensitivity.json``    the blocks' re-initialisation drops and their posterior draws
============================  ==============================================================================

A run of SR-init alone fits no gates: it has no ``posterior/`` and its ``plan.json`` is the block plan. In a
combined run (``depth="srinit"``) the gated network is the shallower one, rebuilt by removing the blocks of
``depth/plan.json`` from the architecture.

:func:`load_run` rebuilds a :class:`~pyroprune.diagnostics.run.RunArtifacts` and the data splits from it.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, fields
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .blocks import remove_blocks
from .data import DataSplits, load_dataset
from .diagnostics.run import RunArtifacts
from .distributions import LogUniform
from .gates import GatedNet
from .guides import NormalNoiseGuide, TruncatedLogNormalGuide
from .infer.svgd import SVGD
from .models import build_model
from .pipeline import PruneConfig, PruneResult
from .plan import PruningPlan, atomic_write_text
from .posterior import posterior_from_guide
from .serialization import load_pruned, save_pruned

__all__ = ["save_run", "load_run", "run_data_spec", "artifacts_from_result", "RUN_FORMAT"]

RUN_FORMAT = "pyroprune.Run"
_REQUIRED = (
    "run.json",
    "plan.json",
    "model/model.json",
    "model/model.safetensors",
    "dense/model.json",
    "dense/model.safetensors",
)
_POSTERIOR = ("posterior/net.safetensors", "posterior/guide.safetensors")
_DEPTH = ("depth/plan.json", "depth/sensitivity.json")


def artifacts_from_result(result: PruneResult, dense=None) -> RunArtifacts:
    """The :class:`RunArtifacts` of a fresh :func:`~pyroprune.pipeline.prune_network` result."""
    return RunArtifacts(
        result.gated,
        result.guide,
        result.posterior,
        result.plan,
        result.pruned,
        dense,
        result.config.method,
        result.config.seed,
        result.depth,
    )


def _save_state(state: dict, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(tmp))
    os.replace(tmp, path)


def save_run(
    directory: str | os.PathLike,
    result: PruneResult,
    dense,
    *,
    arch: dict,
    data: dict,
    metadata: dict | None = None,
) -> None:
    """Write the artefacts of a fitted run into ``directory`` (each file atomically).

    :param arch: ``{"name": registry name, "kwargs": {...}}`` of the network.
    :param data: ``{"name": "digits", "seed": split seed}``, enough to reload the same splits.
    """
    from . import __version__

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    result.plan.save(directory / "plan.json")
    save_pruned(result.pruned, directory / "model", arch=arch)
    save_pruned(dense, directory / "dense", arch=arch)
    if result.gated is not None:
        (directory / "posterior").mkdir(exist_ok=True)
        _save_state(result.gated.net.state_dict(), directory / "posterior" / "net.safetensors")
        _save_state(_guide_state(result), directory / "posterior" / "guide.safetensors")
    if result.depth is not None:  # SR-init: the block plan and the measured drops
        (directory / "depth").mkdir(exist_ok=True)
        result.depth.plan.save(directory / "depth" / "plan.json")
        result.depth.sensitivity.save(directory / "depth" / "sensitivity.json")
    doc = {
        "format": RUN_FORMAT,
        "version": 1,
        "pyroprune_version": __version__,
        "arch": arch,
        "data": data,
        "config": asdict(result.config),
        "guide": None if result.guide is None else type(result.guide).__name__,
        "history": result.history.epochs,
        "finetune": result.finetune_history,
        "metadata": metadata or {},
    }
    if result.depth is not None:
        doc["depth"] = {"method": "srinit", "finetune": result.depth.finetune_history}
    if isinstance(result.guide, NormalNoiseGuide):  # RBP: the per-structure Dirac-like prior of the final model
        doc["gate_prior"] = {
            "kind": "dirac-like",
            "eps": {s.name: result.gated.prior(s).eps.detach().cpu().double().tolist() for s in result.gated.sites},
        }
    if isinstance(result.guide, SVGD):  # DLLP: the discrete prior's keep logits and the relaxed model's settings
        model = result.guide.model
        doc["gate_prior"] = {
            "kind": "dllp",
            "keep_logits": {
                s.name: model.keep_logit(s.name).detach().cpu().double().tolist() for s in result.gated.sites
            },
            "temperature": model.temperature,
        }
    atomic_write_text(directory / "run.json", json.dumps(doc, indent=1))


def _guide_state(result: PruneResult) -> dict:
    """What ``guide.safetensors`` holds: the guide's parameters, or for SVGD the particles and their scores."""
    if isinstance(result.guide, SVGD):
        state = {"particles": result.guide.particles}
        if result.posterior.sample_scores is not None:
            state["sample_scores"] = result.posterior.sample_scores
        return state
    return result.guide.state_dict()


def load_data(spec: dict, device="cpu", root=None) -> DataSplits:
    """The data splits a run was fitted on (``spec`` as recorded in ``run.json``; ``root`` overrides its root).

    The digits are flat 64-vectors unless the spec says ``flatten = false`` (or ``image = true``): the demo's run
    directories record only ``name`` and ``seed``.
    """
    if spec.get("name") == "digits":
        flatten = bool(spec.get("flatten", not spec.get("image", False)))
        return load_dataset(
            "digits", val_size=spec.get("val_size"), seed=int(spec.get("seed", 0)), device=device, flatten=flatten
        )
    return load_dataset(
        spec["name"],
        root or spec.get("root"),
        val_size=spec.get("val_size"),
        seed=int(spec.get("seed", 0)),
        device=device,
        flatten=bool(spec.get("flatten", False)),
    )


def run_data_spec(directory: str | os.PathLike) -> dict:
    """The data set description recorded in a run directory's ``run.json``."""
    path = Path(directory) / "run.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found (not a pyroprune run directory?)")
    try:
        return dict(json.loads(path.read_text()).get("data") or {})
    except (json.JSONDecodeError, AttributeError) as e:
        raise ValueError(f"{path} is not a pyroprune run description") from e


def load_run(directory: str | os.PathLike, device="cpu", data_root=None) -> tuple[RunArtifacts, DataSplits]:
    """Rebuild a run written by :func:`save_run`.

    :raises FileNotFoundError: naming every missing file.
    :raises ValueError: if ``run.json`` is not a pyroprune run or was written by an incompatible version.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"run directory not found: {directory}")
    doc = None
    if (directory / "run.json").is_file():
        try:
            doc = json.loads((directory / "run.json").read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{directory / 'run.json'} is not valid JSON: {e}") from e
    required = list(_REQUIRED)
    if isinstance(doc, dict):
        required += list(_POSTERIOR) if doc.get("guide") is not None else []
        required += list(_DEPTH) if doc.get("depth") else []
    missing = [name for name in required if not (directory / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{directory} is not a complete pyroprune run: missing {', '.join(missing)}")
    if not isinstance(doc, dict) or doc.get("format") != RUN_FORMAT:
        raise ValueError(f"{directory / 'run.json'} is not a pyroprune run description")
    if doc.get("version") != 1:
        raise ValueError(f"{directory / 'run.json'}: run format version {doc.get('version')!r} is not supported (1)")
    guides = (TruncatedLogNormalGuide.__name__, NormalNoiseGuide.__name__, SVGD.__name__)
    if doc.get("guide") not in guides and not (doc.get("guide") is None and doc.get("depth")):
        raise ValueError(f"{directory / 'run.json'}: guide {doc.get('guide')!r} cannot be rebuilt from a run directory")
    known = {f.name for f in fields(PruneConfig)}
    config = PruneConfig(**{k: v for k, v in doc["config"].items() if k in known})
    data = load_data(doc["data"], device, root=data_root)
    depth = _load_depth(directory, doc) if doc.get("depth") else None
    pruned = load_pruned(directory / "model").to(device)
    dense = load_pruned(directory / "dense").to(device)
    if doc["guide"] is None:  # SR-init alone: no gates
        plan = PruningPlan.load(directory / "plan.json")
        return RunArtifacts(None, None, None, plan, pruned, dense, config.method, config.seed, depth), data
    net = build_model(doc["arch"]["name"], **doc["arch"].get("kwargs", {}))
    if depth is not None:  # the width stage gated the shallower network
        net = remove_blocks(net, depth.removed, inplace=True)
    net.load_state_dict(load_file(str(directory / "posterior" / "net.safetensors")))
    net.to(device)
    posterior = None
    if doc["guide"] == SVGD.__name__:  # DLLP (svgd schedule): the particles over the relaxed keep indicators
        gated, guide, posterior = _load_dllp(directory, doc, config, net, data)
    elif doc["guide"] == NormalNoiseGuide.__name__:  # RBP (recursive schedule): per-structure Dirac-like prior
        from .distributions import DiracLike

        eps = (doc.get("gate_prior") or {}).get("eps") or {}
        ref = next(net.parameters())
        prior = {k: DiracLike(torch.tensor(v, dtype=ref.dtype, device=ref.device)) for k, v in eps.items()}
        gated = GatedNet(net, data.train.x[:2], prior=prior, num_data=len(data.train))
        guide = NormalNoiseGuide(gated)
    else:
        gated = GatedNet(
            net,
            data.train.x[:2],
            prior=LogUniform(config.prior_low, config.prior_high),
            num_data=len(data.train),
            input_gates=list(config.input_gates),
        )
        guide = TruncatedLogNormalGuide(gated, config.prior_low, config.prior_high)
    if posterior is None:
        guide.load_state_dict(load_file(str(directory / "posterior" / "guide.safetensors")))
        guide.to(device)
        posterior = posterior_from_guide(guide, gated)
    plan = PruningPlan.load(directory / "plan.json")
    if [sp.site.name for sp in plan.sites] != [s.name for s in gated.sites]:
        raise ValueError(f"{directory / 'plan.json'} does not match the network's gate sites")
    run = RunArtifacts(gated, guide, posterior, plan, pruned, dense, config.method, config.seed, depth)
    return run, data


def _load_depth(directory: Path, doc: dict):
    """The SR-init depth stage of a run: block plan, sensitivity, and the fine-tuning that followed it."""
    from .infer.srinit import DepthStage
    from .sensitivity import BlockSensitivity

    plan = PruningPlan.load(directory / "depth" / "plan.json")
    if not all(sp.site.is_block for sp in plan.sites):
        raise ValueError(f"{directory / 'depth' / 'plan.json'} is not a block plan (sites of kind 'block')")
    sensitivity = BlockSensitivity.load(directory / "depth" / "sensitivity.json")
    return DepthStage(sensitivity, plan, list((doc.get("depth") or {}).get("finetune", [])))


def _load_dllp(directory: Path, doc: dict, config: PruneConfig, net, data: DataSplits):
    """The gated network (discrete prior), the SVGD engine with its particles, and their posterior."""
    import pyro.distributions as dist

    from .infer.dllp import particle_posterior
    from .lossless import LosslessGateModel

    prior = doc.get("gate_prior") or {}
    if prior.get("kind") != "dllp" or not isinstance(prior.get("keep_logits"), dict):
        raise ValueError(f"{directory / 'run.json'}: an SVGD run needs 'gate_prior' with the DLLP keep logits")
    ref = next(net.parameters())
    logits = {k: torch.tensor(v, dtype=ref.dtype, device=ref.device) for k, v in prior["keep_logits"].items()}
    gated = GatedNet(net, data.train.x[:2], num_data=len(data.train), input_gates=list(config.input_gates))
    gated.set_prior({k: dist.Bernoulli(logits=v) for k, v in logits.items()})
    model = LosslessGateModel(
        gated,
        logits,
        float(prior.get("temperature", config.temperature_end)),
        config.lossless_weight,
        config.label_weight,
    )
    state = load_file(str(directory / "posterior" / "guide.safetensors"))
    particles = state["particles"].to(ref)
    engine = SVGD(model, config.kernel, num_particles=int(particles.shape[0]), lr=config.guide_lr)
    engine.setup(data.train.x[:2], data.train.y[:2], num_data=len(data.train))
    if tuple(engine.particles.shape) != tuple(particles.shape):
        raise ValueError(f"{directory}: stored particles {tuple(particles.shape)} do not fit the network's gates")
    with torch.no_grad():
        engine.particles.copy_(particles)
    scores = state.get("sample_scores")
    posterior = particle_posterior(engine, gated, None if scores is None else scores.to(ref.device))
    return gated, engine, posterior
