"""Role-based weight-decay policies, their param groups, and the adaptive β decay controller."""

from biasdecay.decay.adaptive import AdaptiveBetaDecay, bias_utilization_from_grads
from biasdecay.decay.groups import (
    GroupRow,
    format_group_summary,
    freeze_roles,
    group_summary,
    param_groups,
)
from biasdecay.decay.policies import (
    BASE,
    DecayPolicy,
    RoleRule,
    decay_policy,
    policy_names,
    policy_options,
)

__all__ = [
    "BASE",
    "AdaptiveBetaDecay",
    "DecayPolicy",
    "GroupRow",
    "RoleRule",
    "bias_utilization_from_grads",
    "decay_policy",
    "format_group_summary",
    "group_summary",
    "freeze_roles",
    "param_groups",
    "policy_names",
    "policy_options",
]
