import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from detector.losses import EqualizedFocalLoss, focal_loss, quality_focal_loss

NUM_CLASSES = 6
EPS = 1e-10


def naive_efl(x, y, g, gamma_b=2.0, s=8.0, alpha=0.25):
    """Li et al. 2022 (EFL) written out literally in float64, with gamma_j, w_j constants."""
    x, y, g = x.double(), y.double(), g.double()
    gamma = gamma_b + s * (1 - g)
    w = gamma / gamma_b
    p = 1.0 / (1.0 + torch.exp(-x))
    p_t = p * y + (1 - p) * (1 - y)
    alpha_t = alpha * y + (1 - alpha) * (1 - y)
    return -alpha_t * w * (1 - p_t) ** gamma * torch.log(p_t)


def naive_equalized_qfl(x, y, g, gamma_b=2.0, s=8.0):
    x, y, g = x.double(), y.double(), g.double()
    gamma = gamma_b + s * (1 - g)
    sigma = 1.0 / (1.0 + torch.exp(-x))
    return -(gamma / gamma_b) * (y - sigma).abs() ** gamma * ((1 - y) * torch.log(1 - sigma) + y * torch.log(sigma))


def one_hot(shape, generator, rate=0.2):
    return (torch.rand(shape, generator=generator) < rate).float()


def local_sums(grad, positive):
    """Per-class sums of |grad| over positive / negative entries, in float64."""
    magnitude = grad.double().abs().reshape(-1, NUM_CLASSES)
    positive = positive.reshape(-1, NUM_CLASSES)
    return (magnitude * positive).sum(0), (magnitude * ~positive).sum(0)


def test_first_step_is_focal_loss_and_plain_qfl():
    g = torch.Generator().manual_seed(0)
    efl = EqualizedFocalLoss(NUM_CLASSES)
    assert torch.equal(efl.pos_neg, torch.ones(NUM_CLASSES))
    assert torch.equal(efl.pos_grad, torch.zeros(NUM_CLASSES)) and torch.equal(efl.neg_grad, torch.zeros(NUM_CLASSES))
    x = torch.randn(100, NUM_CLASSES, generator=g) * 3
    y = one_hot((100, NUM_CLASSES), g)
    ours_x, ref_x = x.clone().requires_grad_(), x.clone().requires_grad_()
    ours = efl(ours_x, y, reduction="sum")
    ref = focal_loss(ref_x, y, alpha=0.25, gamma=2.0, reduction="sum")
    torch.testing.assert_close(ours, ref)
    torch.testing.assert_close(efl(x, y), focal_loss(x, y))
    # Both backward passes before the first update (the update happens during backward).
    ours.backward()
    ref.backward()
    torch.testing.assert_close(ours_x.grad, ref_x.grad)

    fresh = EqualizedFocalLoss(NUM_CLASSES)
    soft = torch.rand(100, NUM_CLASSES, generator=g) * y
    torch.testing.assert_close(fresh.quality_forward(x, soft), quality_focal_loss(x, soft, beta=2.0))


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_matches_written_equation_for_a_given_g(reduction):
    g = torch.Generator().manual_seed(1)
    efl = EqualizedFocalLoss(NUM_CLASSES)
    ratio = torch.tensor([1.0, 0.0, 0.5, 0.1, 0.9, 0.02])
    efl.pos_neg.copy_(ratio)
    x = torch.randn(80, NUM_CLASSES, generator=g) * 3
    y = one_hot((80, NUM_CLASSES), g)
    reduce = {"none": lambda t: t, "sum": torch.sum, "mean": torch.mean}[reduction]
    expected = reduce(naive_efl(x, y, ratio))
    torch.testing.assert_close(efl(x, y, reduction=reduction).double(), expected, rtol=1e-5, atol=1e-6)
    soft = torch.rand(80, NUM_CLASSES, generator=g) * y
    expected_q = reduce(naive_equalized_qfl(x, soft, ratio))
    torch.testing.assert_close(efl.quality_forward(x, soft, reduction=reduction).double(), expected_q,
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("quality", [False, True])
def test_gradient_treats_gamma_and_weight_as_constants(quality):
    g = torch.Generator().manual_seed(2)
    efl = EqualizedFocalLoss(NUM_CLASSES)
    ratio = torch.tensor([0.3, 0.0, 1.0, 0.7, 0.05, 0.5])
    efl.pos_neg.copy_(ratio)
    # Even a statistics buffer that requires grad must not open a gradient path through gamma_j / w_j.
    efl.pos_neg.requires_grad_(True)
    x = torch.randn(40, NUM_CLASSES, generator=g) * 3
    y = one_hot((40, NUM_CLASSES), g)
    if quality:
        y = torch.rand(40, NUM_CLASSES, generator=g) * y
    ours_x, ref_x = x.clone().requires_grad_(), x.double().requires_grad_()
    upstream = torch.randn(40, NUM_CLASSES, generator=g)
    (efl.quality_forward if quality else efl)(ours_x, y).backward(upstream)
    naive = naive_equalized_qfl if quality else naive_efl
    naive(ref_x, y, ratio).backward(upstream.double())  # ratio is a plain constant here
    torch.testing.assert_close(ours_x.grad.double(), ref_x.grad, rtol=1e-4, atol=1e-7)
    assert efl.pos_neg.grad is None


@pytest.mark.parametrize("quality", [False, True])
def test_hand_written_backward_passes_gradcheck(quality):
    g = torch.Generator().manual_seed(3)
    efl = EqualizedFocalLoss(NUM_CLASSES)
    efl.pos_neg.copy_(torch.tensor([0.3, 0.0, 1.0, 0.7, 0.05, 0.5]))
    x = (torch.randn(5, NUM_CLASSES, generator=g, dtype=torch.float64) * 2).requires_grad_()
    y = one_hot((5, NUM_CLASSES), g, rate=0.4).double()
    if quality:
        y = torch.rand(5, NUM_CLASSES, generator=g, dtype=torch.float64) * y
    fn = efl.quality_forward if quality else efl
    for reduction in ("none", "sum", "mean"):
        assert torch.autograd.gradcheck(lambda t: fn(t, y, reduction=reduction), (x,))


def test_statistics_are_the_gradient_sums_at_the_callers_logits():
    g = torch.Generator().manual_seed(4)
    efl = EqualizedFocalLoss(NUM_CLASSES)
    features = torch.randn(2, 30, 8, generator=g)
    layer = torch.nn.Linear(8, NUM_CLASSES)
    logits = layer(features)  # (B, A, K), a non-leaf tensor as a head produces it
    logits.retain_grad()
    y = one_hot((2, 30, NUM_CLASSES), g)
    num_pos = y.sum().clamp(min=1)
    (efl(logits, y, reduction="sum") / num_pos).backward()  # the caller's normalisation is part of dL/dx
    expected_pos, expected_neg = local_sums(logits.grad, y > 0)
    torch.testing.assert_close(efl.pos_grad.double(), expected_pos, rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(efl.neg_grad.double(), expected_neg, rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(efl.pos_neg, (efl.pos_grad / (efl.neg_grad + EPS)).clamp(0, 1))
    assert efl.pos_neg.dtype == torch.float32


def test_statistics_accumulate_over_steps_and_change_the_loss():
    g = torch.Generator().manual_seed(5)
    efl = EqualizedFocalLoss(NUM_CLASSES)
    total_pos = torch.zeros(NUM_CLASSES, dtype=torch.float64)
    total_neg = torch.zeros(NUM_CLASSES, dtype=torch.float64)
    for step in range(3):
        logits = (torch.randn(50, NUM_CLASSES, generator=g) * 2).requires_grad_()
        y = one_hot((50, NUM_CLASSES), g, rate=0.1)
        y[:, 0] = 0.0  # class 0 never has a positive: g_0 = 0, the largest exponent
        loss = efl(logits, y, reduction="mean")
        if step == 0:
            torch.testing.assert_close(loss, focal_loss(logits.detach(), y, reduction="mean"))
        else:
            torch.testing.assert_close(loss.double(), naive_efl(logits.detach(), y, previous_ratio).mean(),
                                       rtol=1e-5, atol=1e-7)
        loss.backward()
        pos, neg = local_sums(logits.grad, y > 0)
        total_pos += pos
        total_neg += neg
        torch.testing.assert_close(efl.pos_grad.double(), total_pos, rtol=1e-5, atol=1e-9)
        torch.testing.assert_close(efl.neg_grad.double(), total_neg, rtol=1e-5, atol=1e-9)
        previous_ratio = efl.pos_neg.clone()
    assert efl.pos_neg[0] == 0.0 and (efl.pos_neg >= 0).all() and (efl.pos_neg <= 1).all()
    gamma, weight = efl.focusing_factors()
    torch.testing.assert_close(gamma, 2.0 + 8.0 * (1 - efl.pos_neg))
    torch.testing.assert_close(weight, gamma / 2.0)


def test_ignored_entries_add_nothing():
    g = torch.Generator().manual_seed(6)
    x = torch.randn(40, NUM_CLASSES, generator=g) * 2
    y = one_hot((40, NUM_CLASSES), g)
    valid = torch.rand(40, generator=g) < 0.6  # per anchor
    masked, selected = EqualizedFocalLoss(NUM_CLASSES), EqualizedFocalLoss(NUM_CLASSES)
    (masked(x.clone().requires_grad_(), y) * valid[:, None]).sum().backward()
    selected(x[valid].clone().requires_grad_(), y[valid], reduction="sum").backward()
    torch.testing.assert_close(masked.pos_grad, selected.pos_grad)
    torch.testing.assert_close(masked.neg_grad, selected.neg_grad)


def test_soft_targets_count_as_positive_where_above_zero():
    g = torch.Generator().manual_seed(7)
    efl = EqualizedFocalLoss(NUM_CLASSES)
    logits = (torch.randn(30, NUM_CLASSES, generator=g) * 2).requires_grad_()
    soft = torch.rand(30, NUM_CLASSES, generator=g) * one_hot((30, NUM_CLASSES), g, rate=0.3)
    efl.quality_forward(logits, soft, reduction="sum").backward()
    expected_pos, expected_neg = local_sums(logits.grad, soft > 0)
    torch.testing.assert_close(efl.pos_grad.double(), expected_pos, rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(efl.neg_grad.double(), expected_neg, rtol=1e-5, atol=1e-8)


def test_per_level_calls_add_up_and_no_update_without_backward():
    g = torch.Generator().manual_seed(8)
    x = torch.randn(60, NUM_CLASSES, generator=g)
    y = one_hot((60, NUM_CLASSES), g)
    whole, levels = EqualizedFocalLoss(NUM_CLASSES), EqualizedFocalLoss(NUM_CLASSES)
    whole(x.clone().requires_grad_(), y, reduction="sum").backward()
    parts = [t.clone().requires_grad_() for t in x.split([10, 20, 30])]
    sum(levels(p, t, reduction="sum") for p, t in zip(parts, y.split([10, 20, 30]), strict=True)).backward()
    torch.testing.assert_close(whole.pos_grad, levels.pos_grad)
    torch.testing.assert_close(whole.neg_grad, levels.neg_grad)

    efl = EqualizedFocalLoss(NUM_CLASSES)
    with torch.no_grad():
        efl(x.clone().requires_grad_(), y).sum()
    efl(x, y).sum()  # logits without grad: nothing to collect
    assert torch.equal(efl.pos_grad, torch.zeros(NUM_CLASSES)) and torch.equal(efl.pos_neg, torch.ones(NUM_CLASSES))


def test_non_finite_step_is_skipped():
    efl = EqualizedFocalLoss(NUM_CLASSES)
    logits = torch.zeros(4, NUM_CLASSES, requires_grad=True)
    y = torch.zeros(4, NUM_CLASSES)
    y[0, 1] = 1.0
    (efl(logits, y, reduction="sum") * float("inf")).backward()  # an overflowed fp16 GradScaler step
    assert torch.equal(efl.pos_grad, torch.zeros(NUM_CLASSES)) and torch.equal(efl.neg_grad, torch.zeros(NUM_CLASSES))


def test_state_dict_round_trip(tmp_path):
    g = torch.Generator().manual_seed(9)
    efl = EqualizedFocalLoss(NUM_CLASSES)
    logits = torch.randn(30, NUM_CLASSES, generator=g, requires_grad=True)
    efl(logits, one_hot((30, NUM_CLASSES), g), reduction="sum").backward()
    assert set(efl.state_dict()) == {"pos_grad", "neg_grad", "pos_neg"}
    torch.save(efl.state_dict(), tmp_path / "efl.pt")
    restored = EqualizedFocalLoss(NUM_CLASSES)
    restored.load_state_dict(torch.load(tmp_path / "efl.pt", weights_only=True))
    for name in ("pos_grad", "neg_grad", "pos_neg"):
        assert torch.equal(getattr(restored, name), getattr(efl, name))
        assert getattr(restored, name).dtype == torch.float32
    x = torch.randn(10, NUM_CLASSES, generator=g)
    y = one_hot((10, NUM_CLASSES), g)
    torch.testing.assert_close(restored(x, y), efl(x, y))


def test_fp32_under_autocast_and_after_half():
    g = torch.Generator().manual_seed(10)
    x = torch.randn(50, NUM_CLASSES, generator=g) * 2
    y = one_hot((50, NUM_CLASSES), g)
    reference = EqualizedFocalLoss(NUM_CLASSES)
    ref_logits = x.bfloat16().float().requires_grad_()
    reference(ref_logits, y, reduction="sum").backward()
    reference(ref_logits.detach().requires_grad_(), y, reduction="sum").backward()  # a second step, g != 1

    efl = EqualizedFocalLoss(NUM_CLASSES)
    for _ in range(2):
        layer = torch.nn.Linear(NUM_CLASSES, NUM_CLASSES)
        with torch.no_grad():
            layer.weight.copy_(torch.eye(NUM_CLASSES))
            layer.bias.zero_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = layer(x)  # bf16 under autocast
            assert logits.dtype == torch.bfloat16
            loss = efl(logits, y, reduction="sum")
        assert loss.dtype == torch.float32
        loss.backward()
    for name in ("pos_grad", "neg_grad", "pos_neg"):
        assert getattr(efl, name).dtype == torch.float32
    # The hook saw the bf16 gradient of the bf16 logits: the statistics agree with fp32 ones to bf16 precision.
    torch.testing.assert_close(efl.pos_grad, reference.pos_grad, rtol=2e-2, atol=1e-4)
    torch.testing.assert_close(efl.neg_grad, reference.neg_grad, rtol=2e-2, atol=1e-4)

    efl.half()
    for name in ("pos_grad", "neg_grad", "pos_neg"):
        assert getattr(efl, name).dtype == torch.float32
    assert efl.to(torch.bfloat16).pos_neg.dtype == torch.float32


@pytest.mark.parametrize("quality", [False, True])
def test_targets_with_gradient_use_the_composed_path(quality):
    g = torch.Generator().manual_seed(11)
    fused, composed = EqualizedFocalLoss(NUM_CLASSES), EqualizedFocalLoss(NUM_CLASSES)
    ratio = torch.tensor([0.3, 0.0, 1.0, 0.7, 0.05, 0.5])
    fused.pos_neg.copy_(ratio)
    composed.pos_neg.copy_(ratio)
    x = torch.randn(30, NUM_CLASSES, generator=g) * 2
    y = one_hot((30, NUM_CLASSES), g)
    if quality:
        y = torch.rand(30, NUM_CLASSES, generator=g) * y
    x_fused, x_composed, y_grad = x.clone().requires_grad_(), x.clone().requires_grad_(), y.clone().requires_grad_()
    loss_fused = (fused.quality_forward if quality else fused)(x_fused, y, reduction="sum")
    loss_composed = (composed.quality_forward if quality else composed)(x_composed, y_grad, reduction="sum")
    torch.testing.assert_close(loss_composed, loss_fused)
    loss_fused.backward()
    loss_composed.backward()
    assert y_grad.grad is not None
    torch.testing.assert_close(x_composed.grad, x_fused.grad)
    torch.testing.assert_close(composed.pos_grad, fused.pos_grad)
    torch.testing.assert_close(composed.neg_grad, fused.neg_grad)


def test_invalid_arguments():
    with pytest.raises(ValueError, match="num_classes"):
        EqualizedFocalLoss(0)
    with pytest.raises(ValueError, match="gamma_b"):
        EqualizedFocalLoss(3, gamma_b=0.0)
    with pytest.raises(ValueError, match="scale"):
        EqualizedFocalLoss(3, scale=-1.0)
    with pytest.raises(ValueError, match="alpha"):
        EqualizedFocalLoss(3, alpha=2.0)
    efl = EqualizedFocalLoss(3)
    with pytest.raises(ValueError, match="num_classes"):
        efl(torch.zeros(2, 4), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="shape"):
        efl(torch.zeros(2, 3), torch.zeros(2, 2))
    with pytest.raises(ValueError, match="reduction"):
        efl.quality_forward(torch.zeros(2, 3), torch.zeros(2, 3), reduction="avg")


WORLD_SIZE = 2


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _rank_inputs(rank):
    g = torch.Generator().manual_seed(100 + rank)
    x = torch.randn(20 + 10 * rank, NUM_CLASSES, generator=g) * 2  # different sizes per rank on purpose
    return x, one_hot(x.shape, g, rate=0.2 + 0.2 * rank)


def _worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                         world_size=WORLD_SIZE)
    efl = EqualizedFocalLoss(NUM_CLASSES)
    local = []
    for step in range(2):
        x, y = _rank_inputs(rank)
        logits = (x + step).requires_grad_()
        efl(logits, y, reduction="sum").backward()
        local.append(local_sums(logits.grad, y > 0))
    # Inside DistributedDataParallel: the hook's collective runs in the middle of DDP's own gradient all-reduce.
    torch.manual_seed(0)  # identical initial weights on both ranks
    model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(NUM_CLASSES, NUM_CLASSES))
    efl_ddp = EqualizedFocalLoss(NUM_CLASSES)
    x, y = _rank_inputs(rank)
    logits = model(x)
    logits.retain_grad()
    efl_ddp(logits, y, reduction="sum").backward()
    torch.save({"state": efl.state_dict(), "local": local, "ddp_state": efl_ddp.state_dict(),
                "ddp_local": local_sums(logits.grad, y > 0), "ddp_weight_grad": model.module.weight.grad},
               os.path.join(out_dir, f"rank{rank}.pt"))
    torch.distributed.destroy_process_group()


def test_two_process_statistics_are_summed_over_ranks(tmp_path):
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD_SIZE, join=True)
    results = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD_SIZE)]
    expected_pos = sum(pos for result in results for pos, _ in result["local"])
    expected_neg = sum(neg for result in results for _, neg in result["local"])
    for result in results:
        torch.testing.assert_close(result["state"]["pos_grad"].double(), expected_pos, rtol=1e-5, atol=1e-8)
        torch.testing.assert_close(result["state"]["neg_grad"].double(), expected_neg, rtol=1e-5, atol=1e-8)
    for name in ("pos_grad", "neg_grad", "pos_neg"):
        assert torch.equal(results[0]["state"][name], results[1]["state"][name])
        assert torch.equal(results[0]["ddp_state"][name], results[1]["ddp_state"][name])
    ddp_pos = sum(result["ddp_local"][0] for result in results)
    ddp_neg = sum(result["ddp_local"][1] for result in results)
    torch.testing.assert_close(results[0]["ddp_state"]["pos_grad"].double(), ddp_pos, rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(results[0]["ddp_state"]["neg_grad"].double(), ddp_neg, rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(results[0]["ddp_weight_grad"], results[1]["ddp_weight_grad"])  # DDP still averaged
