"""``nn.MultiheadAttention`` as two linear maps the per-sample path can see.

Its forward hands its weights to ``F.multi_head_attention_forward``, which applies them through
``F.linear`` inside: no module forward runs, so no hook sees the in-projection or the output
projection. During the measured forward (and then only), :func:`recorded_forward` computes the
same function in the same steps, with the packed in-projection through ``F.linear`` (its input
and output handed to the recorder: a Linear on a sequence with weight ``in_proj_weight``) and
the output projection through the ``out_proj`` module itself (recorded by its own hook).

Self-attention (one tensor as query, key and value, as in ``nn.TransformerEncoderLayer`` and
torchvision's ViT) is one recorded Linear with weight ``in_proj_weight``; cross-attention (a
decoder's) is three, one per third of ``in_proj_weight`` (:data:`PARTS`), whose terms add up.
Covered: one packed in-projection, no ``bias_k``/``bias_v``, no zero attention row, batched
inputs. Any other call runs the module's own forward, and its parameters are reported as not
covered (:func:`why_not_covered`), so they are recomputed on the generic path.
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

# Cross-attention's three projections: the suffix of each one's recorded name, and which third
# of in_proj_weight's rows (and in_proj_bias's entries) it applies.
PARTS = {"#q": 0, "#k": 1, "#v": 2}


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
        return _attention(module, name, record, *arguments, average_attn_weights, is_causal)

    return forward


def _why_not_this_call(
    module: nn.MultiheadAttention, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor
) -> str | None:
    """Why this call is not one the formula covers (the module itself is: the recorder takes
    no module that :func:`why_not_covered` refuses)."""
    if any(t.dim() != 3 for t in (query, key, value)):
        return "it ran on an unbatched input"
    if module.training and module.dropout > 0:
        return "it ran in training mode with dropout"
    return None


def _attention(
    module: nn.MultiheadAttention,
    name: str,
    record: Record,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    key_padding_mask: torch.Tensor | None,
    need_weights: bool,
    attn_mask: torch.Tensor | None,
    average_attn_weights: bool,
    is_causal: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``F.multi_head_attention_forward``'s steps for a packed in-projection in eval mode, with
    the samples first (so that the recorder sees one row per sample)."""
    self_attention = query is key and key is value
    if not module.batch_first:
        query, key, value = (t.transpose(0, 1) for t in (query, key, value))
    x = query
    B, L, E = x.shape
    S = key.shape[1]
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
    if self_attention:
        proj = record(name, x, F.linear(x, module.in_proj_weight, module.in_proj_bias))
        q, k, v = proj.chunk(3, dim=-1)
    else:
        weights = module.in_proj_weight.chunk(3)
        biases = (None,) * 3 if module.in_proj_bias is None else module.in_proj_bias.chunk(3)
        q, k, v = (
            record(name + part, t, F.linear(t, weights[i], biases[i]))
            for (part, i), t in zip(PARTS.items(), (query, key, value), strict=True)
        )
    # (B, n, E) -> (B, H, n, d): sample b, head h is row b·H + h of torch's layout
    q = q.view(B, L, H, d).transpose(1, 2)
    k, v = (t.view(B, S, H, d).transpose(1, 2) for t in (k, v))
    if attn_mask is not None and attn_mask.dim() == 2:
        attn_mask = attn_mask.unsqueeze(0)  # (1, L, S)
    if key_padding_mask is not None:
        padding = key_padding_mask.view(B, 1, 1, S).expand(-1, H, -1, -1).reshape(B * H, 1, S)
        attn_mask = padding if attn_mask is None else attn_mask + padding
    if need_weights:
        q_scaled = (q * math.sqrt(1.0 / float(d))).reshape(B * H, L, d)
        keys = k.reshape(B * H, S, d).transpose(-2, -1)
        if attn_mask is not None:
            scores = torch.baddbmm(attn_mask, q_scaled, keys)
        else:
            scores = torch.bmm(q_scaled, keys)
        attention = torch.softmax(scores, dim=-1)
        attn = torch.bmm(attention, v.reshape(B * H, S, d)).view(B, H, L, d)
    else:
        if attn_mask is not None:
            if attn_mask.size(0) == 1 and attn_mask.dim() == 3:
                attn_mask = attn_mask.unsqueeze(0)
            else:
                attn_mask = attn_mask.view(B, H, -1, S)
        attn = F.scaled_dot_product_attention(q, k, v, attn_mask, 0.0, is_causal)
        attention = None
    out = module.out_proj(attn.transpose(1, 2).reshape(B, L, E))
    if not module.batch_first:
        out = out.transpose(0, 1).contiguous()  # laid out as torch returns it: a view may follow
    if attention is not None:
        attention = attention.view(B, H, L, S)
        if average_attn_weights:
            attention = attention.mean(dim=1)
    return out, attention
