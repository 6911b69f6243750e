"""DINO pretraining: head and loss, EMA, multi-crop, official checkpoints, ``pretrain_dino`` from Python
and the CLI on real slices, the teacher as the registered ``medical/dino_vit``."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import pytest
import torch

from hybrids.apps.cli import main
from hybrids.apps.core.checkpoint import load_checkpoint
from hybrids.apps.core.errors import CheckpointError, InputError, WeightsError
from hybrids.apps.core.registry import create_model
from hybrids.apps.core.run_options import RunOptions
from hybrids.apps.core.weights import cache_dir, get_weights
from hybrids.apps.medical import weights as W
from hybrids.apps.medical.dino_crops import MultiCrop, gaussian_blur, local_crop_size, random_resized_crop
from hybrids.apps.medical.dino_data import find_images, fit_slice
from hybrids.apps.medical.dino_heads import DINOHead, MultiCropWrapper, WeightNormLinear
from hybrids.apps.medical.dino_loss import DINOLoss, cosine_schedule
from hybrids.apps.medical.dino_module import DINOModule
from hybrids.apps.medical.dino_vit import DINOViTConfig, load_teacher, save_teacher
from hybrids.apps.medical.pretrain_dino import DINOConfig, pretrain_dino
from hybrids.shared_blocks.vit import VisionTransformer, vit_small

TINY_VIT = {"img_size": 32, "patch_size": 8, "in_chans": 1, "embed_dim": 32, "depth": 2, "num_heads": 4}


@pytest.fixture(autouse=True)
def _one_thread(torch_threads):
    """Tiny models run hundreds of small ops: one intra-op thread avoids OpenMP waits on a busy CPU."""
    torch_threads(1)


def _module(**kw) -> DINOModule:
    kw.setdefault("out_dim", 64)
    kw.setdefault("head_hidden_dim", 64)
    kw.setdefault("bottleneck_dim", 16)
    kw.setdefault("local_crops", 2)
    return DINOModule(DINOViTConfig(**TINY_VIT), **kw)


# -- head ------------------------------------------------------------------------------------------------
def test_head_has_the_official_names_and_a_fixed_unit_norm_last_layer():
    head = DINOHead(32, 100, hidden_dim=64, bottleneck_dim=16)
    shapes = {k: tuple(v.shape) for k, v in head.state_dict().items()}
    assert shapes == {
        "mlp.0.weight": (64, 32),
        "mlp.0.bias": (64,),
        "mlp.2.weight": (64, 64),
        "mlp.2.bias": (64,),
        "mlp.4.weight": (16, 64),
        "mlp.4.bias": (16,),
        "last_layer.weight_g": (100, 1),  # torch.nn.utils.weight_norm's names, as in DINO's files
        "last_layer.weight_v": (100, 16),
    }
    assert not head.last_layer.weight_g.requires_grad and torch.all(head.last_layer.weight_g == 1)
    torch.testing.assert_close(head.last_layer.weight.norm(dim=1), torch.ones(100))
    x = torch.randn(5, 32)
    z = torch.nn.functional.normalize(head.mlp(x), dim=-1)
    torch.testing.assert_close(head(x), z @ head.last_layer.weight.T)
    with torch.no_grad():
        head.last_layer.weight_v.mul_(7.0)  # scale-free: only the direction of v matters
    torch.testing.assert_close(head(x), z @ head.last_layer.weight.T)


def test_head_with_batchnorm_has_the_official_names():
    head = DINOHead(32, 10, hidden_dim=16, bottleneck_dim=8, use_bn=True)
    names = {k.rsplit(".", 1)[0] for k in head.state_dict()}
    assert names == {"mlp.0", "mlp.1", "mlp.3", "mlp.4", "mlp.6", "last_layer"}
    assert isinstance(head.mlp[1], torch.nn.BatchNorm1d)


def test_weight_norm_matches_torch():
    layer = WeightNormLinear(6, 4)
    ref = torch.nn.utils.parametrizations.weight_norm(torch.nn.Linear(6, 4, bias=False))
    with torch.no_grad():
        ref.parametrizations.weight.original0.copy_(layer.weight_g)
        ref.parametrizations.weight.original1.copy_(layer.weight_v)
        layer.weight_g.mul_(2.0)
        ref.parametrizations.weight.original0.mul_(2.0)
    x = torch.randn(3, 6)
    torch.testing.assert_close(layer(x), ref(x))


def test_multicrop_wrapper_runs_each_resolution_once():
    model = MultiCropWrapper(VisionTransformer(**TINY_VIT), DINOHead(32, 10, hidden_dim=16, bottleneck_dim=8))
    calls = []
    model.backbone.register_forward_hook(lambda m, i, o: calls.append(tuple(i[0].shape)))
    crops = [torch.randn(3, 1, 32, 32)] * 2 + [torch.randn(3, 1, 16, 16)] * 4
    out = model(crops)
    assert out.shape == (18, 10)
    assert calls == [(6, 1, 32, 32), (12, 1, 16, 16)]


# -- loss ------------------------------------------------------------------------------------------------
def test_loss_value_centering_and_temperature_schedule():
    torch.manual_seed(0)
    loss = DINOLoss(5, ncrops=3, warmup_teacher_temp=0.04, teacher_temp=0.07, warmup_fraction=0.3)
    assert loss.teacher_temp(0.0) == pytest.approx(0.04)
    assert loss.teacher_temp(0.15) == pytest.approx(0.055)
    assert loss.teacher_temp(0.3) == loss.teacher_temp(0.9) == pytest.approx(0.07)
    with torch.no_grad():
        loss.center.fill_(0.5)
    b = 4
    student, teacher = torch.randn(3 * b, 5), torch.randn(2 * b, 5)
    value = loss(student, teacher, progress=1.0)
    # by hand: teacher global i vs every student crop v != i
    q = torch.softmax((teacher - 0.5) / 0.07, dim=-1).chunk(2)
    logp = torch.log_softmax(student / 0.1, dim=-1).chunk(3)
    pairs = [(-q[i] * logp[v]).sum(-1).mean() for i in range(2) for v in range(3) if v != i]
    assert len(pairs) == 4
    torch.testing.assert_close(value, torch.stack(pairs).mean())
    # centre: EMA (momentum 0.9) of the teacher's batch mean
    torch.testing.assert_close(loss.center, 0.9 * 0.5 + 0.1 * teacher.mean(0, keepdim=True))


def test_teacher_collapse_is_penalised_by_centering():
    """A teacher that outputs one constant dimension is flattened by the centre: after many updates its
    sharpened distribution approaches uniform rather than one-hot."""
    loss = DINOLoss(8, ncrops=2, warmup_fraction=0.0, center_momentum=0.5)
    teacher = torch.zeros(4, 8)
    teacher[:, 3] = 10.0
    for _ in range(30):
        loss(torch.zeros(4, 8), teacher)
    q = torch.softmax((teacher - loss.center) / 0.07, dim=-1)
    torch.testing.assert_close(q, torch.full_like(q, 1 / 8), atol=1e-3, rtol=0)


def test_cosine_schedule():
    assert cosine_schedule(0.996, 1.0, 0.0) == pytest.approx(0.996)
    assert cosine_schedule(0.996, 1.0, 0.5) == pytest.approx(0.998)
    assert cosine_schedule(0.996, 1.0, 1.0) == pytest.approx(1.0)
    assert cosine_schedule(0.04, 0.4, 2.0) == pytest.approx(0.4)


# -- multi-crop ------------------------------------------------------------------------------------------
def test_multicrop_shapes_and_determinism():
    assert local_crop_size(64, 16) == 32 and local_crop_size(64, 8) == 24 and local_crop_size(96, 16) == 48
    crops = MultiCrop(64, 24, local_crops=4)
    x = torch.randn(5, 1, 64, 64)
    a = crops(x, torch.Generator().manual_seed(3))
    b = crops(x, torch.Generator().manual_seed(3))
    assert [tuple(c.shape) for c in a] == [(5, 1, 64, 64)] * 2 + [(5, 1, 24, 24)] * 4
    assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))
    c = crops(x, torch.Generator().manual_seed(4))
    assert not torch.equal(a[0], c[0])
    assert all(torch.isfinite(t).all() for t in a)


def test_random_resized_crop_full_box_is_identity_and_flip_mirrors():
    x = torch.randn(2, 1, 16, 16)
    g = torch.Generator().manual_seed(0)
    same = random_resized_crop(x, 16, (1.0, 1.0), (1.0, 1.0), g, flip_p=0.0)
    torch.testing.assert_close(same, x, atol=1e-5, rtol=0)
    flipped = random_resized_crop(x, 16, (1.0, 1.0), (1.0, 1.0), g, flip_p=1.0)
    torch.testing.assert_close(flipped, x.flip(-1), atol=1e-5, rtol=0)


def test_gaussian_blur_keeps_constants_and_smooths():
    x = torch.full((2, 1, 9, 9), 3.0)
    torch.testing.assert_close(gaussian_blur(x, torch.tensor([0.5, 1.5])), x)
    spike = torch.zeros(1, 1, 9, 9)
    spike[..., 4, 4] = 1.0
    y = gaussian_blur(spike, torch.tensor([1.0]))
    assert y.sum().item() == pytest.approx(1.0, abs=1e-5) and y.max() < 0.2


def test_fit_slice_resize_and_pad():
    s = torch.arange(35 * 51, dtype=torch.float32).reshape(1, 1, 35, 51)
    assert fit_slice(s, 64).shape == (1, 1, 64, 64)
    padded = fit_slice(s, 64, "pad")
    assert padded.shape == (1, 1, 64, 64)
    assert torch.equal(padded[..., 14:49, 6:57], s) and padded[..., :14, :].abs().sum() == 0
    with pytest.raises(ValueError):
        fit_slice(s, 64, "crop")


# -- training dynamics ---------------------------------------------------------------------------------
def _blobs(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    """Images with a bright disc at a random place (a little structure for DINO to latch on to)."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    out = []
    for _ in range(n):
        cy, cx, r = torch.rand(3, generator=g) * torch.tensor([size, size, size / 4]) + torch.tensor(
            [0, 0, 3]
        )
        disc = ((yy - cy) ** 2 + (xx - cx) ** 2 < r**2).float()
        out.append(disc + 0.1 * torch.randn(size, size, generator=g))
    return torch.stack(out)[:, None]


def test_loss_falls_over_a_few_steps():
    """60 steps on random batches of disc images: the loss falls well below its start (log K ~ 4.16).
    With DINO's ViT head (no BatchNorm) this tiny setting collapses to a uniform teacher instead -- the
    official code does the same -- hence ``head_bn`` (DINO's ``--use_bn_in_head``), the CLI default."""
    torch.manual_seed(0)
    module = _module(
        lr=2e-3, head_bn=True, warmup_fraction=0.0, total_steps=60, freeze_last_layer_fraction=0.0
    )
    opt = module.configure_optimizers()
    data = _blobs(128)
    losses = []
    for step in range(60):
        g = torch.Generator().manual_seed(step)
        batch = data[torch.randint(0, len(data), (16,), generator=g)]
        crops = module.crops(batch, g)
        with torch.no_grad():
            t = module.teacher(crops[:2])
        loss = module.loss(module.student(crops), t, 0.0)
        opt.zero_grad()
        loss.backward()
        module.on_before_optimizer_step(opt)
        opt.step()
        module._progress = step / 60
        module.on_train_batch_end(None, batch, step)
        losses.append(float(loss.detach()))
    assert all(math.isfinite(v) for v in losses)
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < first - 0.5, losses


def test_ema_teacher_update_and_frozen_teacher():
    module = _module()
    assert all(not p.requires_grad for p in module.teacher.parameters())
    assert all(
        torch.equal(a, b)
        for a, b in zip(
            module.student.state_dict().values(), module.teacher.state_dict().values(), strict=True
        )
    )
    with torch.no_grad():
        for p in module.student.parameters():
            p.add_(1.0)
    before = [p.clone() for p in module.teacher.parameters()]
    module._progress = 0.0  # momentum 0.996
    module.on_train_batch_end(None, None, 0)
    for t0, t1, s in zip(before, module.teacher.parameters(), module.student.parameters(), strict=True):
        torch.testing.assert_close(t1, 0.996 * t0 + 0.004 * s)
    module._progress = 1.0  # momentum 1: the teacher stays
    module.on_train_batch_end(None, None, 1)
    for t1, t2 in zip(
        [p.clone() for p in module.teacher.parameters()], module.teacher.parameters(), strict=True
    ):
        torch.testing.assert_close(t1, t2)


def test_gradient_clipping_and_last_layer_freeze():
    module = _module(clip_grad=0.5, freeze_last_layer_fraction=0.5)
    for p in module.student.parameters():
        p.grad = torch.full_like(p, 10.0)
    module._progress = 0.1
    module.on_before_optimizer_step(None)
    assert module.student.head.last_layer.weight_v.grad is None  # frozen early on
    for name, p in module.student.named_parameters():
        if p.grad is not None:
            assert p.grad.norm() <= 0.5 + 1e-4, name
    optim = module.configure_optimizers()
    regularized = {id(p) for p in optim.param_groups[0]["params"]}
    assert id(module.student.backbone.blocks[0].attn.qkv.weight) in regularized
    assert id(module.student.backbone.blocks[0].attn.qkv.bias) not in regularized
    assert id(module.student.head.last_layer.weight_g) not in regularized  # fixed, not optimised
    assert module.lr_at(0.0) == 0.0 and module.lr_at(0.1) == pytest.approx(module.lr)


# -- official checkpoints -----------------------------------------------------------------------------
def _official_dino_full_checkpoint_keys(depth: int) -> set[str]:
    """``student``/``teacher`` key names of DINO's ``checkpoint.pth`` (MultiCropWrapper, no DDP prefix)."""
    keys = {"backbone.cls_token", "backbone.pos_embed", "backbone.patch_embed.proj.weight"}
    keys |= {"backbone.patch_embed.proj.bias", "backbone.norm.weight", "backbone.norm.bias"}
    for i in range(depth):
        for name in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2"):
            keys |= {f"backbone.blocks.{i}.{name}.weight", f"backbone.blocks.{i}.{name}.bias"}
    for i in (0, 2, 4):
        keys |= {f"head.mlp.{i}.weight", f"head.mlp.{i}.bias"}
    return keys | {"head.last_layer.weight_g", "head.last_layer.weight_v"}


def test_student_and_teacher_have_the_official_full_checkpoint_keys():
    module = _module()
    expected = _official_dino_full_checkpoint_keys(2)
    assert set(module.student.state_dict()) == expected
    assert set(module.teacher.state_dict()) == expected


def _official_vits_backbone(patch: int) -> dict[str, torch.Tensor]:
    """An official-format ViT-S/p backbone file's state dict, from random weights (224 input)."""
    torch.manual_seed(patch)
    return {k: torch.randn_like(v) for k, v in vit_small(patch_size=patch).state_dict().items()}


@pytest.mark.parametrize("patch", [16, 8])
def test_official_backbone_file_loads(tmp_path, patch, monkeypatch):
    monkeypatch.setenv("HYBRIDS_OFFLINE", "1")
    state = _official_vits_backbone(patch)
    name = f"dino_deitsmall{patch}_pretrain.pth"
    torch.save(state, tmp_path / name)
    # strict, same shape: every tensor lands unchanged; the maps have the documented shape
    model = vit_small(patch_size=patch)
    used = W.load_dino_backbone(model, search_dirs=[tmp_path])
    assert used == tmp_path / name
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    x = torch.randn(1, 3, 64, 48)
    with torch.no_grad():
        maps = model.attention_maps(x)
        assert maps.shape == (1, 6, 64, 48)
        assert model.attention_maps(x, upsample=False).shape == (1, 6, 64 // patch, 48 // patch)
    # MRI: one channel, 64x64 grid -> conv summed over RGB, position embedding resized
    mri = vit_small(patch_size=patch, in_chans=1, img_size=64)
    W.load_dino_backbone(mri, tmp_path / name)
    torch.testing.assert_close(
        mri.patch_embed.proj.weight, state["patch_embed.proj.weight"].sum(1, keepdim=True)
    )
    assert mri.pos_embed.shape == (1, 1 + (64 // patch) ** 2, 384)
    torch.testing.assert_close(mri.pos_embed, model.interpolate_pos_encoding(64 // patch, 64 // patch))


def test_full_checkpoint_teacher_and_bad_files(tmp_path):
    model = VisionTransformer(**TINY_VIT)
    module = _module()
    full = {
        "teacher": {f"module.{k}": v for k, v in module.teacher.state_dict().items()},
        "epoch": 3,
        "args": argparse.Namespace(arch="vit_small", lr=5e-4),  # DINO's main_dino.py stores its args
    }
    torch.save(full, tmp_path / "checkpoint.pth")
    W.load_dino_backbone(model, tmp_path / "checkpoint.pth")  # the namespace is read as an inert stub
    assert torch.equal(model.cls_token, module.teacher.backbone.cls_token)
    with pytest.raises(InputError, match="cannot tell the heads of a ViT of width 32"):
        create_model("medical/dino_vit", weights=tmp_path / "checkpoint.pth")  # no DINO family width
    partial = {k: v for k, v in module.teacher.backbone.state_dict().items() if "blocks.1." not in k}
    torch.save(partial, tmp_path / "partial.pth")
    with pytest.raises(CheckpointError, match="missing"):
        W.load_dino_backbone(model, tmp_path / "partial.pth")
    with pytest.raises(InputError, match="official DINO"):
        W.load_dino_backbone(model)  # a 32-wide ViT has no official weights


def test_official_files_build_the_registered_model_in_their_shape(tmp_path):
    vits8 = _official_vits_backbone(8)
    torch.save(vits8, tmp_path / "dino_deitsmall8_pretrain.pth")
    model = create_model("medical/dino_vit", weights=tmp_path / "dino_deitsmall8_pretrain.pth")
    assert model.config == DINOViTConfig.from_preset("vits8")
    assert model.preprocessing["image_size"] == 224  # the entry's preprocessing comes with the file
    assert all(torch.equal(model.state_dict()[k], v) for k, v in vits8.items())
    # the official file in the cache (an entry without a published hash: its content is checked) is
    # what weights="official" loads
    cache_dir().mkdir(parents=True, exist_ok=True)
    torch.save(_official_vits_backbone(16), cache_dir() / get_weights("medical/dino_vits16").filename)
    assert create_model("medical/dino_vit", weights="official").config == DINOViTConfig()
    # the entry fits its weights to the model asked for: one MRI channel, a 64 x 64 input
    small = create_model("medical/dino_vit", weights="official", in_chans=1, img_size=64)
    assert small.patch_embed.proj.weight.shape[1] == 1 and small.pos_embed.shape[1] == 1 + 4 * 4
    kernel = _official_vits_backbone(16)["patch_embed.proj.weight"]
    torch.testing.assert_close(small.patch_embed.proj.weight, kernel.sum(1, keepdim=True))


def test_dino_entries_are_registered_weights_without_a_published_hash(tmp_path, monkeypatch, capsys):
    for patch in (16, 8):
        entry = get_weights(f"medical/dino_vits{patch}")
        assert entry.filename == f"dino_deitsmall{patch}_pretrain.pth"
        assert entry.url == (
            f"https://dl.fbaipublicfiles.com/dino/dino_deitsmall{patch}_pretrain/{entry.filename}"
        )
        assert entry.license.startswith("Apache-2.0") and entry.sha256_prefix == ""
    with pytest.raises(WeightsError, match=r"dino_deitsmall16_pretrain\.pth.*HYBRIDS_OFFLINE"):
        W.load_dino_backbone(vit_small(patch_size=16, in_chans=1))
    with pytest.raises(WeightsError, match="dino_deitsmall8_pretrain.pth"):
        create_model("medical/dino_vit", preset="vits8", weights="medical/dino_vits8")


# -- the teacher as a registered model -----------------------------------------------------------------------
def test_saved_teacher_is_a_registered_model_and_old_folders_still_read(tmp_path):
    torch.manual_seed(3)
    config = DINOViTConfig.from_preset("tiny")
    backbone = VisionTransformer(**config.to_dict())
    extra = {"image_size": 32, "vit_input": "pad", "slice_axis": 2}
    save_teacher(
        backbone, tmp_path / "teacher", config, preprocessing={"normalization": "zscore"}, extra=extra
    )
    info = json.loads((tmp_path / "teacher" / "config.json").read_text())
    assert info["model"] == "medical/dino_vit" and info["config"] == config.to_dict()
    assert info["vit_input"] == "pad" and info["preprocessing"] == {"normalization": "zscore"}
    for model in (
        create_model("medical/dino_vit", weights=tmp_path / "teacher"),
        load_checkpoint(tmp_path / "teacher"),
    ):
        assert model.config == config
        assert model.state_dict().keys() == backbone.state_dict().keys()
        assert all(torch.equal(v, model.state_dict()[k]) for k, v in backbone.state_dict().items())
    # a teacher folder of an earlier version ("dino/vit", never registered): read by load_teacher only
    old = tmp_path / "old"
    old.mkdir()
    (tmp_path / "teacher" / "model.safetensors").rename(old / "model.safetensors")
    (old / "config.json").write_text(json.dumps({**info, "model": "dino/vit"}))
    vit, old_info = load_teacher(old)
    assert old_info["model"] == "dino/vit" and not vit.training
    assert all(torch.equal(v, vit.state_dict()[k]) for k, v in backbone.state_dict().items())
    with pytest.raises(CheckpointError, match="is a checkpoint of dino/vit, not of medical/dino_vit"):
        create_model("medical/dino_vit", weights=old)
    with pytest.raises(InputError, match="no such file"):
        load_teacher(tmp_path / "absent")


def test_dino_vit_config_presets_and_validation():
    assert DINOViTConfig().to_dict() == {
        "img_size": 224, "patch_size": 16, "in_chans": 3, "embed_dim": 384, "depth": 12, "num_heads": 6,
        "mlp_ratio": 4.0, "qkv_bias": True,
    }  # fmt: skip
    assert {"tiny", "vits8", "hippocampus"} <= set(DINOViTConfig.preset_names())
    with pytest.raises(InputError, match="multiple of patch_size"):
        DINOViTConfig(img_size=30, patch_size=8).validate()
    with pytest.raises(InputError, match="multiple of num_heads"):
        DINOViTConfig.from_preset("tiny", num_heads=5)


# -- pretrain_dino from Python (no argparse) on real slices --------------------------------------------------
def _tiny_config(data: Path, out: Path, **overrides) -> DINOConfig:
    values = dict(
        data=data, cases=3, val_cases=1, arch="vit_tiny", embed_dim=24, depth=2, heads=2, patch_size=8,
        image_size=32, out_dim=32, head_hidden_dim=32, local_crops=2, batch_size=4, steps_per_epoch=2,
        epochs=1, run=RunOptions(out=out, threads=1, accelerator="cpu"),
    )  # fmt: skip
    return DINOConfig(**{**values, **overrides})


@pytest.fixture(scope="module")
def python_run(shared_data, tmp_path_factory):
    before = torch.get_num_threads()
    out = tmp_path_factory.mktemp("dino") / "run"
    result = pretrain_dino(_tiny_config(shared_data / "hippocampus", out, vit_input="pad"))
    torch.set_num_threads(before)
    return result


def test_pretrain_dino_from_python(python_run):
    result = python_run
    assert result.is_global_zero and result.teacher.name == "teacher"
    assert result.figure is not None and result.figure.stat().st_size > 1000
    assert [h["step"] for h in result.history] == [2] and math.isfinite(result.history[0]["loss"])
    history = json.loads((result.teacher.parent / "history.json").read_text())
    assert history == result.history
    assert (result.teacher.parent / "resume.ckpt").is_file()
    info = json.loads((result.teacher / "config.json").read_text())
    assert info["model"] == "medical/dino_vit" and info["vit_input"] == "pad"
    assert info["training"]["step"] == 2 and info["training"]["seed"] == 42
    assert info["training"]["held_out_cases"] == ["hippocampus_004"]


def test_pretrained_teacher_loads_with_create_model(python_run):
    teacher = python_run.module.teacher.backbone.state_dict()
    model = create_model("medical/dino_vit", weights=python_run.teacher)
    assert model.config == DINOViTConfig(
        img_size=32, patch_size=8, in_chans=1, embed_dim=24, depth=2, num_heads=2
    )
    assert model.state_dict().keys() == teacher.keys()
    assert all(torch.equal(v.cpu(), model.state_dict()[k]) for k, v in teacher.items())
    assert model.attention_maps(torch.randn(1, 1, 32, 32)).shape == (1, 2, 32, 32)


def test_pretrained_teacher_loads_into_diamant(python_run):
    from hybrids.apps.medical.diamant import load_attention_encoder, read_attention_encoder

    vit_fields, state = read_attention_encoder(python_run.teacher)
    assert vit_fields["vit_img_size"] == 32 and vit_fields["vit_patch_size"] == 8
    assert vit_fields["vit_heads"] == 2 and vit_fields["vit_input"] == "pad"
    model = load_attention_encoder(create_model("medical/diamant", preset="tiny"), python_run.teacher)
    assert model.config.vit_embed_dim == 24 and model.config.vit_input == "pad"
    teacher = python_run.module.teacher.backbone.state_dict()
    assert all(torch.equal(v.cpu(), model.attention_encoder.state_dict()[k]) for k, v in teacher.items())


def test_config_errors_without_argparse(tmp_path):
    data = tmp_path / "empty"
    data.mkdir()
    with pytest.raises(InputError, match="--image-size 60 must be a multiple of --patch-size 16"):
        DINOConfig(data=data, image_size=60).check()
    with pytest.raises(InputError, match="--embed-dim 100 must be a multiple of the heads"):
        DINOConfig(data=data, embed_dim=100).check()
    with pytest.raises(InputError, match="--arch must be one of"):
        DINOConfig(data=data, arch="vit_huge").check()
    with pytest.raises(InputError, match="no NIfTI files"):
        pretrain_dino(DINOConfig(data=data, run=RunOptions(out=tmp_path / "o")))
    assert not (tmp_path / "o").exists()  # nothing written before the data are read


# -- the command on real slices -----------------------------------------------------------------------------
def _tiny_cli(data, out, *extra: str) -> list[str]:
    return [
        "-q", "medical", "pretrain-dino", "--data", str(data), "--cases", "3", "--val-cases", "1",
        "--arch", "vit_tiny", "--embed-dim", "24", "--depth", "2", "--heads", "2", "--patch-size", "8",
        "--image-size", "32", "--out-dim", "32", "--head-hidden-dim", "32", "--local-crops", "2",
        "--batch-size", "4", "--steps-per-epoch", "2", "--threads", "1", "-o", str(out), *extra,
    ]  # fmt: skip


def test_cli_pretrains_on_hippocampus_and_resumes(shared_data, tmp_path, capsys):
    out = tmp_path / "dino"
    momentum = ("--momentum-teacher", "0.9")
    assert main(_tiny_cli(shared_data / "hippocampus", out, "--epochs", "1", *momentum)) == 0
    assert (
        capsys.readouterr().out.strip()
        == f"teacher: {out / 'teacher'}; attention maps: {out / 'attention_maps.png'}"
    )
    info = json.loads((out / "teacher" / "config.json").read_text())
    assert info["model"] == "medical/dino_vit"
    assert info["training"]["momentum_teacher"] == [0.9, 1.0]
    assert info["training"]["command"].startswith("hybrids -q medical pretrain-dino")
    assert info["attention_figure_size"] == 64  # twice the training size: a 8x8 patch grid, not 4x4
    assert info["config"] == {
        "img_size": 32, "patch_size": 8, "in_chans": 1, "embed_dim": 24, "depth": 2, "num_heads": 2,
        "mlp_ratio": 4.0, "qkv_bias": True,
    }  # fmt: skip
    assert info["image_size"] == 32 and info["vit_input"] == "resize" and info["slice_axis"] == 2
    assert info["preprocessing"]["normalization"] == "zscore"
    assert info["training"]["held_out_cases"] == ["hippocampus_004"]
    assert (out / "attention_maps.png").stat().st_size > 1000
    teacher, _ = load_teacher(out / "teacher")
    assert teacher.attention_maps(torch.randn(1, 1, 32, 32)).shape == (1, 2, 32, 32)
    history = json.loads((out / "history.json").read_text())
    assert [h["step"] for h in history] == [2]
    # resume: continues at step 2, keeps the history
    assert main(_tiny_cli(shared_data / "hippocampus", out, "--epochs", "2", "--resume")) == 0
    history = json.loads((out / "history.json").read_text())
    assert [h["step"] for h in history] == [2, 4]
    assert (out / "resumed_1").is_dir()
    resumed, _ = load_teacher(out / "teacher")
    assert not torch.equal(resumed.cls_token, teacher.cls_token)


def test_cli_fold_keeps_the_validation_cases_unseen(shared_data, tmp_path):
    from hybrids.datasets.msd import kfold_split

    out = tmp_path / "dino"
    extra = ("--cases", "10", "--fold", "1", "--val-cases", "1", "--epochs", "1")
    assert main(_tiny_cli(shared_data / "hippocampus", out, *extra)) == 0
    training = json.loads((out / "teacher" / "config.json").read_text())["training"]
    names, _ = find_images(shared_data / "hippocampus")
    train, valid = kfold_split([n for n, _ in names[:10]], 1, 5)
    assert training["cases"] == len(train) == 8
    assert training["held_out_cases"] == valid[-1:]
    assert training["fold"]["fold"] == 1 and training["fold"]["folds"] == 5


def test_cli_bad_arguments(tmp_path, capsys):
    data = tmp_path / "empty"
    data.mkdir()
    assert main(["medical", "pretrain-dino", "--data", str(data), "-o", str(tmp_path / "o")]) == 2
    assert "no NIfTI files" in capsys.readouterr().err
    assert main(["medical", "pretrain-dino", "--data", str(data), "--image-size", "60"]) == 2
    assert "multiple of --patch-size" in capsys.readouterr().err
    assert main(["medical", "pretrain-dino", "--data", str(data), "--momentum-teacher", "1.5"]) == 2
    assert "--momentum-teacher must be in [0, 1]" in capsys.readouterr().err
    assert main(["medical", "pretrain-dino", "--data", str(data), "--figure-size", "100"]) == 2
    assert "--figure-size 100 must be a positive multiple of --patch-size" in capsys.readouterr().err
    assert main(["medical", "pretrain-dino", "--data", str(data), "--fold", "5"]) == 2
    assert "--fold must be in 0..4" in capsys.readouterr().err
    assert main(["medical", "pretrain-dino", "--data", str(data), "-o", str(tmp_path / "o"), "--resume"]) == 2
    assert "nothing to resume" in capsys.readouterr().err
