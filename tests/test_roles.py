"""Parameter roles come from module types, never from names or shapes."""

from __future__ import annotations

import torch
from torch import nn

from biasdecay.nn.models import build_model
from biasdecay.roles import Role, is_norm_module, param_owners, param_roles, register_norm_type


class Misleading(nn.Module):
    """Names that would fool a substring rule: a BN called 'conv', a linear called 'bn'."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.BatchNorm2d(3)
        self.bn = nn.Linear(3, 3)
        self.bias = nn.Conv2d(3, 3, 1)
        self.gn = nn.GroupNorm(1, 3)
        self.ln = nn.LayerNorm(3)
        self.weight = nn.Parameter(torch.zeros(3))  # 1-D like β, but on no norm layer
        self.emb = nn.Embedding(4, 3)


def test_roles_follow_module_types_not_names() -> None:
    roles = param_roles(Misleading())
    assert roles == {
        "weight": Role.OTHER,
        "conv.weight": Role.NORM_SCALE,
        "conv.bias": Role.NORM_SHIFT,
        "bn.weight": Role.LINEAR_WEIGHT,
        "bn.bias": Role.LINEAR_BIAS,
        "bias.weight": Role.CONV_WEIGHT,
        "bias.bias": Role.CONV_BIAS,
        "gn.weight": Role.NORM_SCALE,
        "gn.bias": Role.NORM_SHIFT,
        "ln.weight": Role.NORM_SCALE,
        "ln.bias": Role.NORM_SHIFT,
        "emb.weight": Role.EMBEDDING,
    }
    assert param_owners(Misleading())["conv.bias"] == "conv"


def test_registered_norm_type_gets_norm_roles() -> None:
    class MyNorm(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.ones(2))
            self.bias = nn.Parameter(torch.zeros(2))

    assert param_roles(MyNorm()) == {"weight": Role.OTHER, "bias": Role.OTHER}
    register_norm_type(MyNorm)
    assert is_norm_module(MyNorm())
    assert param_roles(MyNorm()) == {"weight": Role.NORM_SCALE, "bias": Role.NORM_SHIFT}


def test_frozen_and_shared_parameters() -> None:
    lin = nn.Linear(2, 2)
    model = nn.Sequential(lin, nn.ReLU(), lin, nn.BatchNorm1d(2))
    model[3].weight.requires_grad_(False)
    roles = param_roles(model)
    assert roles == {  # the shared layer appears once; the frozen γ is still a γ
        "0.weight": Role.LINEAR_WEIGHT,
        "0.bias": Role.LINEAR_BIAS,
        "3.weight": Role.NORM_SCALE,
        "3.bias": Role.NORM_SHIFT,
    }


def test_resnet18_role_counts() -> None:
    roles = param_roles(build_model("resnet18", in_channels=3, width=0.125))
    counts = {r: sum(v is r for v in roles.values()) for r in Role}
    # 20 convs (17 + 3 projection shortcuts), 20 BN layers, one linear head; no conv biases.
    assert counts[Role.CONV_WEIGHT] == 20 and counts[Role.CONV_BIAS] == 0
    assert counts[Role.NORM_SCALE] == counts[Role.NORM_SHIFT] == 20
    assert counts[Role.LINEAR_WEIGHT] == counts[Role.LINEAR_BIAS] == 1
    assert counts[Role.OTHER] == 0
    assert Role.NORM_SHIFT.label == "β" and Role.LINEAR_BIAS.label == "FC(b)"


def test_register_rejects_non_modules() -> None:
    import pytest

    with pytest.raises(TypeError, match="nn.Module subclass"):
        register_norm_type(int)  # type: ignore[arg-type]


def test_recurrent_and_attention_layers_have_linear_roles() -> None:
    """nn.LSTM/GRU/RNN and nn.MultiheadAttention are made of linear maps whose weights and
    biases torch names by position (weight_ih_l0, in_proj_bias). Their biases were role
    "other", and so decayed under no_bias_decay like weights."""
    from biasdecay.decay.groups import param_groups
    from biasdecay.decay.policies import decay_policy

    model = nn.ModuleDict(
        {
            "lstm": nn.LSTM(4, 3, proj_size=2, bidirectional=True),
            "gru": nn.GRU(2, 2),
            "attn": nn.MultiheadAttention(4, 2, kdim=3, vdim=5, add_bias_kv=True),
            "self_attn": nn.MultiheadAttention(4, 2),
        }
    )
    roles = param_roles(model)
    for name, role in roles.items():
        local = name.rsplit(".", 1)[1]
        words = local.split("_")
        expected = Role.LINEAR_WEIGHT if "weight" in words else Role.LINEAR_BIAS
        assert role is expected, name
    assert roles["lstm.weight_hr_l0_reverse"] is Role.LINEAR_WEIGHT
    assert roles["self_attn.in_proj_bias"] is Role.LINEAR_BIAS
    groups = param_groups(model, decay_policy("no_bias_decay"), 0.01)
    decayed = {id(p) for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    for name, p in model.named_parameters():
        assert (id(p) in decayed) == (roles[name] is Role.LINEAR_WEIGHT), name
