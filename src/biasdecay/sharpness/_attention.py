"""``nn.MultiheadAttention`` as two linear maps the per-sample path can see.

Its forward hands its weights to ``F.multi_head_attention_forward``, which applies them through
``F.linear`` inside: no module forward runs, so no hook sees the in-projection or the output
projection. During the measured forward (and then only), :func:`recorded_forward` computes the
same function in the same steps, with the packed in-projection through ``F.linear`` (its input
and output handed to the recorder: a Linear on a sequence with weight ``in_proj_weight``) and
the output projection through the ``out_proj`` module itself (recorded by its own hook).

It covers the self-attention that ``nn.TransformerEncoderLayer`` and torchvision's ViT run:
one tensor as query, key and value, one packed in-projection, no ``bias_k``/``bias_v``, no
zero attention row. Any other call runs the module's own forward, and its parameters are
reported as not covered (:func:`why_not_covered`), so they are recomputed on the generic path.
The exactness guard compares the gradient the formulas imply with autograd's through the
module's own forward, so a difference between the two computations would show there.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

# record(name, input, output) -> output: what the recorder does with a layer's input and output
Record = Callable[[str, torch.Tensor, torch.Tensor], torch.Tensor]


def why_not_covered(module: nn.MultiheadAttention) -> str | None:
    """Why the per-sample formula does not cover this attention module, whatever its input, or
    None."""
    if not module._qkv_same_embed_dim:
        return "separate query, key and value projection weights (kdim or vdim set)"
    if module.bias_k is not None or module.add_zero_attn:
        return "bias_k/bias_v or add_zero_attn"
    return None


def recorded_forward(
    module: nn.MultiheadAttention,
    name: str,
    record: Record,
    measuring: Callable[[], bool],
    not_covered: Callable[[str, str], None],
) -> Callable:
    """The forward to install on ``module`` while it is being measured.

    Args:
        module: the attention module.
        name: its qualified name in the model.
        record: hands the in-projection's input and output to the recorder.
        measuring: whether this call is a measured forward (else the module's own forward).
        not_covered: told (name, why) when a measured call is not one this covers.
    """
    own = type(module).forward.__get__(module)

    @functools.wraps(own)
    def forward(
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = True,
        attn_mask: torch.Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ):
        arguments = (query, key, value, key_padding_mask, need_weights, attn_mask)
        if not measuring():
            return own(*arguments, average_attn_weights, is_causal)
        why = _why_not_this_call(module, query, key, value)
        if why is not None:
            not_covered(name, why)
            return own(*arguments, average_attn_weights, is_causal)
        return _self_attention(module, name, record, *arguments, average_attn_weights, is_causal)

    return forward


def _why_not_this_call(
    module: nn.MultiheadAttention, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor
) -> str | None:
    why = why_not_covered(module)
    if why is not None:
        return why
    if not (query is key and key is value):
        return "it ran as cross-attention (query, key and value not one tensor)"
    if query.dim() != 3:
        return "it ran on an unbatched input"
    if module.training and module.dropout > 0:
        return "it ran in training mode with dropout"
    return None


def _self_attention(
    module: nn.MultiheadAttention,
    name: str,
    record: Record,
    x: torch.Tensor,
    _key: torch.Tensor,
    _value: torch.Tensor,
    key_padding_mask: torch.Tensor | None,
    need_weights: bool,
    attn_mask: torch.Tensor | None,
    average_attn_weights: bool,
    is_causal: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``F.multi_head_attention_forward``'s steps for packed self-attention in eval mode, with
    the samples first (so that the recorder sees one row per sample)."""
    if not module.batch_first:
        x = x.transpose(0, 1)
    B, L, E = x.shape
    H = module.num_heads
    d = E // H
    key_padding_mask = F._canonical_mask(
        mask=key_padding_mask,
        mask_name="key_padding_mask",
        other_type=F._none_or_dtype(attn_mask),
        other_name="attn_mask",
        target_type=x.dtype,
    )
    if is_causal and attn_mask is None:
        raise RuntimeError("Need attn_mask if specifying the is_causal hint.")
    if is_causal and key_padding_mask is None and not need_weights:
        attn_mask = None  # the hint alone: SDPA's causal mask
    else:
        attn_mask = F._canonical_mask(
            mask=attn_mask,
            mask_name="attn_mask",
            other_type=None,
            other_name="",
            target_type=x.dtype,
            check_other=False,
        )
        if key_padding_mask is not None:
            is_causal = False
    proj = record(name, x, F.linear(x, module.in_proj_weight, module.in_proj_bias))
    # (B, L, 3E) -> three (B, H, L, d): sample b, head h is row b·H + h of torch's layout
    q, k, v = (t.view(B, L, H, d).transpose(1, 2) for t in proj.chunk(3, dim=-1))
    if attn_mask is not None and attn_mask.dim() == 2:
        attn_mask = attn_mask.unsqueeze(0)  # (1, L, S)
    if key_padding_mask is not None:
        padding = key_padding_mask.view(B, 1, 1, L).expand(-1, H, -1, -1).reshape(B * H, 1, L)
        attn_mask = padding if attn_mask is None else attn_mask + padding
    if need_weights:
        q_scaled = (q * math.sqrt(1.0 / float(d))).reshape(B * H, L, d)
        keys = k.reshape(B * H, L, d).transpose(-2, -1)
        if attn_mask is not None:
            scores = torch.baddbmm(attn_mask, q_scaled, keys)
        else:
            scores = torch.bmm(q_scaled, keys)
        weights = torch.softmax(scores, dim=-1)
        attn = torch.bmm(weights, v.reshape(B * H, L, d)).view(B, H, L, d)
    else:
        if attn_mask is not None:
            if attn_mask.size(0) == 1 and attn_mask.dim() == 3:
                attn_mask = attn_mask.unsqueeze(0)
            else:
                attn_mask = attn_mask.view(B, H, -1, L)
        attn = F.scaled_dot_product_attention(q, k, v, attn_mask, 0.0, is_causal)
        weights = None
    out = module.out_proj(attn.transpose(1, 2).reshape(B, L, E))
    if not module.batch_first:
        out = out.transpose(0, 1).contiguous()  # laid out as torch returns it: a view may follow
    if weights is not None:
        weights = weights.view(B, H, L, L)
        if average_attn_weights:
            weights = weights.mean(dim=1)
    return out, weights
