"""DINO's pieces checked against independent re-derivations (NumPy, hand formulas, torch.rot90)."""

import socket
import sys

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import REPO

from geodino.dino.augment import MultiCrop, MultiCropConfig, gaussian_blur, resized_crop, solarize
from geodino.dino.loop import clip_gradients, update_teacher
from geodino.dino.loss import DINOLoss, koleo_loss
from geodino.dino.models import DINOHead, build_student_teacher, create_backbone
from geodino.dino.schedules import cosine_schedule
from geodino.dino.state import param_groups


def numpy_softmax(x, axis=-1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def numpy_dino_loss(student, teacher, center, ncrops, student_temp, teacher_temp):
    """Straight from the paper: sum over (global teacher view, other student view) pairs of H(t, s)."""
    batch = teacher.shape[0] // 2
    s = [student[i * batch:(i + 1) * batch] / student_temp for i in range(ncrops)]
    t = [numpy_softmax((teacher[i * batch:(i + 1) * batch] - center) / teacher_temp) for i in range(2)]
    terms = []
    for iq in range(2):
        for v in range(ncrops):
            if v != iq:
                log_p = s[v] - np.log(np.exp(s[v]).sum(-1, keepdims=True))
                terms.append((-t[iq] * log_p).sum(-1).mean())
    return np.mean(terms)


def test_loss_and_centre_match_numpy():
    rng = np.random.default_rng(0)
    out_dim, ncrops, batch = 4, 4, 3
    loss_fn = DINOLoss(out_dim, ncrops, warmup_teacher_temp=0.04, teacher_temp=0.07, warmup_teacher_temp_epochs=3,
                       nepochs=10)
    center = np.zeros((1, out_dim))
    for epoch in range(3):
        student = rng.normal(size=(ncrops * batch, out_dim))
        teacher = rng.normal(size=(2 * batch, out_dim))
        temp = [0.04, 0.055, 0.07][epoch]
        assert loss_fn.teacher_temp_schedule[epoch] == pytest.approx(temp)
        expected = numpy_dino_loss(student, teacher, center, ncrops, 0.1, temp)
        got = loss_fn(torch.tensor(student, dtype=torch.float64), torch.tensor(teacher, dtype=torch.float64), epoch)
        assert got.item() == pytest.approx(expected, rel=1e-9)
        center = 0.9 * center + 0.1 * teacher.mean(0, keepdims=True)
        np.testing.assert_allclose(loss_fn.center.numpy(), center, rtol=1e-6)
    np.testing.assert_allclose(loss_fn.teacher_temp_schedule, [0.04, 0.055] + [0.07] * 8)  # one per epoch


@pytest.mark.parametrize("ncrops", [2, 3, 12])
def test_loss_gradients_match_the_pairwise_form(ncrops):
    """The loss adds each student view's pairs into one term; the gradients reaching the student stay the
    pairwise form's (facebookresearch/dino's loop, as benchmarks/dino_loss.py times it; float64, so only the order
    of additions differs)."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from dino_loss import pairwise_loss

    generator = torch.Generator().manual_seed(ncrops)
    student = torch.randn(ncrops * 5, 64, generator=generator, dtype=torch.float64)
    teacher = torch.randn(2 * 5, 64, generator=generator, dtype=torch.float64)
    gradients = []
    for loss_of in (lambda s: DINOLoss(64, ncrops, 0.04, 0.04, 0, 1)(s, teacher, 0),
                    lambda s: pairwise_loss(s, teacher, ncrops, student_temp=0.1, teacher_temp=0.04)):
        leaf = student.clone().requires_grad_(True)
        loss = loss_of(leaf)
        loss.backward()
        gradients.append((loss.item(), leaf.grad))
    (fused, fused_grad), (pairwise, pairwise_grad) = gradients
    assert fused == pytest.approx(pairwise, rel=1e-12)
    torch.testing.assert_close(fused_grad, pairwise_grad, rtol=1e-10, atol=1e-14)


def test_centre_never_joins_the_autograd_graph():
    """A teacher output that carries gradients (e.g. a loss used outside the loop) must not drag the centre into
    the graph: it would hold every step's graph alive."""
    loss_fn = DINOLoss(4, 2, 0.04, 0.04, 0, 1)
    teacher = torch.randn(2, 4, requires_grad=True)
    loss_fn(torch.randn(2, 4), teacher, 0)
    assert not loss_fn.center.requires_grad and loss_fn.center.grad_fn is None


def test_koleo_is_minus_the_mean_log_distance_to_the_nearest_neighbour():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(6, 5)) * rng.uniform(0.5, 3, size=(6, 1))  # scale must not matter
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    distances = np.linalg.norm(unit[:, None] - unit[None], axis=-1)
    np.fill_diagonal(distances, np.inf)
    expected = -np.log(distances.min(axis=1) + 1e-8).mean()
    assert koleo_loss(torch.tensor(features)).item() == pytest.approx(expected, rel=1e-5)  # float32 inside
    twins = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # two identical features: distance 0, log eps
    assert koleo_loss(twins).item() == pytest.approx(-(2 * np.log(1e-8) + np.log(np.sqrt(2) + 1e-8)) / 3, rel=1e-5)


def _centre_worker(rank, world, port, results):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    loss_fn = DINOLoss(4, 2, 0.04, 0.04, 0, 1)
    teacher = torch.arange(8, dtype=torch.float32).reshape(2, 4) + 10 * rank  # each worker: 2 rows
    loss_fn.update_center(teacher)
    results[rank] = loss_fn.center.clone()
    dist.destroy_process_group()


def test_centre_is_all_reduced_across_two_gloo_workers():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    results = mp.get_context("spawn").Manager().dict()  # fork would copy Ray's gRPC threads
    mp.spawn(_centre_worker, args=(2, port, results), nprocs=2, join=True)
    everything = torch.cat([torch.arange(8.0).reshape(2, 4) + 10 * r for r in range(2)])
    expected = 0.1 * everything.mean(0, keepdim=True)  # the mean over both workers' rows
    for rank in range(2):
        torch.testing.assert_close(results[rank], expected)


def test_schedules():
    lr = cosine_schedule(1.0, 0.0, epochs=10, niter_per_ep=5, warmup_epochs=2)
    assert len(lr) == 50 and lr[0] == 0 and lr[9] == pytest.approx(1.0)
    rest = np.arange(40)
    np.testing.assert_allclose(lr[10:], 0.5 * (1 + np.cos(np.pi * rest / 40)))
    momentum = cosine_schedule(0.996, 1.0, 4, 3)
    assert momentum[0] == pytest.approx(0.996) and momentum[-1] < 1 and np.all(np.diff(momentum) > 0)
    np.testing.assert_allclose(cosine_schedule(1.0, 0.0, epochs=2, niter_per_ep=2, warmup_epochs=2),
                               [0.0, 1 / 3, 2 / 3, 1.0])  # a run that is all warm-up is allowed
    np.testing.assert_allclose(cosine_schedule(1.0, 0.0, epochs=2, niter_per_ep=1, warmup_epochs=1, start_warmup_value=0.5),
                               [0.5, 1.0])  # one warm-up step starts at start_warmup_value
    with pytest.raises(ValueError) as too_long:
        cosine_schedule(1.0, 0.0, epochs=2, niter_per_ep=1, warmup_epochs=3)
    assert str(too_long.value) == "--warmup_epochs 3 is longer than the run's --epochs 2: lower it"


def test_lr_is_scaled_by_the_global_batch():
    """DINO's linear scaling rule: lr x (batch per GPU x workers) / 256, so more workers means a larger peak."""
    from geodino.dino.config import PretrainConfig
    from geodino.dino.schedules import schedules

    cfg = PretrainConfig(lr=0.0005, batch_size_per_gpu=64, epochs=2, warmup_epochs=1, min_lr=0.0)
    for workers in (1, 4):
        lr = schedules(cfg, steps_per_epoch=3, world_size=workers)["lr"]
        assert lr.max() == pytest.approx(0.0005 * 64 * workers / 256)


def test_teacher_ema_and_per_parameter_clipping():
    student, teacher = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    before = [p.detach().clone() for p in teacher.parameters()]
    update_teacher(student, teacher, 0.9)
    for t0, s, t1 in zip(before, student.parameters(), teacher.parameters()):
        torch.testing.assert_close(t1, 0.9 * t0 + 0.1 * s.detach())
    student.weight.grad = torch.full((2, 3), 10.0)
    student.bias.grad = torch.tensor([0.3, 0.4])
    clip_gradients(student, 1.0)
    assert student.weight.grad.norm().item() == pytest.approx(1.0, rel=1e-4)
    torch.testing.assert_close(student.bias.grad, torch.tensor([0.3, 0.4]))  # under the limit: untouched


def test_head_weight_norm_and_no_decay_on_biases_and_norms():
    head = DINOHead(16, out_dim=32, norm_last_layer=True)
    out = head(torch.randn(5, 16))
    assert out.shape == (5, 32)
    assert not head.last_layer.weight_g.requires_grad
    assert DINOHead(16, 32, norm_last_layer=False).last_layer.weight_g.requires_grad
    backbone = create_backbone("vit_tiny", 16, 3)
    decayed, plain = param_groups(backbone)
    assert all(p.ndim > 1 for p in decayed["params"]) and all(p.ndim == 1 or p.ndim == 0 for p in plain["params"])
    assert plain["weight_decay"] == 0.0


def test_backbone_takes_any_band_count_and_size():
    backbone = create_backbone("vit_tiny", patch_size=8, in_chans=12)
    for size in (120, 224, 48):
        assert backbone(torch.randn(2, 12, size, size)).shape == (2, 192)


def test_dino_checkpoint_keys():
    student, teacher = build_student_teacher("vit_tiny", 16, 3, out_dim=64, norm_last_layer=True, drop_path_rate=0.1)
    keys = set(teacher.state_dict())
    for key in ("backbone.cls_token", "backbone.pos_embed", "backbone.patch_embed.proj.weight",
                "backbone.blocks.0.attn.qkv.weight", "backbone.norm.weight", "head.mlp.0.weight",
                "head.last_layer.weight_g", "head.last_layer.weight_v"):
        assert key in keys
    assert not any(p.requires_grad for p in teacher.parameters())


def test_full_size_crop_is_a_rotation_or_flip_of_the_image():
    torch.manual_seed(0)
    images = torch.randn(16, 2, 8, 8)
    crops = resized_crop(images, 8, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    seen = set()
    for image, crop in zip(images, crops):
        candidates = [torch.rot90(base, k, dims=(1, 2)) for base in (image, image.flip(2)) for k in range(4)]
        matches = [i for i, c in enumerate(candidates) if torch.allclose(c, crop, atol=1e-5)]
        assert matches, "a full-size crop must be one of the 8 symmetries of the square"
        seen.add(matches[0])
    assert len(seen) > 3  # the symmetries are actually drawn at random


def test_multicrop_shapes_blur_and_solarize():
    torch.manual_seed(0)
    config = MultiCropConfig(global_crops_size=32, local_crops_size=16, local_crops_number=3)
    crops = MultiCrop(config)(torch.rand(4, 12, 60, 60))
    assert [tuple(c.shape) for c in crops] == [(4, 12, 32, 32)] * 2 + [(4, 12, 16, 16)] * 3
    images = torch.rand(3, 2, 16, 16)
    torch.testing.assert_close(gaussian_blur(images, probability=1e-9), images)
    blurred = gaussian_blur(images, probability=1.0)
    assert blurred.std() < images.std()
    torch.testing.assert_close(blurred.mean(), images.mean(), atol=0.02, rtol=0)
    x = torch.tensor([0.2, 0.5, 0.9]).reshape(1, 1, 1, 3)
    torch.testing.assert_close(solarize(x, 1.0, 0.5), torch.tensor([0.2, 0.5, 0.1]).reshape(1, 1, 1, 3))
    torch.testing.assert_close(solarize(-x, 1.0, 0.0), -x)
    torch.testing.assert_close(solarize(x, 1.0, 0.0), -x)


def test_step_flops_counted_on_the_meta_device_are_those_of_a_real_step():
    """MFU's numerator: the count on shapes alone matches FlopCounterMode on a real CPU step (attention's backward
    is counted through another kernel on meta, hence not exactly)."""
    from torch.utils.flop_counter import FlopCounterMode

    from geodino.dino.flops import dino_step_flops

    sizes = [32, 32, 16, 16]
    counted = dino_step_flops("vit_tiny", 8, 3, 256, 4, sizes)
    student, teacher = build_student_teacher("vit_tiny", 8, 3, 256, True, 0.0)
    crops = [torch.rand(4, 3, size, size) for size in sizes]
    with FlopCounterMode(display=False) as counter:
        with torch.no_grad():
            teacher_output = teacher(crops[:2])
        DINOLoss(256, 4, 0.04, 0.04, 0, 1)(student(crops), teacher_output, 0).backward()
    assert counted == pytest.approx(counter.get_total_flops(), rel=0.02)
    assert dino_step_flops("vit_tiny", 8, 3, 256, 8, sizes) == pytest.approx(2 * counted)
