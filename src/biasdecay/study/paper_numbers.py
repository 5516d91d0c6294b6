"""The paper's numbers, transcribed from its tables and text, for the report to set ours beside.

Accuracies are in percent as printed; ``None`` is the paper's "-" (training failed). Keys use
the names of ``specs.py``: data sets ``cifar10``/``cifar100``/``imagenet``, batch sizes as
integers, policies by registry name with their coefficient.
"""

from __future__ import annotations

# Table 1 (ResNet-18, CIFAR-10, SGD): (batch, weight decay) -> value.
TABLE1 = {
    "accuracy": {(512, 0.0): 94.00, (512, 0.005): 94.86, (8192, 0.0): 89.84, (8192, 0.005): 94.17},
    "log_trace": {(512, 0.0): 2.63, (512, 0.005): 6.28, (8192, 0.0): 7.13, (8192, 0.005): 5.99},
    "log_lambda": {(512, 0.0): 5.50, (512, 0.005): 8.51, (8192, 0.0): 9.30, (8192, 0.005): 8.15},
}

# Table 2 (ResNet-18, CIFAR-10, 8k, LAMB): policy -> row -> C.
TABLE2 = {
    "no_bias_decay": {
        "Conv": 2.74e-1,
        "γ": 3.88e-2,
        "β": 1.81e-2,
        "FC(w)": 3.32e-3,
        "FC(b)": 2.00e-5,
        "Total": 3.34e-1,
    },
    "beta_decay": {
        "Conv": 1.80e-1,
        "γ": 1.87e-2,
        "β": 1.39e-3,
        "FC(w)": 3.56e-3,
        "FC(b)": 1.14e-7,
        "Total": 2.04e-1,
    },
}

# Table 3 (LAMB; ResNet-18 on CIFAR at 8k, ResNet-50 on ImageNet at 32k): (policy, coefficient)
# -> data set -> accuracy.
TABLE3 = {
    ("no_bias_decay", None): {"cifar10": 94.49, "cifar100": 76.77, "imagenet": 76.56},
    ("bn_frozen", None): {"cifar10": 94.64, "cifar100": 77.59, "imagenet": None},
    ("gamma_frozen", None): {"cifar10": 94.47, "cifar100": 76.99, "imagenet": 76.57},
    ("gamma_decay", 0.01): {"cifar10": 94.46, "cifar100": 77.59, "imagenet": 76.62},
    ("beta_frozen", None): {"cifar10": 94.87, "cifar100": 77.81, "imagenet": None},
    ("beta_decay", 1.0): {"cifar10": 94.90, "cifar100": 77.99, "imagenet": 76.97},
}

# Table 4 (ResNet-18, LAMB): data set -> column -> accuracy; columns are (batch, policy).
TABLE4_COLUMNS = (
    (512, "no_bias_decay"),
    (2048, "no_bias_decay"),
    (8192, "no_bias_decay"),
    (8192, "beta_decay"),
    (8192, "adaptive_beta_decay"),
)
TABLE4 = {
    "cifar10": dict(zip(TABLE4_COLUMNS, (95.12, 94.59, 94.49, 94.90, 95.01), strict=True)),
    "cifar100": dict(zip(TABLE4_COLUMNS, (78.09, 78.03, 76.77, 77.99, 78.11), strict=True)),
}

# Table 5 (ResNet-50-D, ImageNet, LAMB).
TABLE5_COLUMNS = (
    (1024, "no_bias_decay"),
    (32768, "no_bias_decay"),
    (32768, "beta_decay"),
    (32768, "adaptive_beta_decay"),
)
TABLE5 = {"imagenet": dict(zip(TABLE5_COLUMNS, (77.16, 76.56, 76.97, 77.24), strict=True))}

# Section 4.1, on Figure 4 vs Figure 2b: β decay scales γ down by 35% and C(γ) by 25%.
FIGURE4 = {"gamma_change": -0.35, "c_gamma_change": -0.25}
