"""Reliability metrics of predictive class probabilities: proper scores, calibration, uncertainty, selective
prediction, and dense-versus-pruned comparison.

Conventions shared by every function:

* ``probs`` is a floating tensor ``[N, K]`` of predictive class probabilities (rows sum to 1 within ``1e-3``, or
  four machine epsilons of a half-precision dtype; for a Bayesian model the mean over posterior draws);
* ``draw_probs`` is ``[S, N, K]``, one ``[N, K]`` slice per posterior draw;
* ``labels`` is an integer tensor ``[N]`` with values in ``[0, K)`` on the same device as ``probs``.

Tensors may live on any device and have any float dtype; half precision inputs are computed in float32.
Tensor outputs keep the input's device and dtype; scalar summaries are returned as Python floats (the only
host transfers, besides one boolean per validated argument). Entropies and divergences are in nats.
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F

__all__ = [
    "accuracy",
    "nll",
    "brier",
    "ece",
    "adaptive_ece",
    "reliability_diagram_data",
    "predictive_entropy",
    "expected_entropy",
    "mutual_information",
    "misclassification_auroc",
    "accuracy_coverage_curve",
    "area_under_accuracy_coverage",
    "agreement",
    "mean_kl",
    "mean_js",
    "bootstrap_accuracy_difference",
    "reliability_summary",
    "compare_predictive",
]

#: Probabilities are clamped below at this value wherever a logarithm of a possibly-zero probability is taken
#: (NLL, the second argument of KL), so a single per-example loss is at most ``-log(1e-12) ≈ 27.6`` nats.
PROB_FLOOR = 1e-12
#: Tolerance on ``|sum_k p_k - 1|`` accepted by the validation (``4 * eps`` of the dtype if larger: float16 and
#: bfloat16 rows cannot be normalised to 1e-3).
SUM_TOL = 1e-3


# ----------------------------------------------------------------------------------------------- validation


def _working(x: torch.Tensor) -> torch.Tensor:
    """Half-precision tensors are upcast to float32 for the arithmetic; other float dtypes are kept."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _exact_dtype(device: torch.device) -> torch.dtype:
    """Accumulation dtype for ranks and counts: float64 except on MPS, which has none."""
    return torch.float32 if device.type == "mps" else torch.float64


def _check_simplex(x: object, name: str, ndim: int) -> torch.Tensor:
    """Validate a tensor of probability vectors along its last axis; return it in its working dtype."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must have a floating dtype, got {x.dtype}")
    if x.dim() != ndim:
        shape = "[N, K]" if ndim == 2 else "[S, N, K]"
        raise ValueError(f"{name} must have shape {shape}, got {tuple(x.shape)}")
    if x.numel() == 0:
        raise ValueError(f"{name} must be non-empty, got shape {tuple(x.shape)}")
    tol = max(SUM_TOL, 4 * torch.finfo(x.dtype).eps)  # half precision cannot hold sums to 1e-3
    x = _working(x)
    finite = torch.isfinite(x).all()
    nonneg = (x >= 0).all()
    summed = ((x.sum(-1) - 1).abs() <= tol).all()
    ok = torch.stack([finite, nonneg, summed]).tolist()  # one host transfer
    if not ok[0]:
        raise ValueError(f"{name} contains non-finite values")
    if not ok[1]:
        raise ValueError(f"{name} contains negative probabilities")
    if not ok[2]:
        raise ValueError(f"{name} rows must sum to 1 (tolerance {tol:g})")
    return x


def _check_labels(labels: object, n: int, k: int, device: torch.device, name: str = "labels") -> torch.Tensor:
    """Validate an integer label vector of length ``n`` with values in ``[0, k)`` on ``device``."""
    if not isinstance(labels, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(labels).__name__}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"{name} must have an integer dtype, got {labels.dtype}")
    if labels.dim() != 1 or labels.shape[0] != n:
        raise ValueError(f"{name} must have shape [{n}], got {tuple(labels.shape)}")
    if labels.device != device:
        raise ValueError(f"{name} is on {labels.device} but the probabilities are on {device}")
    if ((labels < 0) | (labels >= k)).any().item():
        raise ValueError(f"{name} must lie in [0, {k}), the number of classes")
    return labels.long()


def _check_probs_labels(probs: object, labels: object) -> tuple[torch.Tensor, torch.Tensor]:
    p = _check_simplex(probs, "probs", 2)
    return p, _check_labels(labels, p.shape[0], p.shape[1], p.device)


def _check_pair(a: object, b: object, name_a: str = "probs_a", name_b: str = "probs_b") -> tuple:
    pa, pb = _check_simplex(a, name_a, 2), _check_simplex(b, name_b, 2)
    if pa.shape != pb.shape:
        raise ValueError(f"{name_b} has shape {tuple(pb.shape)} but {name_a} has shape {tuple(pa.shape)}")
    if pa.device != pb.device:
        raise ValueError(f"{name_b} is on {pb.device} but {name_a} is on {pa.device}")
    dtype = torch.promote_types(pa.dtype, pb.dtype)
    return pa.to(dtype), pb.to(dtype)


def _check_n_bins(n_bins: object) -> int:
    if isinstance(n_bins, bool) or not isinstance(n_bins, int) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}")
    return n_bins


def _confidence_correct(p: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Confidence ``max_k p_k`` and the 0/1 correctness of the argmax, both in ``p``'s dtype."""
    conf, pred = p.max(dim=-1)
    return conf, (pred == labels).to(p.dtype)


# ------------------------------------------------------------------------------------------- proper scores


def accuracy(probs: torch.Tensor, labels: torch.Tensor) -> float:
    r"""Share of examples whose most probable class is the label, :math:`\frac1N\sum_i 1[\arg\max_k p_{ik}=y_i]`.

    :param probs: ``[N, K]`` predictive probabilities.
    :param labels: ``[N]`` integer labels.
    :returns: accuracy in ``[0, 1]``.
    """
    p, y = _check_probs_labels(probs, labels)
    return _confidence_correct(p, y)[1].to(_exact_dtype(p.device)).mean().item()


def nll(probs: torch.Tensor, labels: torch.Tensor) -> float:
    r"""Mean negative log-likelihood of the labels, :math:`-\frac1N\sum_i \log \max(p_{i y_i}, 10^{-12})`.

    The probability of the label is clamped below at :data:`PROB_FLOOR` (``1e-12``) so that a confident mistake
    costs at most about 27.6 nats instead of infinity. Reference: Gneiting & Raftery (2007), "Strictly proper
    scoring rules, prediction, and estimation", JASA 102(477).

    :param probs: ``[N, K]`` predictive probabilities.
    :param labels: ``[N]`` integer labels.
    :returns: mean NLL in nats.
    """
    p, y = _check_probs_labels(probs, labels)
    p_y = p.gather(1, y[:, None]).squeeze(1)
    return (-p_y.clamp_min(PROB_FLOOR).log()).mean().item()


def brier(probs: torch.Tensor, labels: torch.Tensor) -> float:
    r"""Multi-class Brier score, summed over classes and averaged over examples,
    :math:`\frac1N\sum_i\sum_k (p_{ik}-1[y_i=k])^2`, which lies in ``[0, 2]``.

    Reference: Brier (1950), "Verification of forecasts expressed in terms of probability", Monthly Weather
    Review 78(1) (the original, class-summed definition).

    :param probs: ``[N, K]`` predictive probabilities.
    :param labels: ``[N]`` integer labels.
    :returns: Brier score.
    """
    p, y = _check_probs_labels(probs, labels)
    onehot = F.one_hot(y, p.shape[1]).to(p.dtype)
    return (p - onehot).square().sum(-1).mean().item()


# --------------------------------------------------------------------------------------------- calibration


def _bin_sums(bins: torch.Tensor, conf: torch.Tensor, correct: torch.Tensor, n_bins: int) -> tuple:
    """Per-bin counts, summed confidences and summed correctness (float, length ``n_bins``)."""
    zeros = torch.zeros(n_bins, dtype=conf.dtype, device=conf.device)
    count = zeros.index_add(0, bins, torch.ones_like(conf))
    return count, zeros.index_add(0, bins, conf), zeros.index_add(0, bins, correct)


def _equal_width_bins(conf: torch.Tensor, n_bins: int) -> torch.Tensor:
    """Index of the right-closed bin ``((b-1)/M, b/M]`` holding each confidence (0 falls in the first bin)."""
    inner = torch.linspace(0, 1, n_bins + 1, dtype=conf.dtype, device=conf.device)[1:-1]
    return torch.bucketize(conf, inner, right=False)


def _calibration_error(count: torch.Tensor, sum_conf: torch.Tensor, sum_acc: torch.Tensor) -> float:
    """:math:`\\sum_b \\frac{n_b}{N}|\\mathrm{acc}_b-\\mathrm{conf}_b| = \\frac1N\\sum_b|\\sum_{i\\in b}(c_i-q_i)|`."""
    return ((sum_acc - sum_conf).abs().sum() / count.sum()).item()


def ece(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> float:
    r"""Expected calibration error with ``n_bins`` equal-width confidence bins,
    :math:`\mathrm{ECE}=\sum_{b=1}^{M}\frac{|B_b|}{N}\,|\mathrm{acc}(B_b)-\mathrm{conf}(B_b)|`,
    where the confidence of an example is :math:`\max_k p_{ik}`, :math:`B_b` holds the confidences in
    :math:`((b-1)/M, b/M]` and :math:`\mathrm{acc}`/:math:`\mathrm{conf}` are the bin's mean correctness of the
    argmax and mean confidence. Empty bins contribute nothing.

    Reference: Guo, Pleiss, Sun & Weinberger (2017), "On Calibration of Modern Neural Networks", ICML.

    :param probs: ``[N, K]`` predictive probabilities.
    :param labels: ``[N]`` integer labels.
    :param n_bins: number of equal-width bins on ``[0, 1]``.
    :returns: ECE in ``[0, 1]``.
    """
    n_bins = _check_n_bins(n_bins)
    p, y = _check_probs_labels(probs, labels)
    conf, correct = _confidence_correct(p, y)
    return _calibration_error(*_bin_sums(_equal_width_bins(conf, n_bins), conf, correct, n_bins))


def adaptive_ece(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> float:
    r"""Adaptive (equal-mass) expected calibration error: the ECE formula
    :math:`\sum_b\frac{|B_b|}{N}|\mathrm{acc}(B_b)-\mathrm{conf}(B_b)|` with bins that each hold
    about :math:`N/M` examples of consecutive confidence: example ``r`` (0-based) of the ascending confidence order
    goes to bin :math:`\lfloor rM/N\rfloor`, except that examples of equal confidence all go to the bin of the
    first of them (so a bin is never split inside a tie, and the result does not depend on the input order).

    Reference: Nixon, Dusenberry, Zhang, Jerfel & Tran (2019), "Measuring Calibration in Deep Learning",
    CVPR Workshops (adaptive calibration error, top-label variant).

    :param probs: ``[N, K]`` predictive probabilities.
    :param labels: ``[N]`` integer labels.
    :param n_bins: number of equal-mass bins.
    :returns: adaptive ECE in ``[0, 1]``.
    """
    n_bins = _check_n_bins(n_bins)
    p, y = _check_probs_labels(probs, labels)
    conf, correct = _confidence_correct(p, y)
    order = conf.argsort(stable=True)
    c = conf[order]
    n = c.shape[0]
    rank = torch.arange(n, device=c.device)
    first_of_tie = torch.ones(n, dtype=torch.bool, device=c.device)
    first_of_tie[1:] = c[1:] != c[:-1]
    start = torch.where(first_of_tie, rank, 0).cummax(0).values  # rank of the first example with this confidence
    bins = start * n_bins // n
    return _calibration_error(*_bin_sums(bins, c, correct[order], n_bins))


def reliability_diagram_data(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> dict[str, torch.Tensor]:
    r"""Per-bin statistics of the equal-width binning used by :func:`ece`, for a reliability diagram.

    For bin :math:`B_b=((b-1)/M, b/M]`: mean confidence :math:`\mathrm{conf}(B_b)`, accuracy
    :math:`\mathrm{acc}(B_b)` (NaN for empty bins) and count :math:`|B_b|`. Reference: Guo et al. (2017), ICML.

    :param probs: ``[N, K]`` predictive probabilities.
    :param labels: ``[N]`` integer labels.
    :param n_bins: number of equal-width bins on ``[0, 1]``.
    :returns: dict with ``bin_lower``, ``bin_upper``, ``confidence``, ``accuracy`` (``[n_bins]``, ``probs``'s
        dtype) and ``count`` (``[n_bins]``, long), all on ``probs``'s device.
    """
    n_bins = _check_n_bins(n_bins)
    p, y = _check_probs_labels(probs, labels)
    conf, correct = _confidence_correct(p, y)
    count, sum_conf, sum_acc = _bin_sums(_equal_width_bins(conf, n_bins), conf, correct, n_bins)
    edges = torch.linspace(0, 1, n_bins + 1, dtype=p.dtype, device=p.device)
    denom = torch.where(count > 0, count, torch.nan)
    out = {
        "bin_lower": edges[:-1],
        "bin_upper": edges[1:],
        "confidence": sum_conf / denom,
        "accuracy": sum_acc / denom,
    }
    out = {key: value.to(probs.dtype) for key, value in out.items()}
    out["count"] = count.round().long()
    return out


# --------------------------------------------------------------------------------------------- uncertainty


def _entropy(p: torch.Tensor) -> torch.Tensor:
    """Shannon entropy along the last axis with :math:`0\\log 0=0`."""
    return -torch.special.xlogy(p, p).sum(-1)


def predictive_entropy(probs: torch.Tensor) -> torch.Tensor:
    r"""Entropy of the predictive distribution, :math:`H[p_i]=-\sum_k p_{ik}\log p_{ik}` (nats, :math:`0\log0=0`).

    Total uncertainty of a Bayesian model when ``probs`` is the posterior mean. Reference: Shannon (1948),
    "A Mathematical Theory of Communication"; Depeweg et al. (2018), "Decomposition of Uncertainty in Bayesian
    Deep Learning", ICML.

    :param probs: ``[N, K]`` predictive probabilities.
    :returns: ``[N]`` entropies in ``[0, log K]``.
    """
    p = _check_simplex(probs, "probs", 2)
    return _entropy(p).to(probs.dtype)


def expected_entropy(draw_probs: torch.Tensor) -> torch.Tensor:
    r"""Mean over posterior draws of the per-draw entropy, :math:`\frac1S\sum_s H[p^{(s)}_i]` (aleatoric part).

    Reference: Depeweg et al. (2018), ICML.

    :param draw_probs: ``[S, N, K]`` per-draw predictive probabilities.
    :returns: ``[N]`` expected entropies in nats.
    """
    d = _check_simplex(draw_probs, "draw_probs", 3)
    return _entropy(d).mean(0).to(draw_probs.dtype)


def mutual_information(draw_probs: torch.Tensor) -> torch.Tensor:
    r"""Mutual information between the label and the parameters (epistemic part, BALD),
    :math:`I_i = H\big[\frac1S\sum_s p^{(s)}_i\big] - \frac1S\sum_s H[p^{(s)}_i]`.

    Non-negative by concavity of the entropy; rounding below zero is clamped to 0. Reference: Houlsby, Huszár,
    Ghahramani & Lengyel (2011), "Bayesian Active Learning for Classification and Preference Learning";
    Depeweg et al. (2018), ICML.

    :param draw_probs: ``[S, N, K]`` per-draw predictive probabilities.
    :returns: ``[N]`` mutual information in nats, in ``[0, log K]``.
    """
    d = _check_simplex(draw_probs, "draw_probs", 3)
    mi = _entropy(d.mean(0)) - _entropy(d).mean(0)
    return mi.clamp_min(0).to(draw_probs.dtype)


def _auroc(score: torch.Tensor, positive: torch.Tensor) -> float:
    r"""Rank-sum AUROC :math:`\frac{R_+ - n_+(n_++1)/2}{n_+n_-}` with average ranks for ties; NaN if one class."""
    dtype = _exact_dtype(score.device)
    s = score.to(dtype)
    pos = positive.to(dtype)
    n_pos = pos.sum()
    n_neg = s.shape[0] - n_pos
    counts_ok = torch.stack([n_pos, n_neg]).tolist()
    if min(counts_ok) == 0:
        warnings.warn(
            "misclassification AUROC is undefined when every prediction is correct or every one is wrong; "
            "returning NaN",
            RuntimeWarning,
            stacklevel=3,
        )
        return math.nan
    _, inverse, counts = torch.unique(s, sorted=True, return_inverse=True, return_counts=True)
    counts = counts.to(dtype)
    avg_rank = counts.cumsum(0) - (counts - 1) / 2  # 1-based mean rank of each tie group
    rank_sum = (avg_rank[inverse] * pos).sum()
    return ((rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)).item()


def misclassification_auroc(probs: torch.Tensor, labels: torch.Tensor, score: torch.Tensor | None = None) -> float:
    r"""AUROC of detecting misclassified examples (argmax ≠ label) from an uncertainty score, higher score meaning
    more likely wrong (default: :func:`predictive_entropy`).

    Computed by the Mann–Whitney rank formula :math:`\mathrm{AUROC}=\frac{R_{\mathrm{err}}-n_e(n_e+1)/2}{n_e n_c}`,
    with :math:`R_{\mathrm{err}}` the sum of the (tie-averaged, 1-based) ranks of the errors' scores, :math:`n_e`
    errors and :math:`n_c` correct predictions; equivalently :math:`P(s_e>s_c)+\frac12P(s_e=s_c)`.
    Reference: Hendrycks & Gimpel (2017), "A Baseline for Detecting Misclassified and Out-of-Distribution Examples
    in Neural Networks", ICLR; Mann & Whitney (1947).

    :param probs: ``[N, K]`` predictive probabilities.
    :param labels: ``[N]`` integer labels.
    :param score: optional ``[N]`` float uncertainty score on ``probs``'s device.
    :returns: AUROC in ``[0, 1]``, or NaN (with a ``RuntimeWarning``) if all predictions are correct or all wrong.
    """
    p, y = _check_probs_labels(probs, labels)
    if score is None:
        s = _entropy(p)
    else:
        if not isinstance(score, torch.Tensor) or not score.is_floating_point():
            raise ValueError("score must be a floating torch.Tensor")
        if score.shape != (p.shape[0],):
            raise ValueError(f"score must have shape [{p.shape[0]}], got {tuple(score.shape)}")
        if score.device != p.device:
            raise ValueError(f"score is on {score.device} but probs is on {p.device}")
        if not torch.isfinite(score).all().item():
            raise ValueError("score contains non-finite values")
        s = score
    _, correct = _confidence_correct(p, y)
    return _auroc(s, correct == 0)


# ------------------------------------------------------------------------------------- selective prediction


def accuracy_coverage_curve(probs: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Accuracy of the most confident fraction of examples at every coverage :math:`c_j=j/N`, :math:`j=1..N`.

    Examples are sorted by confidence :math:`\max_k p_{ik}` descending, and
    :math:`\mathrm{acc}(c_j)=\frac1j\sum_{r\le j}1[\text{example } r \text{ correct}]`. Examples with tied
    confidence are treated as randomly ordered (the expected count of correct ones is spread evenly over a tie
    group), so the curve does not depend on the order of the input. Reference: Geifman & El-Yaniv (2017),
    "Selective Classification for Deep Neural Networks", NeurIPS; El-Yaniv & Wiener (2010), JMLR.

    :param probs: ``[N, K]`` predictive probabilities.
    :param labels: ``[N]`` integer labels.
    :returns: ``(coverage, accuracy)``, two ``[N]`` tensors in ``probs``'s dtype; ``accuracy[-1]`` is the
        overall accuracy.
    """
    p, y = _check_probs_labels(probs, labels)
    conf, correct = _confidence_correct(p, y)
    dtype = _exact_dtype(p.device)
    n = conf.shape[0]
    order = conf.argsort(descending=True, stable=True)
    c, hit = conf[order], correct[order].to(dtype)
    pos = torch.arange(n, device=p.device)
    new_group = torch.ones(n, dtype=torch.bool, device=p.device)
    new_group[1:] = c[1:] != c[:-1]
    group = new_group.long().cumsum(0) - 1
    start = torch.where(new_group, pos, 0).cummax(0).values  # index of the first member of each one's group
    zeros = torch.zeros(n, dtype=dtype, device=p.device)
    group_size = zeros.index_add(0, group, torch.ones_like(hit))[group]
    group_hits = zeros.index_add(0, group, hit)[group]
    hits_before = (hit.cumsum(0) - hit)[start]
    cum_hits = hits_before + (pos - start + 1).to(dtype) * group_hits / group_size
    k = (pos + 1).to(dtype)
    return (k / n).to(probs.dtype), (cum_hits / k).to(probs.dtype)


def area_under_accuracy_coverage(probs: torch.Tensor, labels: torch.Tensor) -> float:
    r"""Area under the accuracy–coverage curve, :math:`\frac1N\sum_{j=1}^N \mathrm{acc}(j/N)`
    (right Riemann sum over the :func:`accuracy_coverage_curve` points). ``1 - area`` is the area under the
    risk–coverage curve (AURC). Reference: Geifman, Uziel & El-Yaniv (2019), "Bias-Reduced Uncertainty
    Estimation for Deep Neural Classifiers", ICLR.

    :param probs: ``[N, K]`` predictive probabilities.
    :param labels: ``[N]`` integer labels.
    :returns: area in ``[0, 1]``; higher is better.
    """
    _, acc = accuracy_coverage_curve(probs, labels)
    return acc.to(_exact_dtype(acc.device)).mean().item()


# ---------------------------------------------------------------------------------------- dense vs pruned


def agreement(probs_a: torch.Tensor, probs_b: torch.Tensor) -> float:
    r"""Share of examples on which two predictors have the same argmax,
    :math:`\frac1N\sum_i 1[\arg\max_k a_{ik}=\arg\max_k b_{ik}]`.

    Reference: Hooker et al. (2019), "What Do Compressed Deep Neural Networks Forget?" (prediction agreement).

    :param probs_a: ``[N, K]`` probabilities of the first predictor (e.g. dense).
    :param probs_b: ``[N, K]`` probabilities of the second predictor (e.g. pruned).
    :returns: agreement in ``[0, 1]``.
    """
    a, b = _check_pair(probs_a, probs_b)
    return (a.argmax(-1) == b.argmax(-1)).to(_exact_dtype(a.device)).mean().item()


def _kl_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-row :math:`\\sum_k a_k(\\log a_k-\\log b_k)` with :math:`0\\log0=0`; ``b`` must be positive where a is."""
    return (torch.special.xlogy(a, a) - torch.special.xlogy(a, b)).sum(-1)


def mean_kl(probs_a: torch.Tensor, probs_b: torch.Tensor) -> float:
    r"""Mean Kullback–Leibler divergence :math:`\frac1N\sum_i\sum_k a_{ik}\log\frac{a_{ik}}{\max(b_{ik},10^{-12})}`.

    The second argument is clamped below at :data:`PROB_FLOOR` so the divergence stays finite; per-example values
    below zero from rounding are clamped to 0. Reference: Kullback & Leibler (1951), Ann. Math. Stat. 22(1).

    :param probs_a: ``[N, K]`` reference probabilities (e.g. dense), the first argument of KL.
    :param probs_b: ``[N, K]`` approximating probabilities (e.g. pruned).
    :returns: mean KL(a‖b) in nats.
    """
    a, b = _check_pair(probs_a, probs_b)
    return _kl_rows(a, b.clamp_min(PROB_FLOOR)).clamp_min(0).mean().item()


def mean_js(probs_a: torch.Tensor, probs_b: torch.Tensor) -> float:
    r"""Mean Jensen–Shannon divergence
    :math:`\frac1N\sum_i\big(\tfrac12\mathrm{KL}(a_i\|m_i)+\tfrac12\mathrm{KL}(b_i\|m_i)\big)`,
    :math:`m_i=\tfrac12(a_i+b_i)`, in nats; symmetric and bounded by :math:`\log 2` (per example values are
    clamped to :math:`[0,\log 2]` against rounding). Reference: Lin (1991), "Divergence measures based on the
    Shannon entropy", IEEE Trans. Inf. Theory 37(1).

    :param probs_a: ``[N, K]`` probabilities of the first predictor.
    :param probs_b: ``[N, K]`` probabilities of the second predictor.
    :returns: mean JS divergence in ``[0, log 2]``.
    """
    a, b = _check_pair(probs_a, probs_b)
    m = 0.5 * (a + b)
    js = 0.5 * _kl_rows(a, m) + 0.5 * _kl_rows(b, m)
    return js.clamp(0, math.log(2)).mean().item()


def bootstrap_accuracy_difference(
    probs_a: torch.Tensor,
    probs_b: torch.Tensor,
    labels: torch.Tensor,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, float]:
    r"""Accuracy difference :math:`\Delta=\mathrm{acc}(a)-\mathrm{acc}(b)` with a paired percentile-bootstrap
    interval.

    Each of ``n_boot`` resamples draws ``N`` example indices with replacement (the same indices for both
    predictors) and computes :math:`\Delta^*=\frac1N\sum_i (c^a_{I_i}-c^b_{I_i})`; the interval is the
    :math:`(1-\ell)/2` and :math:`(1+\ell)/2` quantiles (linear interpolation) of the :math:`\Delta^*`.
    Vectorised with one ``[n_boot, N]`` index matrix drawn from a ``torch.Generator`` on ``probs_a``'s device
    seeded with ``seed`` (reproducible on a given device type; CPU and CUDA streams differ). Reference: Efron &
    Tibshirani (1993), "An Introduction to the Bootstrap", ch. 13.

    :param probs_a: ``[N, K]`` probabilities of the first predictor.
    :param probs_b: ``[N, K]`` probabilities of the second predictor.
    :param labels: ``[N]`` integer labels.
    :param n_boot: number of bootstrap resamples.
    :param level: confidence level of the interval, in ``(0, 1)``.
    :param seed: seed of the resampling generator.
    :returns: dict with ``diff``, ``low``, ``high``.
    """
    if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 1:
        raise ValueError(f"n_boot must be a positive integer, got {n_boot!r}")
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level!r}")
    a, b = _check_pair(probs_a, probs_b)
    y = _check_labels(labels, a.shape[0], a.shape[1], a.device)
    n = a.shape[0]
    d = (a.argmax(-1) == y).to(torch.int8) - (b.argmax(-1) == y).to(torch.int8)
    gen = torch.Generator(device=a.device)
    gen.manual_seed(seed)
    idx = torch.randint(0, n, (n_boot, n), generator=gen, device=a.device, dtype=torch.int32)
    dtype = _exact_dtype(a.device)
    boot = d[idx].sum(1, dtype=torch.int64).to(dtype) / n
    probs_q = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=dtype, device=a.device)
    diff = d.sum(dtype=torch.int64).to(dtype) / n
    values = torch.cat([diff[None], torch.quantile(boot, probs_q)]).tolist()
    return {"diff": values[0], "low": values[1], "high": values[2]}


# ---------------------------------------------------------------------------------------------- summaries


def reliability_summary(
    probs: torch.Tensor, labels: torch.Tensor, draw_probs: torch.Tensor | None = None, n_bins: int = 15
) -> dict[str, float]:
    r"""All scalar reliability metrics of one predictor.

    Keys: ``accuracy``, ``nll``, ``brier``, ``ece``, ``adaptive_ece``, ``mean_entropy`` (mean
    :func:`predictive_entropy`), ``misclassification_auroc``, ``area_under_accuracy_coverage`` and ``aurc``
    (:math:`1-\text{area}`, the area under the risk–coverage curve), plus ``mean_expected_entropy`` and
    ``mean_mutual_information`` when ``draw_probs`` is given. References: see the individual functions.

    :param probs: ``[N, K]`` predictive probabilities (posterior mean for a Bayesian model).
    :param labels: ``[N]`` integer labels.
    :param draw_probs: optional ``[S, N, K]`` per-draw probabilities for the epistemic/aleatoric split.
    :param n_bins: number of bins for the two ECEs.
    :returns: dict of Python floats.
    """
    p, y = _check_probs_labels(probs, labels)
    d = None
    if draw_probs is not None:
        d = _check_simplex(draw_probs, "draw_probs", 3)
        if d.shape[1:] != p.shape:
            raise ValueError(f"draw_probs must have shape [S, {p.shape[0]}, {p.shape[1]}], got {tuple(d.shape)}")
        if d.device != p.device:
            raise ValueError(f"draw_probs is on {d.device} but probs is on {p.device}")
    area = area_under_accuracy_coverage(p, y)
    out = {
        "accuracy": accuracy(p, y),
        "nll": nll(p, y),
        "brier": brier(p, y),
        "ece": ece(p, y, n_bins),
        "adaptive_ece": adaptive_ece(p, y, n_bins),
        "mean_entropy": _entropy(p).mean().item(),
        "misclassification_auroc": misclassification_auroc(p, y),
        "area_under_accuracy_coverage": area,
        "aurc": 1.0 - area,
    }
    if d is not None:
        out["mean_expected_entropy"] = expected_entropy(d).mean().item()
        out["mean_mutual_information"] = mutual_information(d).mean().item()
    return out


def compare_predictive(
    probs_dense: torch.Tensor,
    probs_pruned: torch.Tensor,
    labels: torch.Tensor,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, float]:
    r"""Compare a pruned predictor with its dense parent.

    Keys: ``agreement``, ``mean_kl`` (:math:`\mathrm{KL}(\text{dense}\|\text{pruned})`), ``mean_js``,
    ``accuracy_dense``, ``accuracy_pruned``, ``accuracy_difference`` (:math:`\mathrm{acc}_\text{pruned} -
    \mathrm{acc}_\text{dense}`, negative when pruning loses accuracy) and its paired-bootstrap interval
    ``accuracy_difference_low`` / ``accuracy_difference_high`` (see :func:`bootstrap_accuracy_difference`).

    :param probs_dense: ``[N, K]`` probabilities of the dense model.
    :param probs_pruned: ``[N, K]`` probabilities of the pruned model.
    :param labels: ``[N]`` integer labels.
    :param n_boot: bootstrap resamples.
    :param level: confidence level of the interval.
    :param seed: bootstrap seed.
    :returns: dict of Python floats.
    """
    dense, pruned = _check_pair(probs_dense, probs_pruned, "probs_dense", "probs_pruned")
    y = _check_labels(labels, dense.shape[0], dense.shape[1], dense.device)
    boot = bootstrap_accuracy_difference(pruned, dense, y, n_boot=n_boot, level=level, seed=seed)
    return {
        "agreement": agreement(dense, pruned),
        "mean_kl": mean_kl(dense, pruned),
        "mean_js": mean_js(dense, pruned),
        "accuracy_dense": accuracy(dense, y),
        "accuracy_pruned": accuracy(pruned, y),
        "accuracy_difference": boot["diff"],
        "accuracy_difference_low": boot["low"],
        "accuracy_difference_high": boot["high"],
    }
