"""biasdecay: connectivity sharpness, bias decay and large-batch optimisation for PyTorch.

Measure::

    import biasdecay as bd
    report = bd.connectivity_sharpness(model, loader)          # C(θ), eq. 4, split by role
    report.table2(); bd.bias_utilization(report)               # Table 2 rows, r_l per BN layer
    bd.hessian_trace(model, loader); bd.hessian_max_eigenvalue(model, loader)
    bd.fisher_rao_norm(model, loader)                          # θᵀFθ, eq. 8
"""

from biasdecay.roles import Role, is_norm_module, param_roles, register_norm_type
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
    "ConnectivityReport",
    "EigenEstimate",
    "FisherRaoNorm",
    "Role",
    "TraceEstimate",
    "__version__",
    "bias_utilization",
    "connection_sensitivity",
    "connectivity_sharpness",
    "fisher_rao_norm",
    "fold_batchnorm",
    "hessian_max_eigenvalue",
    "hessian_trace",
    "is_norm_module",
    "param_roles",
    "register_norm_type",
    "rescale_neuron",
]
