"""The Hugging Face callbacks and roles, with the real transformers package (tiny models built
from configs: randomly initialised, nothing downloaded)."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from biasdecay import AdaptiveBetaDecay  # noqa: E402
from biasdecay.roles import Role, param_roles  # noqa: E402
from biasdecay.sharpness.connectivity import connectivity_sharpness  # noqa: E402
from biasdecay.train.monitors import SharpnessTracker  # noqa: E402

hf = pytest.importorskip("biasdecay.integrations.transformers")

VOCAB, SEQ = 24, 6
R = 0.02  # low enough that some β is decayed at some steps


def bert_config(**overrides):
    settings = dict(
        vocab_size=VOCAB, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=16, max_position_embeddings=SEQ, num_labels=2,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )  # fmt: skip
    settings.update(overrides)
    return transformers.BertConfig(**settings)


def tiny_bert(cls=None) -> nn.Module:
    torch.manual_seed(0)
    cls = cls or transformers.BertForSequenceClassification
    return cls(bert_config()).double()


def task(n: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Token sequences labelled by whether token 1 occurs more often than token 2."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, VOCAB, (n, SEQ), generator=g)
    labels = ((ids == 1).sum(1) > (ids == 2).sum(1)).long()
    return ids, labels


# --------------------------------------------------------------------------------------------
# Roles


def test_roles_of_bert_gpt2_and_vit_modules() -> None:
    bert = param_roles(tiny_bert())
    assert bert["bert.embeddings.word_embeddings.weight"] is Role.EMBEDDING
    assert bert["bert.embeddings.position_embeddings.weight"] is Role.EMBEDDING
    assert bert["bert.embeddings.LayerNorm.weight"] is Role.NORM_SCALE
    assert bert["bert.embeddings.LayerNorm.bias"] is Role.NORM_SHIFT
    assert bert["bert.encoder.layer.0.output.LayerNorm.bias"] is Role.NORM_SHIFT
    assert bert["bert.encoder.layer.0.attention.self.query.weight"] is Role.LINEAR_WEIGHT
    assert bert["bert.encoder.layer.0.attention.self.query.bias"] is Role.LINEAR_BIAS
    assert bert["classifier.bias"] is Role.LINEAR_BIAS

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gpt2 = transformers.GPT2LMHeadModel(
            transformers.GPT2Config(
                vocab_size=VOCAB,
                n_embd=8,
                n_layer=1,
                n_head=2,
                n_positions=SEQ,
                bos_token_id=0,
                eos_token_id=0,
            )  # fmt: skip
        )
    roles = param_roles(gpt2)
    assert roles["transformer.wte.weight"] is Role.EMBEDDING  # tied to lm_head: listed once
    assert "lm_head.weight" not in roles
    assert roles["transformer.h.0.attn.c_attn.weight"] is Role.LINEAR_WEIGHT  # Conv1D
    assert roles["transformer.h.0.mlp.c_proj.bias"] is Role.LINEAR_BIAS
    assert roles["transformer.h.0.ln_1.bias"] is Role.NORM_SHIFT
    assert roles["transformer.ln_f.weight"] is Role.NORM_SCALE

    vit = transformers.ViTForImageClassification(
        transformers.ViTConfig(
            image_size=8,
            patch_size=4,
            num_channels=1,
            hidden_size=8,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=16,
            num_labels=3,
        )  # fmt: skip
    )
    roles = param_roles(vit)
    assert roles["vit.embeddings.patch_embeddings.projection.weight"] is Role.CONV_WEIGHT
    assert roles["vit.embeddings.cls_token"] is Role.OTHER
    norms = [n for n, r in roles.items() if r is Role.NORM_SHIFT]
    assert norms and all("layernorm" in n for n in norms)
    assert roles["classifier.weight"] is Role.LINEAR_WEIGHT


def test_lamb_for_decays_weights_and_embeddings_but_not_layer_norm_or_biases() -> None:
    model = tiny_bert()
    optimizer = hf.lamb_for(model, lr=1e-3, weight_decay=0.01, policy="no_bias_decay")
    decay_of = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert decay_of[id(named["bert.embeddings.word_embeddings.weight"])] == 0.01
    assert decay_of[id(named["bert.encoder.layer.0.intermediate.dense.weight"])] == 0.01
    assert decay_of[id(named["bert.encoder.layer.0.intermediate.dense.bias"])] == 0.0
    assert decay_of[id(named["bert.embeddings.LayerNorm.bias"])] == 0.0
    assert decay_of[id(named["bert.embeddings.LayerNorm.weight"])] == 0.0


# --------------------------------------------------------------------------------------------
# Per-sample C on a transformer with tied output embeddings


def test_per_sample_c_of_tiny_bert_with_tied_decoder_equals_the_loop() -> None:
    model = tiny_bert(transformers.BertForMaskedLM).eval()
    with torch.no_grad():  # β = 0 at initialisation would make its terms vanish by construction
        g = torch.Generator().manual_seed(2)
        for m in model.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.copy_(1 + 0.3 * torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(0.3 * torch.randn(m.bias.shape, generator=g))
    assert model.cls.predictions.decoder.weight is model.bert.embeddings.word_embeddings.weight
    measured = hf.LogitsOf(model)
    ids, _ = task(5)
    targets = torch.roll(ids, 1, dims=1)  # a per-token target for every position

    def token_mean(logits, y):
        return F.cross_entropy(logits.flatten(0, 1), y.flatten())

    report = connectivity_sharpness(measured, [(ids, targets)], loss_fn=token_mean)
    params = [p for p in measured.parameters() if p.requires_grad]
    total = 0.0
    for i in range(ids.shape[0]):
        loss = token_mean(measured(ids[i : i + 1]), targets[i : i + 1])
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        total += sum(
            (g * p).abs().sum().item() for g, p in zip(grads, params, strict=True) if g is not None
        )
    assert report.total == pytest.approx(total / ids.shape[0], rel=1e-10)
    assert report.by_role[Role.EMBEDDING] > 0 and report.by_role[Role.NORM_SHIFT] > 0


def tiny_gpt2_classifier() -> nn.Module:
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        n_layer=1, n_embd=8, n_head=2, vocab_size=VOCAB, n_positions=SEQ, num_labels=2,
        attn_pdrop=0.0, resid_pdrop=0.0, embd_pdrop=0.0, pad_token_id=0,
    )  # fmt: skip
    return transformers.GPT2ForSequenceClassification(config).double()


@pytest.mark.parametrize("build", [tiny_bert, tiny_gpt2_classifier], ids=["bert", "gpt2"])
def test_per_sample_c_of_a_classifier_takes_the_hook_path_and_equals_the_loop(build) -> None:
    """Every layer of these has a formula (GPT-2's Conv1D is a Linear stored transposed); their
    (1, T) position ids look the table up once for the batch, which the hook path expands over
    the batch. (torch.func cannot run GPT-2's classifier: it finds the last token by .item().)"""
    model = build().eval()
    with torch.no_grad():
        g = torch.Generator().manual_seed(2)
        for m in model.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.copy_(1 + 0.3 * torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(0.3 * torch.randn(m.bias.shape, generator=g))
    measured = hf.LogitsOf(model)
    ids, labels = task(6)
    ids = ids.clamp(min=1)  # no padding token: GPT-2 reads the last one
    report = connectivity_sharpness(measured, [(ids, labels)], strict=True)
    assert report.method == "hooks", report.fallback_reason
    params = {n: p for n, p in measured.named_parameters() if p.requires_grad}
    expected = dict.fromkeys(params, 0.0)
    for i in range(ids.shape[0]):
        loss = F.cross_entropy(measured(ids[i : i + 1]), labels[i : i + 1])
        grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
        for (n, p), grad in zip(params.items(), grads, strict=True):
            if grad is not None:
                expected[n] += (grad * p).abs().sum().item() / ids.shape[0]
    for name, value in expected.items():
        assert report.by_parameter[name] == pytest.approx(value, rel=1e-10, abs=1e-300), name
    positions = [n for n in expected if "position_embeddings" in n or n.endswith("wpe.weight")]
    assert len(positions) == 1 and report.by_parameter[positions[0]] > 0


def test_llama_rms_norm_is_a_norm_with_the_hook_path_formula() -> None:
    """Llama's RMSNorm is registered by name (γ, role NORM_SCALE, op rms_norm); a tiny Llama
    classifier takes the hook path under strict=True (float32: Llama's norm computes in
    float32 whatever the model's dtype)."""
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=SEQ, num_labels=2,
        pad_token_id=0,
    )  # fmt: skip
    model = transformers.LlamaForSequenceClassification(config).eval()
    norms = [n for n, m in model.named_modules() if type(m).__name__ == "LlamaRMSNorm"]
    assert len(norms) == 3
    with torch.no_grad():
        g = torch.Generator().manual_seed(2)
        for name in norms:
            gamma = model.get_submodule(name).weight
            gamma.copy_(1 + 0.3 * torch.randn(gamma.shape, generator=g))
    measured = hf.LogitsOf(model)
    roles = param_roles(measured)
    assert all(roles[f"model.{name}.weight"] is Role.NORM_SCALE for name in norms)
    ids, labels = task(6)
    ids = ids.clamp(min=1)
    report = connectivity_sharpness(measured, [(ids, labels)], strict=True)
    assert report.method == "hooks", report.fallback_reason
    params = [p for p in measured.parameters() if p.requires_grad]
    total = 0.0
    for i in range(ids.shape[0]):
        loss = F.cross_entropy(measured(ids[i : i + 1]), labels[i : i + 1])
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        total += sum(
            (g * p).abs().sum().item() for g, p in zip(grads, params, strict=True) if g is not None
        )
    assert report.total == pytest.approx(total / ids.shape[0], rel=1e-6)


def _registered_rms_norms() -> list[str]:
    from biasdecay import roles

    return [n for n, t in roles._MODULE_TYPES_BY_NAME.items() if t.op == "rms_norm"]


@pytest.mark.parametrize("qualified", _registered_rms_norms())
def test_every_registered_rms_norm_takes_its_formula_exactly(qualified: str) -> None:
    """Each family's RMSNorm registered by name, between two Linear layers, takes the hook path
    under strict=True (the guard would reject a class whose forward is not Llama's) and equals
    the one-sample loop (float32: these norms compute in float32)."""
    import importlib

    module_name, cls_name = qualified.rsplit(".", 1)
    try:
        cls = getattr(importlib.import_module(module_name), cls_name)
    except (ImportError, AttributeError):
        pytest.skip(f"{qualified} is not in this transformers")
    torch.manual_seed(0)
    norm = cls(8, eps=1e-5)
    with torch.no_grad():
        norm.weight.copy_(1 + 0.3 * torch.randn(8))
    model = nn.Sequential(nn.Linear(5, 8), norm, nn.Tanh(), nn.Linear(8, 3)).eval()
    x, y = torch.randn(6, 4, 5), torch.randint(0, 3, (6,))
    measured = nn.Sequential(model, Pool())
    report = connectivity_sharpness(measured, [(x, y)], strict=True)
    assert report.method == "hooks", report.fallback_reason
    params = dict(measured.named_parameters())
    expected = dict.fromkeys(params, 0.0)
    for i in range(x.shape[0]):
        loss = F.cross_entropy(measured(x[i : i + 1]), y[i : i + 1])
        grads = torch.autograd.grad(loss, list(params.values()))
        for (n, p), grad in zip(params.items(), grads, strict=True):
            expected[n] += (grad * p).abs().sum().item() / x.shape[0]
    for name, value in expected.items():
        assert report.by_parameter[name] == pytest.approx(value, rel=1e-5), name


class Pool(nn.Module):
    """The mean over a sequence's tokens."""

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h.mean(1)


# --------------------------------------------------------------------------------------------
# The Trainer with both callbacks, against a hand loop


class Sequences(torch.utils.data.Dataset):
    def __init__(self, ids: torch.Tensor, labels: torch.Tensor) -> None:
        self.ids, self.labels = ids, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.labels[i]}


class Logger(transformers.TrainerCallback):
    """Stands for a logging integration: keeps every log it is shown."""

    def __init__(self) -> None:
        self.logs: list[dict] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append(dict(logs))


def run_trainer(tmp_path, steps: int, every: int):
    model = tiny_bert()
    ids, labels = task()
    # One batch is the whole data set, so the sampler's order cannot change any gradient.
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), max_steps=steps, per_device_train_batch_size=len(labels),
        learning_rate=1e-2, lr_scheduler_type="constant", max_grad_norm=0.0, logging_steps=1,
        report_to=[], save_strategy="no", use_cpu=True, seed=0, disable_tqdm=True,
    )  # fmt: skip
    monitor = hf.SharpnessMonitorCallback(every=every)
    controller = hf.AdaptiveBetaDecayTrainerCallback(threshold=R)
    optimizer = hf.lamb_for(model, lr=1e-2, policy="adaptive_beta_decay")
    logger = Logger()
    trainer = transformers.Trainer(
        model=model, args=args, train_dataset=Sequences(ids, labels),
        optimizers=(optimizer, None), callbacks=[logger],
    )  # fmt: skip
    hf.add_callbacks(trainer, monitor, controller)  # ahead of the logger
    trainer.train()
    return model, trainer, monitor, controller, logger


def hand_loop(steps: int, every: int):
    model = tiny_bert()
    ids, labels = task()
    optimizer = hf.lamb_for(model, lr=1e-2, policy="adaptive_beta_decay")
    controller = AdaptiveBetaDecay(model, optimizer, threshold=R, beta_decay=1.0)
    tracker = SharpnessTracker(model, every)
    records = []
    model.train()
    for step in range(1, steps + 1):
        optimizer.zero_grad()
        model(input_ids=ids, labels=labels).loss.backward()
        if tracker.due(step):
            records.append(tracker.record(step))
        controller.step()
        optimizer.step()
    return model, records, controller


def test_trainer_with_both_callbacks_matches_a_hand_loop(tmp_path) -> None:
    steps, every = 6, 3
    model, trainer, monitor, controller, logger = run_trainer(tmp_path, steps, every)
    expected_model, expected_records, expected_controller = hand_loop(steps, every)

    assert [r["step"] for r in monitor.records] == [1, 2, 3, 6]
    for got, want in zip(monitor.records, expected_records, strict=True):
        assert got["c_m"] == pytest.approx(want["c_m"], rel=1e-9)
        for layer, stats in want["layers"].items():
            assert got["layers"][layer]["r"] == pytest.approx(stats["r"], rel=1e-9)
    got, want = controller.controller.history(), expected_controller.history()
    assert got["steps"] == want["steps"] == list(range(1, steps + 1))
    assert got["decisions"] == want["decisions"]
    torch.testing.assert_close(
        torch.tensor(got["ratios"]), torch.tensor(want["ratios"]), rtol=1e-9, atol=0
    )
    decided = {bool(d) for row in got["decisions"] for d in row}
    assert decided == {True, False}, "the threshold should decay some β and not others"
    for (name, p), q in zip(model.named_parameters(), expected_model.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-9, atol=1e-12, msg=name)
    for logs in (trainer.state.log_history, logger.logs):
        logged = [entry["sharpness/c_m"] for entry in logs if "sharpness/c_m" in entry]
        assert logged == [r["c_m"] for r in monitor.records]


def test_callbacks_on_a_model_without_normalisation_warn_once_and_do_nothing(tmp_path) -> None:
    class NoNorm(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(VOCAB, 4)
            self.head = nn.Linear(4, 2)

        def forward(self, input_ids, labels=None):
            logits = self.head(self.embed(input_ids).mean(1))
            return {"loss": F.cross_entropy(logits, labels), "logits": logits}

    ids, labels = task()
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=8, report_to=[],
        save_strategy="no", use_cpu=True, disable_tqdm=True,
    )  # fmt: skip
    model = NoNorm()
    controller = hf.AdaptiveBetaDecayTrainerCallback()
    monitor = hf.SharpnessMonitorCallback(every=1)
    trainer = transformers.Trainer(
        model=model, args=args, train_dataset=Sequences(ids, labels),
        optimizers=(hf.lamb_for(model, lr=1e-3), None), callbacks=[monitor, controller],
    )  # fmt: skip
    with pytest.warns(UserWarning) as caught:
        trainer.train()
    ours = [w for w in caught if "normalisation layer" in str(w.message)]
    assert len(ours) == 2  # one per callback, once each
    assert controller.controller is None
    assert [r["step"] for r in monitor.records] == [1, 2] and not monitor.records[0]["layers"]


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="every must be an integer >= 1"):
        hf.SharpnessMonitorCallback(every=0)
    with pytest.raises(ValueError, match="unknown"):
        hf.lamb_for(copy.deepcopy(tiny_bert()), lr=1e-3, policy="no_such_policy")


def test_controller_with_adamw(tmp_path) -> None:
    """AdamW over biasdecay's groups applies the controller's decisions its own (decoupled) way.
    The Trainer's default AdamW puts every LayerNorm β in one shared group, and an AdamW over
    model.parameters() decays every β at every step: neither leaves a per-layer decision to
    write, so both are refused, naming the fix."""
    from biasdecay import decay_policy, param_groups

    ids, labels = task()
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=8, report_to=[],
        save_strategy="no", use_cpu=True, disable_tqdm=True, weight_decay=0.01,
    )  # fmt: skip
    model = tiny_bert()
    groups = param_groups(model, decay_policy("adaptive_beta_decay"), 0.01)
    adamw = torch.optim.AdamW(groups, lr=1e-3)
    controller = hf.AdaptiveBetaDecayTrainerCallback(threshold=0.0)
    trainer = transformers.Trainer(
        model=model, args=args, train_dataset=Sequences(ids, labels), optimizers=(adamw, None)
    )
    hf.add_callbacks(trainer, controller)
    trainer.train()
    assert controller.controller.step_count == 2
    decided = [g["weight_decay"].item() for g in adamw.param_groups if g["adaptive_beta"]]
    assert decided and all(value == 1.0 for value in decided)  # R = 0: every layer decayed

    for optimizers in [
        (None, None),  # the Trainer builds its default AdamW
        (torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01), None),
    ]:
        trainer = transformers.Trainer(
            model=model, args=args, train_dataset=Sequences(ids, labels), optimizers=optimizers
        )
        hf.add_callbacks(trainer, hf.AdaptiveBetaDecayTrainerCallback())
        with pytest.raises(ValueError, match=r"shares its param group.*biasdecay.param_groups"):
            trainer.train()


def test_doc_example_runs(tmp_path, monkeypatch) -> None:
    import re
    from pathlib import Path

    doc = Path(__file__).resolve().parents[2] / "docs" / "integrations.md"
    (code,) = [
        block
        for block in re.findall(r"```python\n(.*?)```", doc.read_text(), flags=re.S)
        if "import torch, transformers" in block
    ]
    monkeypatch.chdir(tmp_path)  # the example's output_dir is relative
    namespace: dict = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exec(compile(code, "docs/integrations.md", "exec"), namespace)  # noqa: S102 - our doc
    records = namespace["monitor"].records
    assert [r["step"] for r in records] == [1, 2, 4]
    assert "bert.embeddings.LayerNorm" in records[-1]["layers"]
