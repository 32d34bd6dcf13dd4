"""Gate posteriors as ArviZ DataTrees: layout, predictive values, plan masking, netCDF round trip, ArviZ calls."""

from __future__ import annotations

import hashlib

import matplotlib
import numpy as np
import pytest
import torch
import xarray as xr

from pyroprune.data import load_digits
from pyroprune.diagnostics.datatree import (
    FORMAT,
    PROBABILITIES_GROUP,
    build_datatree,
    load_datatree,
    posterior_predictive_draws,
    predictive_probabilities,
    save_datatree,
)
from pyroprune.distributions import LogUniform
from pyroprune.gates import GatedNet
from pyroprune.guides import TruncatedLogNormalGuide
from pyroprune.infer import fit_svi, train_plain
from pyroprune.models import BMRSMLP
from pyroprune.plan import PruningPlan, SitePlan
from pyroprune.posterior import posterior_from_guide

matplotlib.use("Agg")

NUM_DRAWS = 40
BATCH = 128
GROUPS = {"posterior", "prior", "posterior_predictive", "log_likelihood", "observed_data", PROBABILITIES_GROUP}


@pytest.fixture(scope="module")
def fitted():
    """Two SVI runs (seeds 0 and 1) of the same briefly trained MLP: the two chains."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        data = load_digits(seed=0)
        net = BMRSMLP(in_features=64, hidden=8, depth=2)
        train_plain(net, data.train, epochs=2, seed=0, progress=False)
        runs = []
        for seed in (0, 1):
            gated = GatedNet(net, data.train.x[:2], prior=LogUniform(-20.0, 0.0), num_data=len(data.train))
            guide = TruncatedLogNormalGuide(gated)
            fit_svi(gated, guide, data.train, epochs=3, guide_lr=0.05, progress=False, seed=seed)
            runs.append((gated, posterior_from_guide(guide, gated)))
    return data, runs


@pytest.fixture(scope="module")
def tree(fitted):
    data, runs = fitted
    return build_datatree(
        runs,
        data.test,
        method="bmrs-n",
        prior=LogUniform(-20.0, 0.0),
        guide_name="TruncatedLogNormalGuide",
        num_draws=NUM_DRAWS,
        batch_size=BATCH,
        seed=3,
        extra_attrs={"schedule": "post-training", "epochs": 3, "tags": ["a", "b"], "flag": True},
    )


def test_layout_groups_variables_dims_and_attrs(fitted, tree):
    data, runs = fitted
    sites = runs[0][0].sites
    n = len(data.test)
    assert GROUPS <= set(tree.children)
    for group in ("posterior", "prior"):
        ds = tree[group]
        assert set(ds.data_vars) == {s.name for s in sites}
        for s in sites:
            assert ds[s.name].dims == ("chain", "draw", s.dim_name)
            assert ds[s.name].shape == (2, NUM_DRAWS, s.size)
    assert [s.dim_name for s in sites] == ["features_0_unit", "features_2_unit"]
    for group in ("posterior_predictive", "log_likelihood"):
        assert set(tree[group].data_vars) == {"y"}
        assert tree[group]["y"].dims == ("chain", "draw", "example")
        assert tree[group]["y"].shape == (2, NUM_DRAWS, n)
    assert tree["observed_data"]["y"].dims == ("example",)
    np.testing.assert_array_equal(tree["observed_data"]["y"].values, data.test.y.numpy())
    probs = predictive_probabilities(tree)
    assert probs.dims == ("chain", "draw", "example", "class")
    assert probs.shape == (2, NUM_DRAWS, n, 10) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum("class").values, 1.0, atol=1e-5)

    attrs = tree.attrs
    assert attrs["pyroprune_format"] == FORMAT
    assert attrs["method"] == "bmrs-n" and attrs["guide_name"] == "TruncatedLogNormalGuide"
    assert attrs["prior"] == "LogUniform(low=-20.0, high=0.0)"
    assert attrs["seed"] == 3
    assert attrs["schedule"] == "post-training" and attrs["epochs"] == 3
    assert attrs["tags"] == '["a", "b"]' and attrs["flag"] == 1
    for key in ("pyroprune_version", "torch_version", "pyro_version", "arviz_version"):
        assert isinstance(attrs[key], str) and attrs[key]

    for group in ("posterior", "prior"):
        for s in sites:
            v = tree[group][s.name].values
            assert np.all(v > 0) and np.all(v <= 1)
    pred = tree["posterior_predictive"]["y"].values
    assert pred.dtype == tree["observed_data"]["y"].dtype and pred.min() >= 0 and pred.max() <= 9
    assert np.all(tree["log_likelihood"]["y"].values <= 0)
    # the chains are different runs: their posteriors differ
    first = sites[0].name
    assert not np.allclose(
        tree["posterior"][first].sel(chain=0).mean("draw"), tree["posterior"][first].sel(chain=1).mean("draw")
    )


@torch.no_grad()
def test_log_likelihood_and_probabilities_match_a_direct_forward(fitted, tree):
    data, runs = fitted
    chain, draw = 1, 7
    gated = runs[chain][0]
    # one gate vector per site: forward_with_gates takes its weight-space path, independent of the batched one
    gates = {s.name: torch.tensor(tree["posterior"][s.name].values[chain, draw]) for s in gated.sites}
    x, y = next(data.test.batches(BATCH))
    gated.eval()
    logp = torch.log_softmax(gated.forward_with_gates(x, gates), dim=-1)
    expected = logp.gather(-1, y[:, None]).squeeze(-1)
    got = tree["log_likelihood"]["y"].values[chain, draw, :BATCH]
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-5, atol=1e-5)
    probs = predictive_probabilities(tree).values[chain, draw, :BATCH]
    np.testing.assert_allclose(probs, logp.exp().numpy(), rtol=1e-5, atol=1e-6)


@torch.no_grad()
def test_plan_sets_pruned_gates_to_zero_in_every_draw(fitted):
    data, runs = fitted
    gated, posterior = runs[0]
    site = gated.sites[0]
    keep = [i % 3 != 0 for i in range(site.size)]
    plan = PruningPlan("test", {}, [SitePlan(site, keep, [0.0] * site.size)])
    out = posterior_predictive_draws(gated, posterior, data.test, num_draws=6, batch_size=BATCH, seed=2, plan=plan)
    full = posterior_predictive_draws(gated, posterior, data.test, num_draws=6, batch_size=BATCH, seed=2)
    torch.testing.assert_close(out["theta"][site.name], full["theta"][site.name])  # same draws, only masked
    gates = dict(out["theta"])
    gates[site.name] = gates[site.name] * torch.tensor(keep, dtype=gates[site.name].dtype)
    gated.eval()
    direct = torch.softmax(gated.forward_with_gates(data.test.x, gates), dim=-1)
    torch.testing.assert_close(out["probs"], direct, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(out["probs"], full["probs"])
    assert out["log_likelihood"].shape == (6, len(data.test)) and out["y_pred"].shape == (6, len(data.test))


def test_one_forward_pass_per_batch(fitted, monkeypatch):
    data, runs = fitted
    gated, posterior = runs[0]
    calls = []
    original = gated.forward_with_gates

    def counting(x, gates):
        calls.append({name: tuple(z.shape) for name, z in gates.items()})
        return original(x, gates)

    monkeypatch.setattr(gated, "forward_with_gates", counting)
    num_draws, batch_size = 25, 100
    out = posterior_predictive_draws(gated, posterior, data.test, num_draws=num_draws, batch_size=batch_size)
    num_batches = -(-len(data.test) // batch_size)
    assert len(calls) == num_batches
    assert all(shapes == {s.name: (num_draws, s.size) for s in gated.sites} for shapes in calls)
    assert out["probs"].shape == (num_draws, len(data.test), 10)


def test_seeded_and_leaves_the_global_random_state_alone(fitted):
    data, runs = fitted
    gated, posterior = runs[0]
    state = torch.get_rng_state()
    a = posterior_predictive_draws(gated, posterior, data.test, num_draws=5, seed=11)
    b = posterior_predictive_draws(gated, posterior, data.test, num_draws=5, seed=11)
    assert torch.equal(torch.get_rng_state(), state)
    for key in ("log_likelihood", "probs", "y_pred"):
        torch.testing.assert_close(a[key], b[key])


def test_runs_with_different_sites_are_refused(fitted):
    data, runs = fitted
    gated, _ = runs[0]
    other = GatedNet(gated.net, data.train.x[:2], exclude=["features.2"], num_data=len(data.train))
    guide = TruncatedLogNormalGuide(other)
    with pytest.raises(ValueError, match="features.2"):
        build_datatree(
            [runs[0], (other, posterior_from_guide(guide, other))],
            data.test,
            method="m",
            prior="p",
            guide_name="g",
            num_draws=2,
        )
    with pytest.raises(ValueError, match="features.2"):  # a posterior of another network
        posterior_predictive_draws(other, runs[0][1], data.test, num_draws=2)


def test_netcdf_round_trip_and_no_silent_overwrite(tree, tmp_path):
    path = tmp_path / "gates.nc"
    assert save_datatree(tree, path) == path
    loaded = load_datatree(path)
    assert set(loaded.children) == set(tree.children)
    for group in tree.children:
        xr.testing.assert_identical(loaded[group].to_dataset(), tree[group].to_dataset())
    assert loaded.attrs == tree.attrs
    assert loaded.identical(tree)

    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(FileExistsError, match="gates.nc"):
        save_datatree(tree.assign(extra=xr.DataArray(1)), path)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gates.nc"]  # no temporary file left behind
    save_datatree(tree, path, force=True)
    assert load_datatree(path).identical(tree)


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.nc"):
        load_datatree(tmp_path / "missing.nc")
    garbage = tmp_path / "garbage.nc"
    garbage.write_bytes(b"not netcdf")
    with pytest.raises(ValueError, match="garbage.nc"):
        load_datatree(garbage)
    foreign = tmp_path / "foreign.nc"
    xr.DataTree(xr.Dataset({"a": ("x", [1.0, 2.0])})).to_netcdf(foreign, engine="h5netcdf")
    with pytest.raises(ValueError, match="foreign.nc.*not a pyroprune DataTree"):
        load_datatree(foreign)


@pytest.mark.filterwarnings("ignore:Estimated shape parameter of Pareto")
def test_arviz_stats_work_unchanged(fitted, tree):
    import arviz as az

    _, runs = fitted
    summary = az.summary(tree, kind="stats")
    assert len(summary) == sum(s.size for s in runs[0][0].sites)
    assert "mean" in summary.columns and "sd" in summary.columns
    elpd = az.loo(tree)
    assert np.isfinite(elpd.elpd) and elpd.elpd < 0
    assert elpd.n_data_points == tree["observed_data"].sizes["example"]
    assert elpd.n_samples == 2 * NUM_DRAWS


def _figure(pc):
    import matplotlib.figure

    fig = pc.viz["figure"].item()
    assert isinstance(fig, matplotlib.figure.Figure)
    return fig


def test_arviz_plots_work_unchanged(fitted, tree):
    import arviz as az
    import matplotlib.pyplot as plt

    site = fitted[1][0][0].sites[0]
    try:
        _figure(az.plot_forest(tree, var_names=[site.name], backend="matplotlib"))
        _figure(az.plot_dist(tree, var_names=[site.name], coords={site.dim_name: [0, 1]}, backend="matplotlib"))
        _figure(az.plot_ppc_pava(tree, data_type="categorical", backend="matplotlib"))
    finally:
        plt.close("all")
