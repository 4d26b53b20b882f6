"""Checkpoints: what --resume reads back, and what it refuses."""
import pytest
import torch

from proxytasks.checkpoint import read_checkpoint, restore, save_checkpoint, state_digest
from proxytasks.embedder import create_embedder
from proxytasks.errors import ProxytasksError


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    make = lambda dim: create_embedder("test_efficientnet", weights="none", dim=dim, input_size=32)  # noqa: E731
    return make(8), make(8), make(4)


def trained(embedder):
    opt = torch.optim.AdamW(embedder.head.parameters(), lr=1e-2)
    embedder.head(torch.randn(4, embedder.in_dim)).pow(2).sum().backward()
    opt.step()
    return opt


def test_roundtrip_restores_head_optimizer_place_and_budget(models, tmp_path):
    a, b, _ = models
    opt = trained(a)
    best = {"score": 0.75, "state": {k: v.clone() for k, v in a.head.state_dict().items()}, "step": 3}
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, a, opt, 5, [{"step": 5, "loss": 1.0}], best, spent=12.5)
    state = read_checkpoint(path, b)
    opt_b = torch.optim.AdamW(b.head.parameters(), lr=1e-2)
    place = restore(state, b, opt_b, path)
    assert place["step"] == 5 and place["spent"] == 12.5 and place["log"] == [{"step": 5, "loss": 1.0}]
    assert place["best"]["score"] == 0.75 and place["best"]["step"] == 3
    assert all(torch.equal(a.head.state_dict()[k], b.head.state_dict()[k]) for k in a.head.state_dict())
    assert opt_b.state_dict()["state"][0]["step"] == opt.state_dict()["state"][0]["step"]


def test_refuses_altered_truncated_foreign_and_headerless_checkpoints(models, tmp_path):
    a, b, narrow = models
    opt = trained(a)
    best = {"score": None, "state": a.head.state_dict(), "step": 0}
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, a, opt, 2, [], best)
    state = torch.load(path, weights_only=True)
    assert state["best_score"] == -1.0 and state["header"]["sha256"] == state_digest(
        {k: v for k, v in state.items() if k != "header"})
    with pytest.raises(ProxytasksError, match="cannot resume: the checkpoint is of .* head 256 -> 8"):
        read_checkpoint(path, narrow)
    state["step"] = 3  # altered after writing
    torch.save(state, path)
    with pytest.raises(ProxytasksError, match="sha256"):
        read_checkpoint(path, b)
    del state["header"]
    torch.save(state, path)
    with pytest.raises(ProxytasksError, match="no header"):
        read_checkpoint(path, b)
    save_checkpoint(path, a, opt, 2, [], best)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ProxytasksError, match=f"{path.name}: cannot resume"):
        read_checkpoint(path, b)


def test_restore_refuses_a_state_that_does_not_fit(models, tmp_path):
    a, _, narrow = models
    opt = trained(a)
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, a, opt, 1, [], {"score": None, "state": a.head.state_dict(), "step": 0})
    state = torch.load(path, weights_only=True)
    with pytest.raises(ProxytasksError, match="cannot resume from this checkpoint"):
        restore(state, narrow, torch.optim.AdamW(narrow.head.parameters()), path)
