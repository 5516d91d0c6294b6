"""Every route of per-sample conv weight gradients, against a one-sample loop in float64.

A conv layer's per-sample weight gradients are formed by the backend's grouped weight-gradient
kernel (samples as groups) or by im2col (channels first or channels last) and a batched matmul,
a chunk of samples at a time; ``conv_plan`` times the candidates once per layer geometry and
keeps the fastest. Here every route runs on every geometry (forced), with chunks of 2 and 32
samples, and the batch is longer than a chunk so that chunk boundaries (and the guard's samples)
are crossed.
"""

from __future__ import annotations

import pytest
import torch
from test_connectivity import naive_per_sample
from torch import nn

from biasdecay.sharpness import _native
from biasdecay.sharpness import _per_sample_products as products
from biasdecay.sharpness._per_sample import GUARD_SAMPLES
from biasdecay.sharpness._per_sample_products import ConvPlan
from biasdecay.sharpness.connectivity import connectivity_sharpness

# (layer, input shape of one sample)
LAYERS = {
    "plain 3x3": (lambda: nn.Conv2d(8, 6, 3, padding=1), (8, 5, 5)),
    "stride 2, no bias": (lambda: nn.Conv2d(8, 6, 3, stride=2, padding=1, bias=False), (8, 7, 7)),
    "dilation, groups 2": (
        lambda: nn.Conv2d(16, 4, 3, padding=2, dilation=2, groups=2),
        (16, 6, 6),
    ),
    "'same', reflect": (
        lambda: nn.Conv2d(8, 3, (3, 4), padding="same", padding_mode="reflect"),
        (8, 6, 5),
    ),
    "1-D, stride 2": (lambda: nn.Conv1d(24, 5, 3, stride=2), (24, 11)),
    "small fan-in": (lambda: nn.Conv2d(3, 4, 3, padding=1), (3, 5, 5)),
    "depthwise": (lambda: nn.Conv2d(6, 6, 3, padding=1, groups=6), (6, 5, 5)),
    "1-D 'same'": (lambda: nn.Conv1d(3, 4, 4, padding="same"), (3, 9)),
    "3-D, stride 2, groups 2": (
        lambda: nn.Conv3d(4, 6, (2, 3, 3), stride=(1, 2, 2), padding=1, groups=2),
        (4, 3, 5, 5),
    ),
    "transposed, stride 2, output padding": (
        lambda: nn.ConvTranspose2d(6, 4, 3, stride=2, padding=1, output_padding=1),
        (6, 4, 4),
    ),
    "transposed 1-D, groups 2, dilation 2": (
        lambda: nn.ConvTranspose1d(4, 6, 3, groups=2, dilation=2, bias=False),
        (4, 7),
    ),
    "transposed 3-D": (lambda: nn.ConvTranspose3d(2, 3, 2, stride=2), (2, 2, 3, 3)),
    "large per-sample gradient": (
        lambda: nn.Conv2d(128, 128, 3, padding=1, bias=False),
        (128, 2, 2),
    ),
}


class ConvHead(nn.Module):
    def __init__(self, conv: nn.Module, sample_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.conv = conv
        with torch.no_grad():
            features = conv(torch.zeros(1, *sample_shape)).numel()
        self.fc = nn.Linear(features, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.tanh(self.conv(x)).flatten(1))


@pytest.fixture(autouse=True)
def fresh_plans(monkeypatch):
    """Each test times (or forces) its own plans: none is left from another test."""
    monkeypatch.setattr(products, "_PLANS", {})


# Every route that applies to each layer (im2col is written for 1-D and 2-D convs, its
# channels-last form for one group).
CASES = [(c, r) for c in sorted(LAYERS) for r in products.routes_for(LAYERS[c][0]())]


@pytest.mark.parametrize("chunk", [2, 32])
@pytest.mark.parametrize(("case", "route"), CASES)
def test_conv_route_matches_loop(case: str, route: str, chunk: int, monkeypatch) -> None:
    monkeypatch.setattr(products, "candidate_plans", lambda *args: [ConvPlan(route, chunk)])
    build, shape = LAYERS[case]
    torch.manual_seed(0)
    model = ConvHead(build(), shape).double().eval()
    g = torch.Generator().manual_seed(1)
    # More samples than the largest chunk and than the guard's samples.
    batch = 37
    assert batch > GUARD_SAMPLES
    x = torch.randn(batch, *shape, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (batch,), generator=g)
    report = connectivity_sharpness(model, [(x, y)], method="hooks", strict=True)
    expected = naive_per_sample(model, [(x, y)])
    assert report.paths["conv.weight"] == "hooks"
    assert list(products._PLANS.values()) == [ConvPlan(route, chunk)]
    for name, value in expected.items():
        assert report.by_parameter[name] == pytest.approx(value, rel=1e-10), name


def test_the_fastest_plan_is_kept_and_timed_once(monkeypatch) -> None:
    conv = nn.Conv2d(8, 6, 3, padding=1)
    plans = products.candidate_plans(conv, 64, 25)
    assert {p.route for p in plans} == set(products.routes_for(conv))
    fastest = plans[-1]
    made, calls, clock = [], [], [0.0]

    def fake_run(layer, a, delta, plan, work):
        made.append((plan, a.shape[0]))

        def run() -> None:  # the fastest takes 1 s of the fake clock, the others 2 s
            calls.append(plan)
            clock[0] += 1.0 if plan == fastest else 2.0

        return run

    monkeypatch.setattr(products, "_plan_run", fake_run)
    monkeypatch.setattr(products, "_clock", lambda: clock[0])
    a, delta = torch.randn(64, 8, 5, 5), torch.randn(64, 6, 5, 5)
    work = products.Workspace()
    assert products.chosen_plan(conv, a) is None
    assert products.conv_plan(conv, a, delta, work) == fastest
    # Each candidate run on at most _TUNING_SAMPLES samples: once to warm up, then once per
    # round, the rounds interleaving the candidates.
    assert sorted(made, key=str) == sorted(((p, products._TUNING_SAMPLES) for p in plans), key=str)
    order = [p for p, _ in made]
    assert calls == order * (1 + products._TIMED_ROUNDS)
    assert products.conv_plan(conv, a, delta, work) == fastest
    assert len(made) == len(plans)  # cached: not timed again
    assert products.chosen_plan(conv, a) == fastest
    # Another input size is another geometry: timed afresh.
    products.conv_plan(conv, a[:, :, :4], delta[:, :, :4], work)
    assert len(made) == 2 * len(plans)


def test_a_slow_stretch_during_one_round_does_not_decide_the_plan(monkeypatch) -> None:
    """Each candidate's best round counts: the fastest wins even though one of its runs fell in
    a slow stretch (here, its first timed run took 10 s)."""
    clock, seen = [0.0], {"fast": 0}

    def fast() -> None:
        seen["fast"] += 1
        clock[0] += 10.0 if seen["fast"] == 2 else 1.0  # run 1 warms up, run 2 is timed

    def slow() -> None:
        clock[0] += 2.0

    monkeypatch.setattr(products, "_clock", lambda: clock[0])
    runs = {"fast": fast, "slow": slow}
    assert products._fastest(runs, torch.device("cpu")) == "fast"
    assert seen["fast"] == 1 + products._TIMED_ROUNDS


def test_candidate_chunks_stay_within_the_batch_and_the_memory_cap() -> None:
    big = nn.Conv2d(512, 512, 3, bias=False)  # 2.4M weights: one sample per chunk
    # The fused kernel holds no per-sample gradient: its chunk is bounded by the input alone.
    fused = [ConvPlan("fused", 64)] if "fused" in products.routes_for(big) else []
    assert products.candidate_plans(big, 64, 16) == [
        ConvPlan("im2col", 1),
        ConvPlan("im2col channels-last", 1),
        *fused,
    ]
    plans = products.candidate_plans(nn.Conv2d(8, 6, 3), 5, 9)
    assert plans and all(2 <= p.chunk <= 5 or p.route == "im2col" for p in plans)
    assert all(p.chunk <= 5 for p in plans)
    # A thin layer on a large map: the unfolded block (144 × 4096 per sample) bounds the im2col
    # routes' chunks (with the padded input, 16 × 66 × 66, for the channels-last one), the
    # gradients (2,304 per sample) the grouped route's.
    thin = nn.Conv2d(16, 16, 3, padding=1)
    cap = products._MAX_CHUNK_ELEMENTS
    padded = 16 * 66 * 66
    assert products._padded_elements(thin, torch.zeros(16, 64, 64)) == padded
    plans = products.candidate_plans(thin, 128, 64 * 64, padded)
    buffers = {
        "grouped": 2304,
        "im2col": 2304 + 144 * 4096,
        "im2col channels-last": 2304 + 144 * 4096 + padded,
    }
    for plan in plans:
        if plan.route == "fused":  # no per-sample buffer: the samples a plan is timed on
            assert plan.chunk == products._TUNING_SAMPLES
        else:
            assert plan.chunk * buffers[plan.route] <= cap, plan
    for route in buffers:  # each route's largest chunk is at its cap
        largest = max(p.chunk for p in plans if p.route == route)
        assert largest == min(products._TUNING_SAMPLES, cap // buffers[route]), route
    assert {p.route for p in plans} == set(products.routes_for(thin))


class SequenceHead(nn.Module):
    """A Linear applied to every token, then a mean over tokens: not a rank-one gradient."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(6, 5)
        self.fc = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.tanh(self.proj(x)).mean(1))


class WideSequenceHead(SequenceHead):
    """Rows of 16 features: whole vectors of the fused kernel, which can then take them."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(16, 5)


@pytest.fixture
def fresh_sequence_plans(monkeypatch):
    monkeypatch.setattr(products, "_SEQUENCE_PLANS", {})


@pytest.mark.parametrize("route", products.SEQUENCE_ROUTES)
@pytest.mark.parametrize("chunk_elements", [1 << 19, 60])
def test_linear_on_sequences_matches_loop_across_chunks(
    chunk_elements: int, route: str, fresh_sequence_plans, monkeypatch
) -> None:
    # 60 elements: two samples of the 5×6 weight per chunk, so 19 chunks and a short last one
    # (the batched-matmul route; the fused one takes the batch at once).
    monkeypatch.setattr(products, "CHUNK_ELEMENTS", chunk_elements)
    wide = route == "fused"
    if wide and _native.unavailable() is not None:
        pytest.skip(f"the fused kernel is not available: {_native.unavailable()}")
    monkeypatch.setattr(products, "sequence_routes", lambda d, u: (route,))
    torch.manual_seed(0)
    model = (WideSequenceHead() if wide else SequenceHead()).double().eval()
    g = torch.Generator().manual_seed(2)
    x = torch.randn(37, 4, model.proj.in_features, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (37,), generator=g)
    report = connectivity_sharpness(model, [(x, y)], method="hooks", strict=True)
    assert list(products._SEQUENCE_PLANS.values()) == [route]
    for name, value in naive_per_sample(model, [(x, y)]).items():
        assert report.by_parameter[name] == pytest.approx(value, rel=1e-10), name


def test_a_3d_conv_takes_the_grouped_route_even_for_one_sample() -> None:
    """im2col is written for 1-D and 2-D convs: a Conv3d (or a transposed conv) has grouped
    plans only, down to one sample per chunk when the batch has one."""
    conv = nn.Conv3d(2, 3, 2)
    assert {p.route for p in products.candidate_plans(conv, 64, 8)} == {"grouped"}
    assert products.candidate_plans(conv, 1, 8) == [ConvPlan("grouped", 1)]
    torch.manual_seed(0)
    model = ConvHead(conv, (2, 3, 3, 3)).double().eval()
    for batch in (1, 5):
        x = torch.randn(batch, 2, 3, 3, 3, dtype=torch.float64)
        y = torch.randint(0, 3, (batch,))
        report = connectivity_sharpness(model, [(x, y)], method="hooks", strict=True)
        for name, value in naive_per_sample(model, [(x, y)]).items():
            assert report.by_parameter[name] == pytest.approx(value, rel=1e-10), name


class Upsampler(nn.Module):
    """A transposed conv told its output size: the output padding is not the layer's own."""

    def __init__(self) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(3, 2, 3, stride=2, padding=1)  # 4x4 -> 7x7 by default
        self.fc = nn.Linear(2 * 8 * 8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.tanh(self.up(x, output_size=(8, 8))).flatten(1))


def test_a_transposed_conv_given_its_output_size_matches_loop() -> None:
    torch.manual_seed(0)
    model = Upsampler().double().eval()
    x = torch.randn(6, 3, 4, 4, dtype=torch.float64)
    y = torch.randint(0, 3, (6,))
    report = connectivity_sharpness(model, [(x, y)], method="hooks", strict=True)
    assert report.paths["up.weight"] == "hooks"
    for name, value in naive_per_sample(model, [(x, y)]).items():
        assert report.by_parameter[name] == pytest.approx(value, rel=1e-10), name


def test_each_thread_keeps_its_own_workspace_and_only_small_buffers() -> None:
    import threading

    work = products.thread_workspace()
    assert products.thread_workspace() is work
    other = []
    thread = threading.Thread(target=lambda: other.append(products.thread_workspace()))
    thread.start()
    thread.join()
    assert other[0] is not work
    like = torch.zeros(1)
    small = work.take((products._MAX_CHUNK_ELEMENTS,), like, use="test small")
    work.take((products._MAX_CHUNK_ELEMENTS + 1,), like, use="test large")
    products.release_workspace(work)
    assert work.take((1,), like, use="test small").data_ptr() == small.data_ptr()  # kept
    assert ("test large", like.dtype, like.device) not in work._buffers  # freed


def test_guard_sums_share_one_kept_buffer_from_the_second_batch() -> None:
    work, like = products.Workspace(), torch.zeros(1, dtype=torch.float64)
    work.begin_batch()
    first = [work.implied((3, 4), like), work.implied((5,), like)]  # nothing kept yet: fresh
    assert first[0].untyped_storage().data_ptr() != first[1].untyped_storage().data_ptr()
    work.begin_batch()  # the buffer grows to what the first batch asked for
    a, b = work.implied((3, 4), like), work.implied((5,), like)
    assert a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()
    assert b.data_ptr() == a.data_ptr() + 12 * like.element_size()  # one after the other
    assert a.is_contiguous() and a.shape == (3, 4) and b.shape == (5,)
    a.fill_(1.0)
    b.fill_(2.0)
    assert a.sum().item() == 12.0 and b.sum().item() == 10.0  # no overlap
    bigger = work.implied((100,), like)  # past the buffer: fresh memory, not an overlap
    assert bigger.untyped_storage().data_ptr() != a.untyped_storage().data_ptr()
    work.begin_batch()  # from the start again, now large enough for all three
    again = work.implied((3, 4), like)
    assert again.data_ptr() != a.data_ptr()  # the buffer was replaced by a larger one
    assert (
        work.implied((105,), like).untyped_storage().data_ptr()
        == again.untyped_storage().data_ptr()
    )
    # Another dtype has its own buffer.
    assert work.implied((2,), torch.zeros(1)).dtype == torch.float32


def test_plan_timing_does_not_grow_the_guard_sums_buffer(monkeypatch) -> None:
    """The timing runs of a new layer's plans take guard sums too; the buffer kept for the next
    batch holds one sum per parameter at most, not theirs as well."""
    monkeypatch.setattr(products, "_PLANS", {})
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 8, 3)
    model = nn.Sequential(conv, nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 3)).double().eval()
    x, y = torch.randn(6, 3, 6, 6, dtype=torch.float64), torch.randint(0, 3, (6,))
    assert len(products.plans_for(conv, x, torch.zeros(6, 8, 4, 4))) > 1  # so it is timed
    work, key = products.thread_workspace(), ("implied", torch.float64, torch.device("cpu"))
    work._buffers.pop(key, None)
    batches = [(x[:3], y[:3]), (x[3:], y[3:])]
    report = connectivity_sharpness(model, batches, method="hooks", strict=True)
    assert products.chosen_plan(conv, x) is not None
    assert 0 < work._buffers[key].numel() <= sum(p.numel() for p in model.parameters())
    for name, value in naive_per_sample(model, batches).items():
        assert report.by_parameter[name] == pytest.approx(value, rel=1e-10), name
