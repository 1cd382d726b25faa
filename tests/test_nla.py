"""The Neural Layered Atlas networks: architecture, coordinate conventions, checkpoints, chunked evaluation.

The expected values are the closed forms of SPEC section 5 and of ``synthetic_nla`` (with ``noise=0`` its
maps are exact), not a second call of the code under test.
"""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from text2live.errors import InputError
from text2live.nla import IMLP, NeuralAtlases, load_nla, rasterize_atlas, synthetic_nla, video_maps

T, H, W = 5, 36, 64  # the synthetic video of conftest: 5 frames of 64 x 36 px


def linear(n_in: int, n_out: int) -> int:
    """Parameters of an ``nn.Linear`` with bias."""
    return n_in * n_out + n_out


def count(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def exact() -> NeuralAtlases:
    """The synthetic NLA without weight noise: its maps are the closed forms of ``synthetic_nla``'s docstring."""
    return synthetic_nla(T, H, W, noise=0.0)


@pytest.fixture(scope="module")
def noisy() -> NeuralAtlases:
    """The synthetic NLA with its default weight noise (every weight nonzero, as in a trained checkpoint)."""
    return synthetic_nla(T, H, W, seed=3)


def pixels(n: int, seed: int = 0) -> torch.Tensor:
    """[n, 3] random pixel coordinates (x, y, t) inside the synthetic video, t integral."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, generator=g) * (W - 1)
    y = torch.rand(n, generator=g) * (H - 1)
    t = torch.randint(0, T, (n,), generator=g).float()
    return torch.stack([x, y, t], dim=1)


# architecture ---------------------------------------------------------------------------------------------


def test_parameter_counts_follow_the_nla_architecture():
    nla = NeuralAtlases(T, H, W)
    hidden = linear(256, 256)
    fg_mapping = linear(3, 256) + 4 * hidden + linear(256, 2)  # 6 layers, no positional encoding
    bg_mapping = linear(3, 256) + 2 * hidden + linear(256, 2)  # 4 layers
    atlas_enc = 2 * 2 * 10  # sin and cos of (u, v) at 10 frequencies
    # 8 layers; layers 4 and 7 (the output) take hidden features + the encoding
    atlas = linear(atlas_enc, 256) + 3 * hidden + linear(256 + atlas_enc, 256) + 2 * hidden + linear(256 + atlas_enc, 3)
    alpha_enc = 2 * 3 * 5  # sin and cos of (x, y, t) at 5 frequencies
    alpha = linear(alpha_enc, 256) + 6 * hidden + linear(256, 1)  # 8 layers, no skips
    assert fg_mapping == 264706
    assert count(nla.foreground_mapping) == fg_mapping
    assert count(nla.background_mapping) == bg_mapping == 133122
    assert count(nla.atlas) == atlas
    assert count(nla.alpha) == alpha
    assert [layer.in_features for layer in nla.atlas.hidden] == [40, 256, 256, 256, 296, 256, 256, 296]
    assert [layer.out_features for layer in nla.alpha.hidden] == [256] * 7 + [1]


def test_nla_networks_are_frozen():
    nla = NeuralAtlases(T, H, W)
    assert not any(p.requires_grad for p in nla.parameters())
    assert not nla.training


def test_positional_encoding_order():
    """For each frequency 2^k pi: sin of every coordinate, then cos of every coordinate."""
    net = IMLP(3, 1, hidden_dim=4, num_layers=2, positional_dim=4)
    x = torch.tensor([[0.1, -0.7, 0.35], [0.9, 0.0, -0.2]])
    expected = []
    for row in x.tolist():
        values = []
        for k in range(4):
            b = 2.0**k * math.pi
            values += [math.sin(d * b) for d in row] + [math.cos(d * b) for d in row]
        expected.append(values)
    torch.testing.assert_close(net.encode(x), torch.tensor(expected), rtol=0, atol=1e-6)
    assert net.encode(x).shape == (2, 2 * 3 * 4)
    plain = IMLP(3, 1, hidden_dim=4, num_layers=2)
    assert torch.equal(plain.encode(x), x)  # no positional encoding: the coordinates themselves


def test_forward_matches_a_hand_written_forward_with_skips():
    """relu between layers, the encoding concatenated after the hidden features at skip layers, tanh at the end."""
    torch.manual_seed(0)
    net = IMLP(2, 3, hidden_dim=5, num_layers=5, positional_dim=2, skip_layers=(2, 4))
    x = torch.rand(7, 2) * 2 - 1
    w = [(layer.weight.detach(), layer.bias.detach()) for layer in net.hidden]

    freqs = [math.pi, 2 * math.pi]
    enc = torch.cat([torch.cat([torch.sin(x * b), torch.cos(x * b)], dim=1) for b in freqs], dim=1)
    h = enc @ w[0][0].T + w[0][1]
    h = torch.relu(h) @ w[1][0].T + w[1][1]
    h = torch.cat([torch.relu(h), enc], dim=1) @ w[2][0].T + w[2][1]
    h = torch.relu(h) @ w[3][0].T + w[3][1]
    h = torch.cat([torch.relu(h), enc], dim=1) @ w[4][0].T + w[4][1]
    expected = torch.tanh(h)

    assert [layer.in_features for layer in net.hidden] == [8, 5, 5 + 8, 5, 5 + 8]
    with torch.no_grad():
        torch.testing.assert_close(net(x), expected, rtol=1e-6, atol=1e-6)


# coordinates and maps -------------------------------------------------------------------------------------


def test_normalize_pixel_coordinates():
    nla = NeuralAtlases(num_frames=10, height=40, width=100)
    xyt = torch.tensor([[0.0, 0.0, 0.0], [50.0, 20.0, 5.0], [99.0, 39.0, 9.0]])
    expected = torch.tensor([[-1.0, -1.0, -1.0], [0.0, 20 / 50 - 1, 0.0], [99 / 50 - 1, 39 / 50 - 1, 9 / 5 - 1]])
    torch.testing.assert_close(nla.normalize(xyt), expected)
    portrait = NeuralAtlases(num_frames=4, height=100, width=40)  # max(W, H) / 2 for both axes
    torch.testing.assert_close(portrait.normalize(torch.tensor([[20.0, 50.0, 2.0]])), torch.tensor([[-0.6, 0.0, 0.0]]))


def test_frame_maps_closed_forms(exact):
    xyt = pixels(500)
    x = xyt[:, 0] / (W / 2) - 1
    y = xyt[:, 1] / (W / 2) - 1  # max(W, H) = W
    t = xyt[:, 2] / (T / 2) - 1
    with torch.no_grad():
        maps = exact.frame_maps(xyt)
    fg = 0.5 * torch.tanh(torch.stack([0.8 * x - 0.2 * t, 0.8 * y], dim=1)) + 0.5
    bg = 0.5 * torch.tanh(torch.stack([0.6 * x + 0.3 * t, 0.6 * y], dim=1)) - 0.5
    a = 0.99 * 0.5 * (torch.tanh(6 * (torch.cos(math.pi * x) - torch.sin(math.pi * y)) - 7.2) + 1) + 0.001
    torch.testing.assert_close(maps["foreground"], fg, rtol=0, atol=2e-5)
    torch.testing.assert_close(maps["background"], bg, rtol=0, atol=2e-5)
    torch.testing.assert_close(maps["alpha"], a[:, None], rtol=0, atol=2e-5)
    assert maps["alpha"].min() >= 0.001 - 1e-6 and maps["alpha"].max() <= 0.991 + 1e-6
    assert (maps["foreground"] >= 0).all() and (maps["foreground"] <= 1).all()
    assert (maps["background"] >= -1).all() and (maps["background"] <= 0).all()
    assert maps["alpha"].max() > 0.95 and maps["alpha"].min() < 0.01  # an opaque object on a clear background


def test_atlas_rgb_closed_form(exact):
    g = torch.Generator().manual_seed(1)
    uv = torch.rand(400, 2, generator=g) * 2 - 1
    u, v = uv[:, 0], uv[:, 1]
    two_pi = 2 * math.pi
    pre = torch.stack([torch.sin(two_pi * u), torch.cos(two_pi * v), torch.sin(two_pi * v) + torch.cos(two_pi * u)], 1)
    with torch.no_grad():
        torch.testing.assert_close(exact.atlas_rgb(uv), 0.5 * (torch.tanh(1.5 * pre) + 1), rtol=0, atol=2e-5)


def test_synthetic_noise_is_seeded(noisy):
    again = synthetic_nla(T, H, W, seed=3)
    other = synthetic_nla(T, H, W, seed=4)
    assert all(torch.equal(a, b) for a, b in zip(noisy.parameters(), again.parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(noisy.parameters(), other.parameters()))


# checkpoints ----------------------------------------------------------------------------------------------


def save(checkpoint, folder: Path, name: str = "checkpoint") -> Path:
    path = folder / name
    torch.save(checkpoint, path)
    return path


def test_checkpoint_round_trip(noisy, tmp_path, monkeypatch):
    checkpoint = noisy.checkpoint()
    assert set(checkpoint) == {
        "model_F_mapping1_state_dict",
        "model_F_mapping2_state_dict",
        "F_atlas_state_dict",
        "model_F_alpha_state_dict",
    }
    assert count(IMLP(3, 2, num_layers=6)) == sum(v.numel() for v in checkpoint["model_F_mapping1_state_dict"].values())
    path = save(checkpoint, tmp_path)

    calls = []
    original = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    loaded = load_nla(path, T, H, W)
    assert [str(c.get("map_location")) for c in calls] == ["cpu"]
    assert all(p.device.type == "cpu" for p in loaded.parameters())
    assert (loaded.num_frames, loaded.height, loaded.width) == (T, H, W)
    assert not any(p.requires_grad for p in loaded.parameters())

    xyt = pixels(300, seed=2)
    uv = torch.rand(300, 2) * 2 - 1
    with torch.no_grad():
        for key, value in noisy.frame_maps(xyt).items():
            assert torch.equal(loaded.frame_maps(xyt)[key], value), key
        assert torch.equal(loaded.atlas_rgb(uv), noisy.atlas_rgb(uv))


@pytest.mark.parametrize(
    ("key", "network"),
    [
        ("model_F_mapping1_state_dict", "foreground mapping"),
        ("model_F_mapping2_state_dict", "background mapping"),
        ("F_atlas_state_dict", "atlas"),
        ("model_F_alpha_state_dict", "alpha"),
    ],
)
def test_missing_key_names_the_key_and_the_network(noisy, tmp_path, key, network):
    checkpoint = noisy.checkpoint()
    del checkpoint[key]
    path = save(checkpoint, tmp_path)
    with pytest.raises(InputError) as exc:
        load_nla(path, T, H, W)
    message = str(exc.value)
    assert f"{key} ({network})" in message
    assert message.startswith(f"{path} is not a Neural Layered Atlas checkpoint")
    assert "\n" not in message


def test_networks_of_other_sizes_load_with_their_sizes(noisy, tmp_path):
    """NLA's config.json can set other sizes (t2l-atlas's nla.* too): they are read from the state dicts."""
    checkpoint = noisy.checkpoint()
    atlas = IMLP(2, 3, hidden_dim=32, num_layers=5, positional_dim=4, skip_layers=(3,))
    alpha = IMLP(3, 1, hidden_dim=16, num_layers=3)
    checkpoint["F_atlas_state_dict"], checkpoint["model_F_alpha_state_dict"] = atlas.state_dict(), alpha.state_dict()
    nla = load_nla(save(checkpoint, tmp_path), T, H, W)
    assert nla.atlas.skip_layers == (3,) and len(nla.atlas.frequencies) == 4 and len(nla.alpha.hidden) == 3
    uv, xyt = torch.rand(5, 2) * 2 - 1, torch.rand(5, 3)
    torch.testing.assert_close(nla.atlas(uv), atlas(uv), rtol=0, atol=0)
    torch.testing.assert_close(nla.alpha(xyt), alpha(xyt), rtol=0, atol=0)
    torch.testing.assert_close(nla.foreground_mapping(xyt), noisy.foreground_mapping(xyt), rtol=0, atol=0)


def test_missing_tensor_is_an_input_error(noisy, tmp_path):
    checkpoint = noisy.checkpoint()
    del checkpoint["model_F_alpha_state_dict"]["hidden.7.bias"]
    path = save(checkpoint, tmp_path)
    with pytest.raises(InputError) as exc:
        load_nla(path, T, H, W)
    message = str(exc.value)
    assert message.startswith(f"{path}: model_F_alpha_state_dict is not the state dict of an NLA alpha network")
    assert "hidden.7.bias" in message and "\n" not in message


def test_network_entry_that_is_not_a_state_dict_is_an_input_error(noisy, tmp_path):
    checkpoint = noisy.checkpoint()
    checkpoint["F_atlas_state_dict"] = [1, 2, 3]
    path = save(checkpoint, tmp_path)
    with pytest.raises(InputError, match="F_atlas_state_dict"):
        load_nla(path, T, H, W)


def test_a_folder_given_as_checkpoint_names_the_file_to_pass(tmp_path):
    folder = tmp_path / "pretrained_nla_models" / "blackswan"
    folder.mkdir(parents=True)
    with pytest.raises(InputError, match="is a folder: pass the checkpoint file inside it"):
        load_nla(folder, T, H, W)


def test_missing_file_is_an_input_error(tmp_path):
    missing = tmp_path / "pretrained_nla_models" / "blackswan" / "checkpoint"
    with pytest.raises(InputError) as exc:
        load_nla(missing, T, H, W)
    assert str(exc.value).startswith(f"nla_checkpoint={missing} does not exist")
    assert "prepare_video_data.py" in str(exc.value)


def test_random_bytes_are_an_input_error(tmp_path):
    path = tmp_path / "checkpoint"
    path.write_bytes(bytes(torch.randint(0, 256, (200,), generator=torch.Generator().manual_seed(0)).tolist()))
    with pytest.raises(InputError) as exc:
        load_nla(path, T, H, W)
    assert str(exc.value).startswith(f"cannot read {path} as a PyTorch checkpoint (")
    assert "\n" not in str(exc.value)


def test_plain_pickle_is_an_input_error(tmp_path):
    path = tmp_path / "checkpoint"
    path.write_bytes(pickle.dumps({"model_F_mapping1_state_dict": {}}))
    with pytest.raises(InputError, match=f"cannot read {path} as a PyTorch checkpoint"):
        load_nla(path, T, H, W)


def test_a_saved_list_is_an_input_error(tmp_path):
    path = save([torch.zeros(2), torch.ones(3)], tmp_path)
    with pytest.raises(InputError) as exc:
        load_nla(path, T, H, W)
    assert str(exc.value) == f"{path} holds a list, not an NLA checkpoint dictionary"


# evaluation over pixels and atlas windows -----------------------------------------------------------------


def test_rasterize_atlas_pixel_positions(noisy):
    origin, resolution = (-0.31, 0.17), 50
    image = rasterize_atlas(noisy, origin, (7, 11), resolution, chunk=13)
    assert image.shape == (1, 3, 7, 11)
    rows, cols = torch.meshgrid(torch.arange(7.0), torch.arange(11.0), indexing="ij")
    uv = torch.stack([origin[0] + cols / resolution, origin[1] + rows / resolution], dim=-1).reshape(-1, 2)
    with torch.no_grad():
        expected = noisy.atlas_rgb(uv).reshape(7, 11, 3).permute(2, 0, 1)
    torch.testing.assert_close(image[0], expected, rtol=0, atol=1e-5)
    # one pixel by hand: row 4, column 9
    with torch.no_grad():
        one = noisy.atlas_rgb(torch.tensor([[origin[0] + 9 / resolution, origin[1] + 4 / resolution]]))[0]
    torch.testing.assert_close(image[0, :, 4, 9], one, rtol=0, atol=1e-5)


def test_video_maps_layout_and_chunking(noisy):
    """Chunks of 7 points give the maps of one chunk of everything (on the top-left 20 x 12 px of the video)."""
    h, w = 12, 20
    small = video_maps(noisy, T, h, w, chunk=7)
    large = video_maps(noisy, T, h, w, chunk=100000)
    assert small.uvs["foreground"].shape == (T, h, w, 2) and small.alpha.shape == (T, 1, h, w)
    # the same values up to float rounding (matrix products of different batch sizes round differently)
    for layer in ("foreground", "background"):
        torch.testing.assert_close(small.uvs[layer], large.uvs[layer], rtol=0, atol=1e-5)
    torch.testing.assert_close(small.alpha, large.alpha, rtol=0, atol=1e-4)  # steep: tanh(6 (...) - 7.2)

    # pixel (x, y) of frame t sits at [t, y, x]
    points = [(0, 0, 0), (19, 0, 1), (0, 11, 2), (17, 9, 4), (8, 5, 3)]
    xyt = torch.tensor(points, dtype=torch.float32)
    with torch.no_grad():
        maps = noisy.frame_maps(xyt)
    for i, (x, y, t) in enumerate(points):
        for layer in ("foreground", "background"):
            torch.testing.assert_close(small.uvs[layer][t, y, x], maps[layer][i], rtol=0, atol=1e-5)
        torch.testing.assert_close(small.alpha[t, 0, y, x], maps["alpha"][i, 0], rtol=0, atol=1e-4)


def test_video_maps_of_a_frame_follow_the_closed_form(exact):
    """The background pans right with t (u grows by 0.3 * 2 / T in tanh space per frame)."""
    maps = video_maps(exact, T, H, W)
    x = torch.arange(W, dtype=torch.float32) / (W / 2) - 1
    for t in range(T):
        tn = t / (T / 2) - 1
        u = 0.5 * torch.tanh(0.6 * x + 0.3 * tn) - 0.5
        torch.testing.assert_close(maps.uvs["background"][t, 10, :, 0], u, rtol=0, atol=2e-5)
    assert F.l1_loss(maps.uvs["background"][1], maps.uvs["background"][0]) > 0
