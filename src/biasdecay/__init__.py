"""biasdecay: connectivity sharpness, bias decay and large-batch optimisation for PyTorch."""

from biasdecay.roles import Role, param_roles

__version__ = "0.1.0"
__all__ = ["Role", "param_roles", "__version__"]
