"""Resumable SVI: checkpoints, resuming after a kill gives the uninterrupted run's result, clear errors."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from pyroprune.checkpoint import JSON_FILE, TENSOR_FILE, load_checkpoint
from pyroprune.data import TensorSplit, load_digits
from pyroprune.gates import GatedNet
from pyroprune.guides import TruncatedLogNormalGuide
from pyroprune.infer import fit_svi
from pyroprune.methods import decide
from pyroprune.models import BMRSMLP
from pyroprune.posterior import posterior_from_guide

SEED = 3
FIT = {"epochs": 4, "batch_size": 64, "lr": 3e-3, "guide_lr": 3e-2, "seed": SEED, "progress": False}


def build(train: TensorSplit) -> tuple[GatedNet, TruncatedLogNormalGuide]:
    torch.manual_seed(0)
    net = BMRSMLP(in_features=64, hidden=8, depth=2)
    gated = GatedNet(net, train.x[:2], num_data=len(train))
    return gated, TruncatedLogNormalGuide(gated)


@pytest.fixture(scope="module")
def train() -> TensorSplit:
    return load_digits(seed=0).train


class Killed(KeyboardInterrupt):
    pass


def masking(gated: GatedNet, guide: TruncatedLogNormalGuide, kill_after: int | None = None):
    """A continuous-schedule-like ``on_epoch_end``: prunes the ``epoch`` lowest-``loc`` gates of every site."""

    def on_epoch_end(epoch: int, record: dict) -> dict:
        masks = {}
        for site, loc in zip(gated.sites, guide.loc.values(), strict=True):
            keep = torch.ones(site.size, dtype=torch.bool)
            keep[loc.detach().cpu().argsort()[:epoch]] = False
            masks[site.name] = keep & gated.masks.get(site.name, keep)
        gated.set_masks(masks)
        if kill_after is not None and epoch == kill_after:
            raise Killed
        return {"kept": float(sum(int(m.sum()) for m in masks.values()))}

    return on_epoch_end


def killer(after: int):
    def on_epoch_end(epoch: int, record: dict) -> None:
        if epoch == after:
            raise Killed

    return on_epoch_end


def assert_same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=0, msg=k)


def plan_of(gated: GatedNet, guide: TruncatedLogNormalGuide) -> dict:
    return decide(posterior_from_guide(guide, gated), "bmrs-n", gated).to_dict()


@pytest.mark.parametrize("with_masks", [False, True], ids=["plain", "masks"])
def test_resume_after_interrupt_equals_uninterrupted_run(train, tmp_path, with_masks):
    gated_a, guide_a = build(train)
    cb_a = masking(gated_a, guide_a) if with_masks else None
    hist_a = fit_svi(gated_a, guide_a, train, **FIT, on_epoch_end=cb_a, checkpoint_dir=tmp_path / "a")
    assert (tmp_path / "a" / TENSOR_FILE).is_file() and (tmp_path / "a" / JSON_FILE).is_file()

    gated_b, guide_b = build(train)
    cb_b = masking(gated_b, guide_b, kill_after=3) if with_masks else killer(3)
    with pytest.raises(Killed):
        fit_svi(gated_b, guide_b, train, **FIT, on_epoch_end=cb_b, checkpoint_dir=tmp_path / "b")
    assert json.loads((tmp_path / "b" / JSON_FILE).read_text())["epoch"] == 2  # killed after epoch 2
    torch.manual_seed(1234)  # the resumed run must not depend on the global RNG state it starts with
    gated_c, guide_c = build(train)
    cb_c = masking(gated_c, guide_c) if with_masks else None
    hist_c = fit_svi(gated_c, guide_c, train, **FIT, on_epoch_end=cb_c, checkpoint_dir=tmp_path / "b", resume=True)

    assert_same_state(gated_a, gated_c)
    assert_same_state(guide_a, guide_c)
    assert [r["epoch"] for r in hist_c.epochs] == [1, 2, 3, 4]
    if with_masks:
        assert gated_c.masks.keys() == gated_a.masks.keys()
        for k in gated_a.masks:
            assert torch.equal(gated_a.masks[k], gated_c.masks[k])
    assert hist_c.epochs == hist_a.epochs
    assert plan_of(gated_a, guide_a) == plan_of(gated_c, guide_c)


def test_resume_without_checkpoint_starts_from_scratch(train, tmp_path):
    gated_a, guide_a = build(train)
    fit_svi(gated_a, guide_a, train, **{**FIT, "epochs": 2})
    gated_b, guide_b = build(train)
    hist = fit_svi(gated_b, guide_b, train, **{**FIT, "epochs": 2}, checkpoint_dir=tmp_path / "new", resume=True)
    assert [r["epoch"] for r in hist.epochs] == [1, 2]
    assert_same_state(gated_a, gated_b)
    assert_same_state(guide_a, guide_b)


SCRIPT = (
    """
import os, sys
import torch
from pyroprune.data import load_digits
from pyroprune.gates import GatedNet
from pyroprune.guides import TruncatedLogNormalGuide
from pyroprune.infer import fit_svi
from pyroprune.models import BMRSMLP
from pyroprune.data import TensorSplit
"""
    + inspect.getsource(build)
    + """
train = load_digits(seed=0).train
gated, guide = build(train)

def on_epoch_end(epoch, record):
    if epoch == 2:
        os._exit(1)  # a kill: no clean-up, no exception handling

fit_svi(gated, guide, train, epochs=4, batch_size=64, lr=3e-3, guide_lr=3e-2, seed=int(sys.argv[2]), progress=False,
        on_epoch_end=on_epoch_end, checkpoint_dir=sys.argv[1], fingerprint={"model": "bmrs-mlp"})
"""
)


def test_killed_process_resumes_to_the_uninterrupted_result(train, tmp_path):
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent(SCRIPT))
    ckpt = tmp_path / "ckpt"
    cmd = [sys.executable, str(script), str(ckpt), str(SEED)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert (ckpt / JSON_FILE).is_file()
    assert not [p.name for p in ckpt.iterdir() if p.name.endswith(".tmp")]

    gated_a, guide_a = build(train)
    fit_svi(gated_a, guide_a, train, **FIT)
    gated_b, guide_b = build(train)
    hist = fit_svi(gated_b, guide_b, train, **FIT, checkpoint_dir=ckpt, resume=True, fingerprint={"model": "bmrs-mlp"})
    # the kill came inside epoch 2's callback: the checkpoint holds epoch 1, and epochs 2-4 were run again
    assert [r["epoch"] for r in hist.epochs] == [1, 2, 3, 4]
    assert_same_state(gated_a, gated_b)
    assert_same_state(guide_a, guide_b)
    assert plan_of(gated_a, guide_a) == plan_of(gated_b, guide_b)


# -- errors ---------------------------------------------------------------------------------------------------


@pytest.fixture
def checkpoint(train, tmp_path) -> Path:
    gated, guide = build(train)
    fit_svi(gated, guide, train, **{**FIT, "epochs": 1}, checkpoint_dir=tmp_path / "c", fingerprint={"model": "m"})
    return tmp_path / "c"


def snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def resume(train, directory: Path, fingerprint: dict, **kwargs):
    gated, guide = build(train)
    before = {k: v.clone() for k, v in gated.state_dict().items()}
    fit_kwargs = {**FIT, "epochs": 3, **kwargs}
    try:
        fit_svi(gated, guide, train, **fit_kwargs, checkpoint_dir=directory, resume=True, fingerprint=fingerprint)
    finally:
        for k, v in gated.state_dict().items():  # nothing restored half-way
            assert torch.equal(v, before[k]), k


def test_foreign_fingerprint_is_refused(train, checkpoint):
    files = snapshot(checkpoint)
    with pytest.raises(ValueError, match="model 'm', this run is 'lenet5-caffe'"):
        resume(train, checkpoint, {"model": "lenet5-caffe"})
    with pytest.raises(ValueError, match=r"fit_svi\.seed 3, this run is 4"):
        resume(train, checkpoint, {"model": "m"}, seed=4)
    assert snapshot(checkpoint) == files


def test_corrupt_tensor_file(train, checkpoint):
    path = checkpoint / TENSOR_FILE
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    files = snapshot(checkpoint)
    with pytest.raises(ValueError, match=f"{TENSOR_FILE} is corrupt"):
        resume(train, checkpoint, {"model": "m"})
    assert snapshot(checkpoint) == files


def test_corrupt_json_file(train, checkpoint):
    path = checkpoint / JSON_FILE
    path.write_text(path.read_text()[:100])
    files = snapshot(checkpoint)
    with pytest.raises(ValueError, match=f"{JSON_FILE} is corrupt"):
        resume(train, checkpoint, {"model": "m"})
    assert snapshot(checkpoint) == files


@pytest.mark.parametrize("name", [TENSOR_FILE, JSON_FILE])
def test_missing_file(train, checkpoint, name):
    (checkpoint / name).unlink()
    files = snapshot(checkpoint)
    if name == TENSOR_FILE:
        with pytest.raises(FileNotFoundError, match=TENSOR_FILE):
            resume(train, checkpoint, {"model": "m"})
    with pytest.raises(FileNotFoundError, match=name):
        gated, guide = build(train)
        load_checkpoint(
            checkpoint,
            gated=gated,
            guide=guide,
            optimizer=torch.optim.Adam(gated.parameters()),
            generator=torch.Generator(),
            fingerprint={},
        )
    assert snapshot(checkpoint) == files


def test_shape_mismatch_names_the_parameter(train, checkpoint):
    from pyroprune.checkpoint import _read

    fingerprint = _read(checkpoint)[0]["fingerprint"]
    torch.manual_seed(0)
    gated = GatedNet(BMRSMLP(in_features=64, hidden=6, depth=2), train.x[:2], num_data=len(train))
    guide = TruncatedLogNormalGuide(gated)
    before = {k: v.clone() for k, v in gated.state_dict().items()}
    opt = torch.optim.Adam([*gated.parameters(), *guide.parameters()])
    gen = torch.Generator()
    with pytest.raises(ValueError, match=r"model: '.*weight' has shape \(8, 64\) in the checkpoint, \(6, 64\) here"):
        load_checkpoint(checkpoint, gated=gated, guide=guide, optimizer=opt, generator=gen, fingerprint=fingerprint)
    for k, v in gated.state_dict().items():
        assert torch.equal(v, before[k])
