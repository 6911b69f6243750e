"""DIAMANT: shapes, the frozen ViT (eval, no grads, in the state dict), the attention maps and their
cache, loading DINO teachers / official checkpoints, the ablation, and `hybrids medical train -m diamant`."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from hybrids.apps.core.errors import CheckpointError, InputError
from hybrids.apps.core.registry import create_model
from hybrids.apps.medical.diamant import DIAMANT, DIAMANTConfig, load_attention_encoder
from hybrids.apps.medical.dino_vit import DINOViTConfig, save_teacher
from hybrids.shared_blocks.vit import VisionTransformer


@pytest.fixture(autouse=True)
def _one_thread(torch_threads):
    """Tiny models run hundreds of small ops: one intra-op thread avoids OpenMP waits on a busy CPU."""
    torch_threads(1)


def _tiny(**overrides) -> DIAMANT:
    torch.manual_seed(0)
    return create_model("medical/diamant", preset="tiny", **overrides)


def _teacher(path, **vit) -> VisionTransformer:
    """A DINO-teacher folder as ``pretrain-dino`` writes it: a ``medical/dino_vit`` checkpoint folder."""
    torch.manual_seed(1)
    config = DINOViTConfig(img_size=48, patch_size=8, in_chans=1, embed_dim=32, depth=2, num_heads=4, **vit)
    model = VisionTransformer(**config.to_dict())
    save_teacher(model, path, config, extra={"image_size": config.img_size})
    return model


def test_shapes_and_gradients_reach_every_trainable_parameter():
    model = _tiny(num_classes=3).train()
    x = torch.randn(2, 1, 16, 24)
    logits = model(x)
    assert logits.shape == (2, 3, 16, 24)
    assert model.size_divisor == 2 and model.spatial_dims == 2
    logits.square().mean().backward()
    for name, p in model.named_parameters():
        if name.startswith("attention_encoder."):
            assert not p.requires_grad and p.grad is None, name
        else:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert not model.attention_encoder.training  # frozen ViT stays in eval mode under model.train()
    assert any(k.startswith("attention_encoder.") for k in model.state_dict())  # self-contained folder
    with pytest.raises(ValueError, match="multiple of 2"):
        model(torch.randn(1, 1, 15, 24))


def test_attention_maps_are_dinos_on_the_resized_slice():
    model = _tiny(attention_cache=0).eval()
    x = torch.randn(3, 1, 16, 24)
    vit_in = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
    expected = model.attention_encoder.attention_maps(vit_in, upsample=True)  # (b, heads, 32, 32)
    expected = F.interpolate(expected, size=(16, 24), mode="bilinear", align_corners=False)
    maps = model.attention_maps(x)
    assert maps.shape == (3, 2, 16, 24)
    torch.testing.assert_close(maps, expected)
    # padding instead of resizing: the maps are the centre crop of the padded slice's maps
    model.config = model.config.replace(vit_input="pad")
    maps = model.attention_maps(x)
    full = model.attention_encoder.attention_maps(F.pad(x, (4, 4, 8, 8)))
    torch.testing.assert_close(maps, full[:, :, 8:24, 4:28])


def test_maps_at_a_larger_vit_input_use_a_finer_patch_grid():
    model = _tiny(attention_cache=0, vit_map_size=64).eval()  # the ViT was built for 32x32
    assert model.config.map_size == 64 and model.attention_encoder.pos_embed.shape[1] == 1 + 4 * 4
    x = torch.randn(2, 1, 16, 24)
    assert model._patch_maps(x).shape == (2, 2, 8, 8)
    vit_in = F.interpolate(x, size=(64, 64), mode="bilinear", align_corners=False)
    expected = model.attention_encoder.attention_maps(vit_in, upsample=True)
    expected = F.interpolate(expected, size=(16, 24), mode="bilinear", align_corners=False)
    torch.testing.assert_close(model.attention_maps(x), expected)
    assert model(x).shape == (2, 2, 16, 24)
    model.config = model.config.replace(vit_map_size=0)  # the same ViT at its training size
    assert model._patch_maps(x).shape == (2, 2, 4, 4)
    assert not torch.allclose(model.attention_maps(x), expected, atol=1e-3)


def test_cache_returns_the_same_maps_and_stays_bounded():
    model = _tiny(attention_cache=4).eval()
    x = torch.randn(3, 1, 16, 24)
    first = model.attention_maps(x)
    assert (model.cache_hits, model.cache_misses) == (0, 3)
    assert next(iter(model._cache.values())).shape == (2, 4, 4)  # patch-level maps: heads x 32/8 x 32/8
    again = model.attention_maps(x[[2, 0]])
    assert (model.cache_hits, model.cache_misses) == (2, 3)
    torch.testing.assert_close(again, first[[2, 0]])
    model.attention_maps(torch.randn(3, 1, 16, 24))
    assert len(model._cache) == 4
    torch.testing.assert_close(model.attention_maps(x[:1]), first[:1])  # evicted: recomputed, same maps


def test_ablation_has_no_attention_branch_and_the_same_image_path():
    full, ablation = _tiny(), _tiny(attention_branch=False)
    assert ablation.attention_encoder is None and ablation.fusion is None
    assert not any(k.startswith("attention") for k in ablation.state_dict())
    shared = {k for k in ablation.state_dict()}
    assert shared <= set(full.state_dict())
    assert ablation(torch.randn(1, 1, 16, 24)).shape == (1, 2, 16, 24)
    with pytest.raises(InputError, match="no attention branch"):
        ablation.attention_maps(torch.randn(1, 1, 16, 24))


@pytest.mark.parametrize("fusion", ["concat", "add"])
def test_fusion_kinds(fusion):
    assert _tiny(fusion=fusion)(torch.randn(1, 1, 16, 16)).shape == (1, 2, 16, 16)


def test_bad_configs_raise():
    with pytest.raises(InputError, match="fusion"):
        DIAMANT(DIAMANTConfig.from_preset("tiny", fusion="sum"))
    with pytest.raises(InputError, match="one width per encoder level"):
        DIAMANT(DIAMANTConfig.from_preset("tiny", attention_channels=(4,)))
    with pytest.raises(InputError, match="multiple of vit_patch_size"):
        DIAMANT(DIAMANTConfig.from_preset("tiny", vit_img_size=30))
    with pytest.raises(InputError, match="vit_map_size must be 0 or a multiple of vit_patch_size"):
        DIAMANT(DIAMANTConfig.from_preset("tiny", vit_map_size=60))


def test_load_teacher_folder_takes_its_shape_and_round_trips(tmp_path):
    from hybrids.apps.core.checkpoint import load_checkpoint, save_checkpoint

    teacher = _teacher(tmp_path / "teacher")
    model = _tiny(num_classes=3)
    load_attention_encoder(model, tmp_path / "teacher")
    assert (model.config.vit_heads, model.config.vit_img_size, model.config.vit_embed_dim) == (4, 48, 32)
    for key, value in teacher.state_dict().items():
        torch.testing.assert_close(model.attention_encoder.state_dict()[key], value)
    assert not any(p.requires_grad for p in model.attention_encoder.parameters())
    assert model.attention_branch.levels[0][0].conv.in_channels == 4  # one channel per head
    x = torch.randn(2, 1, 16, 24)
    model.eval()
    expected = model(x)
    save_checkpoint(model, tmp_path / "folder")
    restored = load_checkpoint(tmp_path / "folder").eval()
    torch.testing.assert_close(restored(x), expected)


def test_load_official_dino_pth_with_prefixes(tmp_path):
    vit = VisionTransformer(img_size=224, patch_size=16, in_chans=3, embed_dim=192, depth=1, num_heads=3)
    state = {f"backbone.{k}": v for k, v in vit.state_dict().items()}
    state["head.mlp.0.weight"] = torch.zeros(2, 2)
    torch.save({"teacher": state, "epoch": 3}, tmp_path / "checkpoint.pth")
    model = load_attention_encoder(_tiny(), tmp_path / "checkpoint.pth")
    cfg = model.config
    assert (cfg.vit_img_size, cfg.vit_patch_size, cfg.vit_in_chans, cfg.vit_heads, cfg.vit_depth) == (
        224,
        16,
        3,
        3,
        1,
    )
    torch.testing.assert_close(model.attention_encoder.cls_token, vit.cls_token)
    assert model(torch.randn(1, 1, 16, 16)).shape == (1, 2, 16, 16)


def test_load_errors_are_one_line(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        load_attention_encoder(_tiny(), tmp_path / "absent")
    (tmp_path / "bad.pth").write_bytes(b"not a pickle")
    with pytest.raises(CheckpointError, match="bad.pth: unknown checkpoint format"):
        load_attention_encoder(_tiny(), tmp_path / "bad.pth")
    _teacher(tmp_path / "teacher")
    with pytest.raises(InputError, match="no attention branch"):
        load_attention_encoder(_tiny(attention_branch=False), tmp_path / "teacher")


def test_train_cli_with_a_teacher(shared_data, tmp_path, capsys):
    from hybrids.apps.cli import main
    from hybrids.apps.core.checkpoint import read_checkpoint_info

    _teacher(tmp_path / "teacher")
    out = tmp_path / "run"
    argv = [
        "-q",
        "medical",
        "train",
        "--data",
        str(shared_data / "hippocampus"),
        "-m",
        "diamant",
        "--preset",
        "tiny",
        "--init-attention-encoder",
        str(tmp_path / "teacher"),
        "--train-cases",
        "2",
        "--val-cases",
        "1",
        "--batch-size",
        "4",
        "--steps-per-epoch",
        "2",
        "--epochs",
        "1",
        "--threads",
        "1",
        "-o",
        str(out),
    ]
    assert main(argv) == 0
    info = read_checkpoint_info(out / "best")
    assert info["model"] == "medical/diamant" and info["config"]["vit_heads"] == 4
    assert info["config"]["num_classes"] == 3
    swtr = [*argv[:6], "swtr_unet", *argv[7:]]
    assert main(swtr) == 2
    assert "swtr_unet has no attention encoder" in capsys.readouterr().err


@pytest.mark.parametrize("legacy", [False, True], ids=["medical/dino_vit", "old dino/vit folder"])
def test_pretrain_dino_teacher_folder_with_pad_input(tmp_path, legacy):
    vit = DINOViTConfig(img_size=64, patch_size=16, in_chans=1, embed_dim=48, depth=1, num_heads=6)
    torch.manual_seed(2)
    backbone = VisionTransformer(**vit.to_dict())
    save_teacher(
        backbone, tmp_path / "teacher", vit, extra={"image_size": 64, "vit_input": "pad", "slice_axis": 2}
    )
    if legacy:  # written before the teacher was a registered model: the same files, model "dino/vit"
        info = json.loads((tmp_path / "teacher" / "config.json").read_text())
        (tmp_path / "teacher" / "config.json").write_text(json.dumps({**info, "model": "dino/vit"}))
    model = load_attention_encoder(_tiny(num_classes=3), tmp_path / "teacher").eval()
    cfg = model.config
    assert (cfg.vit_img_size, cfg.vit_patch_size, cfg.vit_heads, cfg.vit_input) == (64, 16, 6, "pad")
    x = torch.randn(2, 1, 48, 64)
    maps = model.attention_maps(x)  # the slice padded to 64x64 (8 rows on top and bottom), cropped back
    expected = backbone.eval().attention_maps(F.pad(x, (0, 0, 8, 8)))[:, :, 8:56]
    torch.testing.assert_close(maps, expected)


def test_teacher_config_that_does_not_fit_its_weights_is_one_line(tmp_path):
    _teacher(tmp_path / "teacher")
    info = json.loads((tmp_path / "teacher" / "config.json").read_text())
    info["config"]["embed_dim"] = 64
    (tmp_path / "teacher" / "config.json").write_text(json.dumps(info))
    with pytest.raises(CheckpointError, match="weights do not fit medical/dino_vit"):
        load_attention_encoder(_tiny(), tmp_path / "teacher")
