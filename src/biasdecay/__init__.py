"""biasdecay: connectivity sharpness, bias decay and large-batch optimisation for PyTorch.

Measure::

    import biasdecay as bd
    report = bd.connectivity_sharpness(model, loader)          # C(θ), eq. 4, split by role
    report.table2(); bd.bias_utilization(report)               # Table 2 rows, r_l per BN layer
    bd.hessian_trace(model, loader); bd.hessian_max_eigenvalue(model, loader)
    bd.fisher_rao_norm(model, loader)                          # θᵀFθ, eq. 8

Fix (docs/recipe.md)::

    policy = bd.decay_policy("adaptive_beta_decay")
    optimizer = bd.LAMB(bd.param_groups(model, policy, weight_decay=0.01), lr=1e-3)
    controller = bd.AdaptiveBetaDecay(model, optimizer)   # controller.step() before step()
"""

from biasdecay.decay import (
    AdaptiveBetaDecay,
    decay_policy,
    format_group_summary,
    freeze_roles,
    param_groups,
    policy_names,
)
from biasdecay.nn.ghost_bn import GhostBatchNorm1d, GhostBatchNorm2d, convert_to_ghost_batchnorm
from biasdecay.optim import LAMB, LARS
from biasdecay.roles import Role, is_norm_module, param_roles, register_norm_type
from biasdecay.schedules import (
    LRScheduler,
    cosine_warmup,
    paper_peak_lr,
    polynomial_warmup_decay,
    scale_lr,
)
from biasdecay.sharpness.connectivity import (
    ConnectivityReport,
    bias_utilization,
    connection_sensitivity,
    connectivity_sharpness,
)
from biasdecay.sharpness.fisher_rao import FisherRaoNorm, fisher_rao_norm
from biasdecay.sharpness.hessian import (
    EigenEstimate,
    TraceEstimate,
    hessian_max_eigenvalue,
    hessian_trace,
)
from biasdecay.sharpness.reparam import fold_batchnorm, rescale_neuron

__version__ = "0.1.0"
__all__ = [
    "LAMB",
    "LARS",
    "AdaptiveBetaDecay",
    "ConnectivityReport",
    "GhostBatchNorm1d",
    "GhostBatchNorm2d",
    "LRScheduler",
    "EigenEstimate",
    "FisherRaoNorm",
    "Role",
    "TraceEstimate",
    "__version__",
    "bias_utilization",
    "connection_sensitivity",
    "connectivity_sharpness",
    "convert_to_ghost_batchnorm",
    "cosine_warmup",
    "decay_policy",
    "format_group_summary",
    "fisher_rao_norm",
    "fold_batchnorm",
    "freeze_roles",
    "hessian_max_eigenvalue",
    "hessian_trace",
    "is_norm_module",
    "paper_peak_lr",
    "param_groups",
    "param_roles",
    "policy_names",
    "polynomial_warmup_decay",
    "register_norm_type",
    "rescale_neuron",
    "scale_lr",
]
