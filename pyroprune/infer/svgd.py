r"""Stein variational gradient descent (SVGD) for Pyro models, built for the gates of networks.

SVGD (Liu & Wang, 2016) moves :math:`K` particles :math:`x_1, \dots, x_K \in \mathbb R^D` (the model's latent
sites, flattened and concatenated, in *unconstrained* space) along

.. math::

    \phi(x_i) = \frac1K \sum_{j=1}^K \Big[ k(x_j, x_i)\, \nabla_{x_j} \log p(x_j)
        + \nabla_{x_j} k(x_j, x_i) \Big],

a kernel-smoothed gradient of the log joint (attraction) plus a repulsion that keeps the particles apart; the
optimiser is handed :math:`-\phi` as the gradient. :math:`\log p` is the density in unconstrained space: the
model's log joint at :math:`T(u)` plus :math:`\log|\det J_T(u)|` of the support bijection :math:`T`.

**Memory.** ``pyro.infer.SVGD``'s kernels build ``[K, K, D]`` tensors (one per particle pair and dimension),
i.e. :math:`O(K^2 D)` memory. The kernels here only ever form the ``[K, K]`` kernel matrix and ``[K, D]``
tensors: for the RBF and IMQ kernels the repulsion is a matrix product,

.. math::

    \sum_j \nabla_{x_j} k(x_j, x_i) = c \Big( x_i \sum_j w_{ij} - \sum_j w_{ij} x_j \Big),

with :math:`w = k` and :math:`c = 2/h` for the RBF kernel :math:`k = \exp(-\|x_i - x_j\|^2 / h)`, and
:math:`w = (\alpha + \|x_i - x_j\|^2/h)^{\beta - 1}` and :math:`c = -2\beta/h` for the IMQ kernel
:math:`k = (\alpha + \|x_i - x_j\|^2/h)^\beta`, so a step costs :math:`O(K D + K^2)` memory
(``benchmarks/svgd_memory.py``).

**Vectorised particles.** The model runs once per step for all particles, inside a particle plate left of the
model's own plates (``max_plate_nesting``); a :class:`~pyroprune.gates.GatedNet` folds the particle dimension
into the batch, so :math:`K` particles cost one batched forward pass.

**Bandwidth.** The median heuristic of Liu & Wang (2016): :math:`h = \mathrm{med}_{i<j} \|x_i - x_j\|^2 /
\log(K + 1)` (the same constant as ``pyro.infer.RBFSteinKernel``, whose median is taken per dimension instead),
or a fixed ``bandwidth``.

References: Q. Liu, D. Wang, "Stein Variational Gradient Descent: A General Purpose Bayesian Inference
Algorithm", NeurIPS 2016; J. Gorham, L. Mackey, "Measuring Sample Quality with Kernels", ICML 2017 (IMQ).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import pyro
import pyro.poutine as poutine
import torch
from pyro.poutine.util import site_is_subsample
from torch import nn
from torch.distributions import biject_to

from ..data import TensorSplit
from .progress import progress_bar
from .svi import FitHistory, TrainingDiverged

__all__ = [
    "SteinKernel",
    "RBFKernel",
    "IMQKernel",
    "KERNELS",
    "make_kernel",
    "stein_direction",
    "LatentSite",
    "SVGD",
    "SVGDDiverged",
    "check_num_particles",
    "fit_svgd",
]


def check_num_particles(num_particles: object) -> None:
    """Raise a one-line ``ValueError`` unless ``num_particles`` is an integer >= 2."""
    if isinstance(num_particles, bool) or not isinstance(num_particles, int) or num_particles < 2:
        raise ValueError(
            f"SVGD needs num_particles >= 2 (got {num_particles!r}); with one particle the repulsion vanishes "
            "and SVGD is MAP: fit a point estimate with fit_svi and an AutoDelta guide instead"
        )


class SVGDDiverged(TrainingDiverged):
    """The particles became NaN or infinite; the engine holds the last finite particles."""


# -- kernels ---------------------------------------------------------------------------------------------------


def _squared_distances(x: torch.Tensor) -> torch.Tensor:
    """``[K, K]`` squared Euclidean distances between the rows of ``x`` (no ``[K, K, D]`` intermediate), as
    :math:`\\|x_i\\|^2 + \\|x_j\\|^2 - 2 x_i^\\top x_j` (what ``torch.cdist`` does for more than 25 rows).

    That form cancels catastrophically for rows close together far from the origin (float32: relative errors
    above 1 for distances of 1e-3 at coordinates near 5), so ``x`` should be centred (the caller does it: the
    distances are translation invariant). No ``torch.cdist``: it would also copy ``x`` twice, out of sight of
    :func:`~pyroprune.measure.peak_tensor_memory`."""
    norms = torch.linalg.vector_norm(x, dim=1).square()
    sq = (norms.unsqueeze(1) + norms.unsqueeze(0)).sub_(x @ x.T, alpha=2.0)
    return sq.clamp_min_(0.0).fill_diagonal_(0.0)


def _median_bandwidth(sq: torch.Tensor) -> torch.Tensor:
    k = sq.shape[0]
    iu = torch.triu_indices(k, k, offset=1, device=sq.device)
    med = sq[iu[0], iu[1]].median()
    # Coinciding particles (median 0) would divide by zero; any positive h gives k = 1 and zero repulsion there.
    return (med / math.log(k + 1)).clamp_min(torch.finfo(sq.dtype).tiny)


class SteinKernel(ABC):
    """A positive definite kernel for SVGD, evaluated without ``[K, K, D]`` tensors.

    :param bandwidth: a fixed bandwidth :math:`h > 0`; ``None`` (default) uses the median heuristic
        :math:`h = \\mathrm{med}_{i<j}\\|x_i - x_j\\|^2 / \\log(K + 1)` at every step.
    :param bandwidth_factor: multiplies the median-heuristic bandwidth.
    """

    def __init__(self, bandwidth: float | None = None, bandwidth_factor: float = 1.0) -> None:
        if bandwidth is not None and not (isinstance(bandwidth, int | float) and bandwidth > 0):
            raise ValueError(f"kernel 'bandwidth' must be a positive number or None, got {bandwidth!r}")
        if not (isinstance(bandwidth_factor, int | float) and bandwidth_factor > 0):
            raise ValueError(f"kernel 'bandwidth_factor' must be a positive number, got {bandwidth_factor!r}")
        self.bandwidth = bandwidth
        self.bandwidth_factor = float(bandwidth_factor)

    def bandwidth_of(self, sq: torch.Tensor) -> torch.Tensor:
        """The bandwidth :math:`h` for the ``[K, K]`` squared distances ``sq``."""
        if self.bandwidth is not None:
            return torch.as_tensor(float(self.bandwidth), dtype=sq.dtype, device=sq.device)
        return self.bandwidth_factor * _median_bandwidth(sq)

    @abstractmethod
    def weights(self, sq: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(k, w, c)``: the ``[K, K]`` kernel matrix, the repulsion weights and the repulsion constant, such that
        :math:`\\sum_j \\nabla_{x_j} k(x_j, x_i) = c\\,(x_i \\sum_j w_{ij} - \\sum_j w_{ij} x_j)`."""

    def matrix_and_repulsion(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``[K, K]`` kernel matrix and the ``[K, D]`` repulsion :math:`\\sum_j \\nabla_{x_j} k(x_j, x_i)`."""
        x = x - x.mean(0)  # both terms are translation invariant; centring keeps them accurate
        sq = _squared_distances(x)
        kmat, w, c = self.weights(sq, self.bandwidth_of(sq))
        repulsion = c * (x * w.sum(1, keepdim=True) - w @ x)
        return kmat, repulsion

    def __repr__(self) -> str:
        h = "median" if self.bandwidth is None else self.bandwidth
        return f"{type(self).__name__}(bandwidth={h})"


class RBFKernel(SteinKernel):
    """The Gaussian (RBF) kernel :math:`k(x, y) = \\exp(-\\|x - y\\|^2 / h)` (Liu & Wang, 2016)."""

    def weights(self, sq, h):
        kmat = torch.exp(-sq / h)
        return kmat, kmat, 2.0 / h


class IMQKernel(SteinKernel):
    """The inverse multiquadric kernel :math:`k(x, y) = (\\alpha + \\|x - y\\|^2 / h)^{\\beta}` (Gorham & Mackey,
    2017; ``pyro.infer.IMQSteinKernel`` uses the same form per dimension).

    :param alpha: :math:`\\alpha > 0`.
    :param beta: :math:`\\beta \\in (-1, 0)` for a kernel whose Stein discrepancy controls convergence.
    """

    def __init__(
        self, alpha: float = 0.5, beta: float = -0.5, bandwidth: float | None = None, bandwidth_factor: float = 1.0
    ) -> None:
        super().__init__(bandwidth, bandwidth_factor)
        if not alpha > 0:
            raise ValueError(f"IMQKernel: 'alpha' must be > 0, got {alpha}")
        if not beta < 0:
            raise ValueError(f"IMQKernel: 'beta' must be < 0, got {beta}")
        self.alpha, self.beta = float(alpha), float(beta)

    def weights(self, sq, h):
        base = self.alpha + sq / h
        return base.pow(self.beta), base.pow(self.beta - 1.0), -2.0 * self.beta / h


#: Kernel name -> class, for configuration files (``PruneConfig.kernel``).
KERNELS: dict[str, type[SteinKernel]] = {"rbf": RBFKernel, "imq": IMQKernel}


def make_kernel(kernel: str | SteinKernel | None) -> SteinKernel:
    """A kernel from its name (``"rbf"``, ``"imq"``), an instance, or ``None`` (RBF, median bandwidth)."""
    if kernel is None:
        return RBFKernel()
    if isinstance(kernel, SteinKernel):
        return kernel
    if isinstance(kernel, str) and kernel in KERNELS:
        return KERNELS[kernel]()
    raise ValueError(f"unknown SVGD kernel {kernel!r}; choose one of {', '.join(KERNELS)} or pass a SteinKernel")


def stein_direction(particles: torch.Tensor, grad_log_p: torch.Tensor, kernel: SteinKernel) -> torch.Tensor:
    """The SVGD update direction :math:`\\phi(x_i)` (module docstring) for ``[K, D]`` particles and the ``[K, D]``
    gradients :math:`\\nabla \\log p(x_i)`; memory :math:`O(KD + K^2)`."""
    kmat, repulsion = kernel.matrix_and_repulsion(particles)
    return (kmat @ grad_log_p + repulsion) / particles.shape[0]


# -- the engine ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LatentSite:
    """One latent sample site of the model: where it sits in a particle's flat vector, and its bijection."""

    name: str
    shape: tuple[int, ...]  # the site's value shape outside the particle plate (batch + event)
    offset: int
    numel: int  # its width in the flat vector: the number of unconstrained values
    transform: torch.distributions.Transform
    event_dim: int
    unconstrained_shape: tuple[int, ...]  # ``shape`` in unconstrained space (a simplex of C has C - 1 entries)


def _sum_per_particle(log_prob: torch.Tensor, num_particles: int, particle_dim: int) -> torch.Tensor:
    """Sum a site's (scaled) log-density over every dimension but the particle plate's: ``[K]``."""
    if log_prob.dim() < -particle_dim:
        return log_prob.sum().expand(num_particles)
    dim = log_prob.dim() + particle_dim
    moved = log_prob.movedim(dim, 0)
    return moved.reshape(moved.shape[0], -1).sum(1).expand(num_particles)


class SVGD(nn.Module):
    """SVGD over the continuous latent sites of a Pyro ``model``; an ``nn.Module`` holding the particles.

    ``SVGD(model, kernel, num_particles=K)`` traces ``model`` once (with the first ``step``'s arguments) to find
    its latent sites; the particles then live, flattened, in ``self.particles`` (``[K, D]``, unconstrained
    space). Parameters of ``model`` are not optimised (they are constants of the target density).

    :param model: a Pyro model; it must be vectorisable over a plate left of its own ``max_plate_nesting`` plates.
    :param kernel: ``"rbf"``, ``"imq"`` or a :class:`SteinKernel` (default: RBF, median bandwidth).
    :param num_particles: :math:`K \\ge 2`.
    :param max_plate_nesting: how many plates the model nests (a :class:`~pyroprune.gates.GatedNet`: 1).
    :param optimizer: a ``torch.optim`` class (or any callable ``params, lr=... -> Optimizer``).
    :param lr: its learning rate.
    :param init: initial particles: ``None`` draws them from the model's prior (one vectorised trace), a mapping
        site name -> constrained values with leading dimension ``K``, or a callable
        ``site -> constrained values [K, *shape]``.
    :raises ValueError: (when the model is first traced) for ``K < 2``, a discrete latent site, or non-finite
        initial particles.
    """

    def __init__(
        self,
        model: Callable,
        kernel: str | SteinKernel | None = None,
        *,
        num_particles: int,
        max_plate_nesting: int = 1,
        optimizer: Callable[..., torch.optim.Optimizer] = torch.optim.Adam,
        lr: float = 0.01,
        init: Mapping[str, torch.Tensor] | Callable[[LatentSite], torch.Tensor] | None = None,
    ) -> None:
        super().__init__()
        if not callable(model):
            raise TypeError(f"SVGD: model must be callable, got {type(model).__name__}")
        check_num_particles(num_particles)
        if not isinstance(max_plate_nesting, int) or max_plate_nesting < 0:
            raise ValueError(f"SVGD: 'max_plate_nesting' must be an integer >= 0, got {max_plate_nesting!r}")
        if not lr > 0:
            raise ValueError(f"SVGD: 'lr' must be > 0, got {lr}")
        self.model = model
        self.kernel = make_kernel(kernel)
        self.num_particles = num_particles
        self.max_plate_nesting = max_plate_nesting
        self._optimizer_cls, self._lr = optimizer, lr
        self._init = init
        self.sites: tuple[LatentSite, ...] = ()
        self.particles: nn.Parameter | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self._last_finite: torch.Tensor | None = None
        self._finite_so_far: torch.Tensor | None = None
        self.steps_done = 0

    @property
    def _particle_dim(self) -> int:
        return -self.max_plate_nesting - 1

    def _vectorized(self, num_particles: int, *args, **kwargs):
        with pyro.plate("_svgd_particles", num_particles, dim=self._particle_dim):
            return self.model(*args, **kwargs)

    # -- set-up ------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def setup(self, *args, **kwargs) -> None:
        """Trace the model (vectorised, values from the prior) and create the particles; called by the first
        :meth:`step` if needed."""
        with pyro.settings.context(module_local_params=True):
            trace = poutine.trace(self._vectorized).get_trace(self.num_particles, *args, **kwargs)
            # A support's parameters may carry the particle plate's batch shape ([K, 1, C] for a GatedNet's
            # LogUniform): bijections from a one-particle trace broadcast over any number of particles K'.
            single = poutine.trace(self._vectorized).get_trace(1, *args, **kwargs).nodes
        sites, values, offset = [], [], 0
        k = self.num_particles
        for name, node in trace.nodes.items():
            if node["type"] != "sample" or node["is_observed"] or site_is_subsample(node):
                continue
            fn = node["fn"]
            support = fn.support
            if support.is_discrete or node["infer"].get("enumerate"):
                raise ValueError(
                    f"SVGD: latent site {name!r} is discrete ({type(fn).__name__}); SVGD needs continuous latent "
                    "sites -- relax it (e.g. a concrete / RelaxedBernoulli distribution) or marginalise it out"
                )
            value = node["value"]
            pos = value.dim() - fn.event_dim + self._particle_dim  # the particle dim, left of the event dims
            if pos < 0 or value.shape[pos] != k:
                raise ValueError(
                    f"SVGD: latent site {name!r} does not vectorise over the particle plate (value shape "
                    f"{tuple(value.shape)}); check 'max_plate_nesting' ({self.max_plate_nesting})"
                )
            shape = tuple(value.shape[pos + 1 :])
            transform = biject_to(single[name]["fn"].support if name in single else support)
            # The unconstrained value may have another shape (a simplex of C entries has C - 1 free ones).
            unconstrained_shape = tuple(transform.inv(value).shape[pos + 1 :])
            numel = math.prod(unconstrained_shape)
            site = LatentSite(name, shape, offset, numel, transform, fn.event_dim, unconstrained_shape)
            sites.append(site)
            offset += numel
            values.append(self._initial_values(site, value))
        if not sites:
            raise ValueError("SVGD: the model has no latent sample sites")
        self.sites = tuple(sites)
        flat = torch.cat(
            [s.transform.inv(v).reshape(k, s.numel) for s, v in zip(self.sites, values, strict=True)], dim=1
        )
        bad = [s.name for s in self.sites if not torch.isfinite(flat[:, s.offset : s.offset + s.numel]).all()]
        if bad:
            raise ValueError(f"SVGD: initial particles are not finite at site(s) {', '.join(bad)}")
        self.particles = nn.Parameter(flat.contiguous())
        self.optimizer = self._optimizer_cls([self.particles], lr=self._lr)
        self._last_finite = flat.detach().clone()
        self._finite_so_far = torch.ones((), dtype=torch.bool, device=flat.device)

    def _initial_values(self, site: LatentSite, prior_value: torch.Tensor) -> torch.Tensor:
        k = self.num_particles
        if self._init is None:
            v = prior_value
        else:
            if callable(self._init) and not isinstance(self._init, Mapping):
                v = self._init(site)
            elif site.name in self._init:
                v = self._init[site.name]
            else:
                raise ValueError(f"SVGD: 'init' has no initial values for latent site {site.name!r}")
            v = torch.as_tensor(v, dtype=prior_value.dtype, device=prior_value.device)
            if v.numel() != k * math.prod(site.shape):
                raise ValueError(
                    f"SVGD: initial values of site {site.name!r} have shape {tuple(v.shape)}, expected "
                    f"({k}, {', '.join(map(str, site.shape))})"
                )
        return v.reshape(k, *site.shape)

    # -- the target density ------------------------------------------------------------------------------------

    def unpack(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """Site name -> unconstrained values ``[K, *unconstrained_shape]`` of flat ``[K, D]`` particles."""
        k = flat.shape[0]
        return {s.name: flat[:, s.offset : s.offset + s.numel].reshape(k, *s.unconstrained_shape) for s in self.sites}

    def _plate_shape(self, site: LatentSite, num_particles: int) -> tuple[int, ...]:
        # The particle dimension sits at max_plate_nesting batch dims left of the event: pad with ones.
        batch = len(site.shape) - site.event_dim
        pad = self.max_plate_nesting - batch
        return (num_particles,) + (1,) * max(pad, 0) + site.shape

    def log_density(self, flat: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """``[K']``: :math:`\\log p(x_k)` of the model in unconstrained space at flat particles ``flat`` of shape
        ``[K', D]`` (differentiable; ``K'`` need not be :attr:`num_particles`, e.g. one particle for a MAP step)."""
        values, log_det = {}, torch.zeros(flat.shape[0], dtype=flat.dtype, device=flat.device)
        unpacked = self.unpack(flat)
        for site in self.sites:
            u = unpacked[site.name]
            x = site.transform(u)
            ladj = site.transform.log_abs_det_jacobian(u, x)
            log_det = log_det + ladj.reshape(flat.shape[0], -1).sum(1)
            values[site.name] = x.reshape(self._plate_shape(site, flat.shape[0]))
        with pyro.settings.context(module_local_params=True):
            conditioned = poutine.condition(self._vectorized, data=values)
            trace = poutine.trace(conditioned).get_trace(flat.shape[0], *args, **kwargs)
        trace.compute_log_prob()
        total = log_det
        for node in trace.nodes.values():
            if node["type"] == "sample" and not site_is_subsample(node):
                total = total + _sum_per_particle(node["log_prob"], flat.shape[0], self._particle_dim)
        return total

    # -- stepping ----------------------------------------------------------------------------------------------

    def step(self, *args, check: bool = True, **kwargs) -> torch.Tensor:
        """One SVGD step; ``args``/``kwargs`` go to the model (e.g. a minibatch).

        :param check: raise :class:`SVGDDiverged` right away if the particles became non-finite (one host
            synchronisation); :func:`fit_svgd` passes ``False`` and calls :meth:`check_finite` once per epoch.
        :returns: the mean log density of the particles before the step (a detached device scalar).
        """
        if self.particles is None:
            self.setup(*args, **kwargs)
        particles = self.particles
        with torch.enable_grad():
            log_p = self.log_density(particles, *args, **kwargs)
            (grad,) = torch.autograd.grad(log_p.sum(), particles)
        with torch.no_grad():
            phi = stein_direction(particles.detach(), grad, self.kernel)
            particles.grad = -phi
            self.optimizer.step()
            particles.grad = None
            finite = torch.isfinite(particles).all() & torch.isfinite(log_p).all()
            self._finite_so_far &= finite
            # The last finite particles stay on the device; no synchronisation unless ``check``.
            self._last_finite = torch.where(self._finite_so_far, particles.detach(), self._last_finite)
        self.steps_done += 1
        if check:
            self.check_finite()
        return log_p.detach().mean()

    def check_finite(self) -> None:
        """Raise :class:`SVGDDiverged` if any step since the start produced non-finite particles or log density;
        the particles are first reset to the last finite ones (and the optimiser's state to zero)."""
        if self._finite_so_far is None or bool(self._finite_so_far):
            return
        with torch.no_grad():
            self.particles.copy_(self._last_finite)
        self.optimizer = self._optimizer_cls([self.particles], lr=self._lr)
        self._finite_so_far.fill_(True)
        raise SVGDDiverged(
            "SVGD diverged: the particles or their log density became NaN/inf; the last finite particles are kept "
            f"(engine.particles). Lower the learning rate (lr={self._lr}) or change the kernel bandwidth."
        )

    @torch.no_grad()
    def get_named_particles(self, constrained: bool = True) -> dict[str, torch.Tensor]:
        """Site name -> particles ``[K, *shape]`` (in the sites' supports, or unconstrained)."""
        if self.particles is None:
            raise RuntimeError("SVGD: no particles yet; call step() (or setup()) first")
        out = self.unpack(self.particles.detach())
        if constrained:
            out = {s.name: s.transform(out[s.name]) for s in self.sites}
        return out


def fit_svgd(
    engine: SVGD,
    train: TensorSplit,
    *,
    epochs: int,
    batch_size: int = 128,
    seed: int | None = None,
    model_kwargs: Mapping | None = None,
    before_step: Callable[[int, int], None] | None = None,
    on_epoch_end: Callable[[int, dict], dict | None] | None = None,
    progress: bool = True,
    description: str = "SVGD",
) -> FitHistory:
    """Run ``engine`` over minibatches ``(x, y)`` of ``train`` for ``epochs`` epochs; the model is called as
    ``model(x, y, num_data=len(train), **model_kwargs)``.

    All particles share one minibatch: a network with BatchNorm should run in eval mode (as DLLP's model does),
    or the batch statistics would couple the particles.

    :param before_step: called as ``before_step(step, total_steps)`` before every step (e.g. a temperature
        schedule of the model).
    :param on_epoch_end: as in :func:`~pyroprune.infer.fit_svi`.
    :returns: per-epoch records; ``loss`` is the negative mean log density per particle divided by the data
        size (comparable to the per-example loss of :func:`~pyroprune.infer.fit_svi`).
    :raises SVGDDiverged: checked once per epoch (no host synchronisation per step); the engine keeps the last
        finite particles.
    """
    if epochs < 0:
        raise ValueError(f"epochs must be >= 0, got {epochs}")
    if seed is not None:
        pyro.set_rng_seed(seed)
    n = len(train)
    kwargs = {"num_data": n, **dict(model_kwargs or {})}
    generator = torch.Generator().manual_seed(seed if seed is not None else torch.initial_seed() % 2**63)
    steps_per_epoch = math.ceil(n / batch_size)
    total_steps = epochs * steps_per_epoch
    history = FitHistory()
    bar = progress_bar(range(1, epochs + 1), description, enabled=progress)
    for epoch in bar:
        total = torch.zeros((), device=train.x.device, dtype=torch.float64)
        count = 0
        for i, (xb, yb) in enumerate(train.batches(batch_size, shuffle=True, generator=generator)):
            if before_step is not None:
                before_step((epoch - 1) * steps_per_epoch + i, total_steps)
            log_p = engine.step(xb, yb, check=False, **kwargs)
            total += log_p.double() * xb.shape[0]
            count += xb.shape[0]
        try:
            engine.check_finite()
        except SVGDDiverged as e:
            raise SVGDDiverged(f"{description}, epoch {epoch}: {e}") from None
        record = {"epoch": epoch, "loss": -float(total) / max(count, 1) / n}
        if on_epoch_end is not None:
            record.update(on_epoch_end(epoch, record) or {})
        history.epochs.append(record)
        bar.set_postfix({k: f"{v:.4g}" if isinstance(v, float) else v for k, v in record.items() if k != "epoch"})
    return history
