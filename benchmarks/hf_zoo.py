"""Per-sample C on tiny Hugging Face models, against a one-sample-at-a-time loop.

For each model (random weights, eval mode, batch of 5): ``connectivity_sharpness`` with
``method="auto"``, and Σ_n Σ|θ ⊙ ∂ℓ_n/∂θ| / B from one autograd backward per sample. Prints the
relative difference, the report's method, how many parameters took each path, and the first
reason any left the hook path. In float64 the two agree to rounding on every model; in float32
to float32 rounding. A float64 model that computes parts in float32 (the Llama family's
RMSNorm) fails the guard's float64 tolerance and sends those parameters to torch.func.

    python benchmarks/hf_zoo.py                     # every model, float64
    python benchmarks/hf_zoo.py --dtype float32 --models vit,opt,swin
"""

from __future__ import annotations

import argparse
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from biasdecay.sharpness.connectivity import connectivity_sharpness

VOCAB, TOKENS, BATCH = 50, 7, 5
TEXT = dict(vocab_size=VOCAB, num_labels=3)
IMAGE = dict(num_labels=3)
SMALL = dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32)
DECODER = dict(SMALL, num_key_value_heads=1, max_position_embeddings=16, pad_token_id=0)

# name: (model class, config class, settings, input: "text" or image side, or "audio")
MODELS = {
    "gpt2": ("GPT2ForSequenceClassification", "GPT2Config",
             dict(n_embd=16, n_layer=2, n_head=2, n_positions=16, pad_token_id=0,
                  bos_token_id=1, eos_token_id=1, **TEXT), "text"),
    "bert": ("BertForSequenceClassification", "BertConfig",
             dict(SMALL, max_position_embeddings=16, **TEXT), "text"),
    "roberta": ("RobertaForSequenceClassification", "RobertaConfig",
                dict(SMALL, max_position_embeddings=20, **TEXT), "text"),
    "llama": ("LlamaForSequenceClassification", "LlamaConfig", dict(DECODER, **TEXT), "text"),
    "mistral": ("MistralForSequenceClassification", "MistralConfig",
                dict(DECODER, **TEXT), "text"),
    "qwen2": ("Qwen2ForSequenceClassification", "Qwen2Config", dict(DECODER, **TEXT), "text"),
    "opt": ("OPTForSequenceClassification", "OPTConfig",
            dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, ffn_dim=32,
                 max_position_embeddings=16, word_embed_proj_dim=16, pad_token_id=1, **TEXT),
            "text"),
    "gptneox": ("GPTNeoXForSequenceClassification", "GPTNeoXConfig",
                dict(SMALL, max_position_embeddings=16, pad_token_id=0, **TEXT), "text"),
    "vit": ("ViTForImageClassification", "ViTConfig",
            dict(SMALL, image_size=8, patch_size=4, num_channels=3, **IMAGE), 8),
    "deit": ("DeiTForImageClassification", "DeiTConfig",
             dict(SMALL, image_size=8, patch_size=4, **IMAGE), 8),
    "dinov2": ("Dinov2ForImageClassification", "Dinov2Config",
               dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, mlp_ratio=2,
                    image_size=8, patch_size=4, **IMAGE), 8),
    "swin": ("SwinForImageClassification", "SwinConfig",
             dict(image_size=16, patch_size=2, num_channels=3, embed_dim=8, depths=[1, 1],
                  num_heads=[1, 2], window_size=4, **IMAGE), 16),
    "convnext": ("ConvNextForImageClassification", "ConvNextConfig",
                 dict(num_channels=3, hidden_sizes=[8, 16], depths=[1, 1], num_stages=2,
                      **IMAGE), 16),
    "resnet": ("ResNetForImageClassification", "ResNetConfig",
               dict(num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1],
                    layer_type="basic", **IMAGE), 16),
    "wav2vec2": ("Wav2Vec2ForSequenceClassification", "Wav2Vec2Config",
                 dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                      intermediate_size=32, conv_dim=(8, 8), conv_stride=(4, 2),
                      conv_kernel=(8, 4), num_conv_pos_embeddings=4,
                      num_conv_pos_embedding_groups=2, classifier_proj_size=8, **IMAGE),
                 "audio"),
}  # fmt: skip


class Logits(nn.Module):
    """A Hugging Face model as ``inputs -> logits``."""

    def __init__(self, model: nn.Module, keyword: str) -> None:
        super().__init__()
        self.model, self.keyword = model, keyword

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.model(**{self.keyword: inputs}).logits


def build(name: str, dtype: torch.dtype) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """The wrapped model and one batch of inputs and labels."""
    import transformers

    model_class, config_class, settings, kind = MODELS[name]
    torch.manual_seed(0)
    config = getattr(transformers, config_class)(**settings)
    model = getattr(transformers, model_class)(config).to(dtype).eval()
    g = torch.Generator().manual_seed(1)
    if kind == "text":
        inputs, keyword = torch.randint(2, VOCAB, (BATCH, TOKENS), generator=g), "input_ids"
    elif kind == "audio":
        inputs, keyword = torch.randn(BATCH, 200, generator=g, dtype=dtype), "input_values"
    else:
        inputs = torch.randn(BATCH, 3, kind, kind, generator=g, dtype=dtype)
        keyword = "pixel_values"
    labels = torch.randint(0, 3, (BATCH,), generator=g)
    return Logits(model, keyword), inputs, labels


def one_sample_at_a_time(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> float:
    """C from one autograd backward per sample: the oracle."""
    params = [p for p in model.parameters() if p.requires_grad]
    total = 0.0
    for i in range(inputs.shape[0]):
        loss = F.cross_entropy(model(inputs[i : i + 1]), labels[i : i + 1])
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        pairs = zip(params, grads, strict=True)
        total += sum((p * g).abs().sum().item() for p, g in pairs if g is not None)
    return total / inputs.shape[0]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated models")
    parser.add_argument("--dtype", choices=("float64", "float32"), default="float64")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")  # torch.func's and transformers' notes
    dtype = getattr(torch, args.dtype)
    print(f"per-sample C against the one-sample loop | {args.dtype} | batch {BATCH}")
    print(f"{'model':<10}{'relative diff':>14}  {'method':<12}paths; first reason off the hooks")
    for name in args.models.split(","):
        model, inputs, labels = build(name, dtype)
        report = connectivity_sharpness(model, [(inputs, labels)])
        oracle = one_sample_at_a_time(model, inputs, labels)
        counts: dict[str, int] = {}
        for path in report.paths.values():
            counts[path] = counts.get(path, 0) + 1
        shown = ", ".join(f"{p} {n}" for p, n in sorted(counts.items()))
        reason = (report.fallback_reason or "").split(" (")[0][:100]
        diff = abs(report.total - oracle) / oracle
        print(f"{name:<10}{diff:>14.1e}  {report.method:<12}{shown}; {reason}")


if __name__ == "__main__":
    main()
