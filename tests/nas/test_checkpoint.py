"""Checkpoints refuse damaged tensor data, which torch.load itself reads without complaint."""
import pytest
import torch

from nas.train.checkpoint import load_checkpoint, save_checkpoint


def state() -> dict:
    weight = torch.arange(4096, dtype=torch.float32).reshape(64, 64)
    return {"model": {"w": weight, "b": torch.zeros(64)}, "space": "tiny-32",
            "optimizer": {"state": {0: {"exp_avg": torch.ones(64, 64), "step": torch.tensor(3.0)}}}, "step": 7}


def flip_tensor_bytes(path, tensor: torch.Tensor) -> None:
    data = bytearray(path.read_bytes())
    at = bytes(data).index(tensor.numpy().tobytes()[:64]) + 100  # inside the tensor's stored bytes
    data[at:at + 8] = bytes(b ^ 0xFF for b in data[at:at + 8])
    path.write_bytes(bytes(data))


def test_a_saved_checkpoint_loads_whole(tmp_path):
    save_checkpoint(state(), tmp_path / "checkpoint.pt")
    loaded = load_checkpoint(tmp_path / "checkpoint.pt")
    assert set(loaded) == set(state())
    assert torch.equal(loaded["model"]["w"], state()["model"]["w"]) and loaded["step"] == 7


def test_flipped_bytes_in_tensor_data_are_refused_in_one_line(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(state(), path)
    flip_tensor_bytes(path, state()["model"]["w"])
    assert torch.load(path, weights_only=False)["step"] == 7  # torch itself does not notice
    with pytest.raises(ValueError, match="corrupt: its tensors do not match the sha256") as error:
        load_checkpoint(path)
    assert "\n" not in str(error.value) and str(path) in str(error.value)


def test_a_checkpoint_without_a_digest_still_loads(tmp_path):
    torch.save(state(), tmp_path / "old.pt")  # as written before checkpoints carried their sha256
    assert load_checkpoint(tmp_path / "old.pt")["step"] == 7
