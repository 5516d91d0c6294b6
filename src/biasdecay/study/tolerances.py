"""The scientific tolerances of the report, in one place: when a measured number agrees.

Each tolerance decides a verdict of one or more of the paper's claims (or, for the plateau, the
check that a run was trained long enough to be judged). The report's text quotes them from here,
so changing a value changes the verdict and the sentence that explains it together. Claims name
the tolerance that decides them (``Exceeds.margin``, ``Majority.needed``) by its field name.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

__all__ = ["TOLERANCES", "Tolerances", "tolerance"]


@dataclass(frozen=True)
class Tolerances:
    """Every tolerance a claim or a check of the report uses (one attribute docstring each)."""

    noise_factor: float = 2.0
    """A difference of two means counts (agrees or disagrees) only beyond this many standard
    errors of the difference over seeds; within it the verdict is inconclusive. Two standard
    errors is the usual ~95% band for a difference of means; the studies run 1-3 seeds, so a
    wider band would leave nearly every verdict inconclusive."""

    nearly_restores: float = 0.005
    """Tables 4, 5, "nearly restores the small-batch accuracy": the large-batch accuracy plus
    this margin (0.5 points, as an accuracy in [0, 1]) must exceed the small batch's, beyond the
    noise. The paper's own gaps are at most 0.11 points (Table 4, CIFAR-10: 95.01% vs 95.12%);
    half a point leaves room for the noise of shorter runs and stays below the 0.6-1.3 points
    the large batch loses without β decay (Table 4: 94.49% vs 95.12%, 76.77% vs 78.09%)."""

    r2_margin: float = 0.1
    """Figure 1, "C_m correlates with accuracy as clearly as Tr(H)": C_m's R² may be at most
    this much below Tr(H)'s. The paper gives no number; a tenth of R² is loose enough that the
    sampling noise of R² over nine runs does not decide the claim."""

    spread_rows: int = 3
    """Table 2, "the effect of β decay spreads across the network": at least this many of the
    5 substructure rows (Conv, γ, β, FC(w), FC(b)) must be lower beyond the noise (and the claim
    is contradicted when as many are higher). Three is a majority of five; the paper has four
    (only FC(w) rises)."""

    invariant: float = 1e-4
    """Theorem 3.1: C counts as invariant under the rescaling ρ when its largest relative change
    over the networks stays below this. The theorem makes the change zero, so what is measured
    is floating-point error, orders of magnitude below 1e-4; a real dependence on the rescaling
    (a factor 10 on one unit) would be far larger."""

    not_invariant: float = 1e-2
    """Dinh et al. (2017): Hessian-based sharpness counts as not invariant under ρ when even its
    smallest relative change over the networks is above this. One percent is two orders above
    :attr:`invariant`, so the two invariance claims can never both be decided by rounding."""

    beta_growth_log10: float = 2.0
    """Figure 2, "β grows from zero under no bias decay": Σ‖β_l‖ must end at least 10 to this
    power (100x) its value at the first record where it has moved. The paper's curves rise by
    orders of magnitude; 100x separates that from a β that barely drifts."""

    plateau: float = 0.01
    """A run ends on a plateau when its train accuracy moved by less than this (1 point, as an
    accuracy in [0, 1]) over the last 20% of training. Runs that had not fitted their data
    still rose by 2.5-3.2 points over their last fifth (docs/study.md, the cpu preset with
    augmentation), well beyond one point."""


TOLERANCES = Tolerances()


def tolerance(name: str) -> float:
    """The value of the tolerance called ``name`` (a field of :class:`Tolerances`).

    Args:
        name: the field name, e.g. ``"nearly_restores"``.

    Returns:
        Its value in :data:`TOLERANCES`.

    Raises:
        ValueError: no tolerance has that name; the message lists the known ones.
    """
    names = [f.name for f in fields(Tolerances)]
    if name not in names:
        raise ValueError(f"unknown tolerance {name!r}; known tolerances: {', '.join(names)}")
    return float(getattr(TOLERANCES, name))
