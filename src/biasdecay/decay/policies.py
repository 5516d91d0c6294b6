"""Role-based weight-decay policies: the rows of the paper's Tables 3 and 4.

A policy maps every parameter :class:`~biasdecay.roles.Role` to a decay coefficient, or freezes
it at a fixed value. Which parameters decay is data (a mapping from role to rule), not a special
case inside an optimiser. The optimiser then sees plain param groups
(:func:`biasdecay.decay.groups.param_groups`).

Policies (``weight_decay`` below is the base coefficient λ_w, e.g. 0.01 in Appendix A.2):

=====================  ==========================================================================
no_bias_decay          weights λ_w; conv/linear biases, γ and β not decayed (Goyal et al. 2017)
all_decay              every parameter λ_w
beta_decay             no_bias_decay, plus β decayed with its own coefficient ``beta`` (1.0)
gamma_decay            no_bias_decay, plus γ decayed with its own coefficient ``gamma`` (0.01)
bias_decay             no_bias_decay, plus every bias (conv/linear biases and β) decayed with
                       ``bias`` (1.0): Figure 1's "bias decay {0.1, 1.0}" ablation, which on a
                       network without BatchNorm (VGG-11) means the conv and linear biases
beta_frozen            no_bias_decay, β fixed at 0 (not trained)
gamma_frozen           no_bias_decay, γ fixed at 1 (not trained)
bn_frozen              no_bias_decay, β fixed at 0 and γ at 1
adaptive_beta_decay    no_bias_decay; β decayed with ``beta`` (1.0) in exactly the layers whose
                       r_l ≥ ``threshold`` (0.1) at each step (Section 4.2, Algorithm 1), applied
                       by :class:`biasdecay.decay.adaptive.AdaptiveBetaDecay`
=====================  ==========================================================================

Conv/linear biases follow the base policy: not decayed under no_bias_decay and every policy built
on it, unless ``decay_biases=True`` (docs/design.md §4).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Annotated

from biasdecay.constraints import Range
from biasdecay.errors import InputError
from biasdecay.registry import Entry, Registry
from biasdecay.roles import Role

__all__ = [
    "POLICIES",
    "RoleRule",
    "DecayPolicy",
    "decay_policy",
    "policy_names",
    "policy_options",
    "BASE",
]

BASE = "base"  # a rule coefficient meaning "the base weight_decay λ_w"

_WEIGHTS = (Role.CONV_WEIGHT, Role.LINEAR_WEIGHT, Role.EMBEDDING, Role.OTHER)
_BIASES = (Role.CONV_BIAS, Role.LINEAR_BIAS)


@dataclass(frozen=True)
class RoleRule:
    """How one role is treated: decayed with ``coefficient`` or frozen at ``frozen_value``.

    ``coefficient`` is a number, or :data:`BASE` for the base weight_decay.
    """

    coefficient: float | str = 0.0
    frozen_value: float | None = None  # not None: not trained, held at this value

    @property
    def frozen(self) -> bool:
        return self.frozen_value is not None

    def resolve(self, weight_decay: float) -> float:
        """The numeric decay coefficient given the base ``weight_decay``."""
        return weight_decay if self.coefficient == BASE else float(self.coefficient)


@dataclass(frozen=True)
class DecayPolicy:
    """A named mapping from role to :class:`RoleRule`, plus adaptive β decay settings.

    Attributes:
        name: the policy's name (a row label of Tables 3/4).
        rules: a rule for every :class:`Role`.
        adaptive_threshold: R of adaptive β decay (None: not adaptive).
        adaptive_coefficient: λ_β applied to layers with r_l ≥ R.
    """

    name: str
    rules: Mapping[Role, RoleRule]
    adaptive_threshold: float | None = None
    adaptive_coefficient: float = 0.0
    options: Mapping[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        missing = [r.value for r in Role if r not in self.rules]
        if missing:
            raise InputError(f"policy {self.name!r} has no rule for roles: {', '.join(missing)}")
        object.__setattr__(self, "rules", MappingProxyType(dict(self.rules)))
        object.__setattr__(self, "options", MappingProxyType(dict(self.options)))

    @property
    def adaptive(self) -> bool:
        """Whether β decay is decided per layer and step (adaptive β decay)."""
        return self.adaptive_threshold is not None

    def coefficient(self, role: Role, weight_decay: float) -> float:
        """The decay coefficient of ``role`` (0 for frozen roles and adaptively decayed β)."""
        rule = self.rules[role]
        return 0.0 if rule.frozen else rule.resolve(weight_decay)

    def describe(self) -> str:
        """One line naming the policy and its options, for logs."""
        opts = ", ".join(f"{k}={v}" for k, v in self.options.items())
        return f"{self.name}({opts})"


def _rules(
    *,
    biases: float | str,
    gamma: RoleRule = RoleRule(0.0),
    beta: RoleRule = RoleRule(0.0),
) -> dict[Role, RoleRule]:
    rules = {role: RoleRule(BASE) for role in _WEIGHTS}
    rules.update({role: RoleRule(biases) for role in _BIASES})
    rules[Role.NORM_SCALE] = gamma
    rules[Role.NORM_SHIFT] = beta
    return rules


# A decay coefficient is a finite number >= 0; the threshold R may be inf (never decay).
Coefficient = Annotated[float, Range(0.0)]
Threshold = Annotated[float, Range(0.0, high_open=False)]


def _no_bias_decay(decay_biases: bool = False) -> DecayPolicy:
    return DecayPolicy(
        "no_bias_decay",
        _rules(biases=BASE if decay_biases else 0.0),
        options={"decay_biases": decay_biases},
    )


def _all_decay() -> DecayPolicy:
    return DecayPolicy(
        "all_decay",
        _rules(biases=BASE, gamma=RoleRule(BASE), beta=RoleRule(BASE)),
        options={"decay_biases": True},
    )


def _one_norm_role_decay(role: str, coefficient: Coefficient, decay_biases: bool) -> DecayPolicy:
    """no_bias_decay plus decay ``coefficient`` on one normalisation role (``beta``/``gamma``)."""
    return DecayPolicy(
        f"{role}_decay",
        _rules(biases=BASE if decay_biases else 0.0, **{role: RoleRule(coefficient)}),
        options={role: coefficient, "decay_biases": decay_biases},
    )


def _beta_decay(beta: Coefficient = 1.0, decay_biases: bool = False) -> DecayPolicy:
    return _one_norm_role_decay("beta", beta, decay_biases)


def _bias_decay(bias: Coefficient = 1.0) -> DecayPolicy:
    return DecayPolicy(
        "bias_decay",
        _rules(biases=bias, beta=RoleRule(bias)),
        options={"bias": bias},
    )


def _gamma_decay(gamma: Coefficient = 0.01, decay_biases: bool = False) -> DecayPolicy:
    return _one_norm_role_decay("gamma", gamma, decay_biases)


def _frozen(name: str, gamma: bool, beta: bool):
    def build(decay_biases: bool = False) -> DecayPolicy:
        return DecayPolicy(
            name,
            _rules(
                biases=BASE if decay_biases else 0.0,
                gamma=RoleRule(0.0, frozen_value=1.0) if gamma else RoleRule(0.0),
                beta=RoleRule(0.0, frozen_value=0.0) if beta else RoleRule(0.0),
            ),
            options={"decay_biases": decay_biases},
        )

    return build


def _adaptive_beta_decay(
    beta: Coefficient = 1.0, threshold: Threshold = 0.1, decay_biases: bool = False
) -> DecayPolicy:
    return DecayPolicy(
        "adaptive_beta_decay",
        _rules(biases=BASE if decay_biases else 0.0),  # β decayed by the controller, not here
        adaptive_threshold=threshold,
        adaptive_coefficient=beta,
        options={"beta": beta, "threshold": threshold, "decay_biases": decay_biases},
    )


_OPTION_HELP = {
    "beta": "λ_β, the decay coefficient of every norm shift β (beta_decay, adaptive_beta_decay)",
    "gamma": "λ_γ, the decay coefficient of every norm scale γ (gamma_decay)",
    "bias": "the decay coefficient of every bias, conv/linear and β (bias_decay: Figure 1)",
    "threshold": "R of adaptive β decay: β decays in the layers with r_l >= R (inf: never)",
    "decay_biases": "decay conv/linear biases with the base weight_decay (else not decayed)",
}

#: Every policy by name (the rows of Tables 3 and 4), in the order of the module docstring.
POLICIES: Registry[Entry] = Registry(
    "decay policy",
    [
        Entry("no_bias_decay", _no_bias_decay, description="weights only (Goyal et al. 2017)"),
        Entry("all_decay", _all_decay, description="every parameter"),
        Entry("beta_decay", _beta_decay, description="no_bias_decay, plus β with beta"),
        Entry("gamma_decay", _gamma_decay, description="no_bias_decay, plus γ with gamma"),
        Entry("bias_decay", _bias_decay, description="no_bias_decay, plus every bias with bias"),
        Entry("beta_frozen", _frozen("beta_frozen", gamma=False, beta=True), description="β at 0"),
        Entry(
            "gamma_frozen", _frozen("gamma_frozen", gamma=True, beta=False), description="γ at 1"
        ),
        Entry("bn_frozen", _frozen("bn_frozen", gamma=True, beta=True), description="β 0, γ 1"),
        Entry(
            "adaptive_beta_decay",
            _adaptive_beta_decay,
            description="β decayed in the layers whose r_l >= threshold (Section 4.2)",
        ),
    ],
    option_help=_OPTION_HELP,
)


#: Names accepted by :func:`decay_policy`.
policy_names = POLICIES.names


def policy_options(name: str) -> list[str]:
    """The options :func:`decay_policy` accepts for policy ``name``."""
    return list(POLICIES.entry(name).options)


def decay_policy(name: str, **coefficients: float | bool) -> DecayPolicy:
    """Build a weight-decay policy by name.

    Args:
        name: one of :func:`policy_names`.
        **coefficients: the policy's own options, such as ``beta``, ``gamma``, ``bias``,
            ``threshold`` (adaptive_beta_decay's R) and ``decay_biases``. Which policy takes
            which, with its default and range: :func:`policy_options`, or
            ``biasdecay list settings policy``.

    Returns:
        The :class:`DecayPolicy`.

    Raises:
        ValueError: an unknown name or option (the valid ones are listed), or a bad value.
    """
    return POLICIES.build(name, **coefficients)
