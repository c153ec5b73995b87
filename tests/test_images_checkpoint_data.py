"""PNG grids, atomic writes, safetensors checkpoints and the training data loaders."""
import io
import os

import numpy as np
import pytest
import torch

from genfast.training.checkpoint import (CheckpointError, flatten_optimizer, load_checkpoint, save_checkpoint,
                                unflatten_optimizer)
from genfast.training.data import load_data
from genfast.training.images import check_writable, make_grid, png_bytes, save_grid, write_atomic

PIL = pytest.importorskip("PIL.Image")


@pytest.mark.parametrize("channels", [1, 3])
def test_png_decodes_to_the_grid(channels):
    torch.manual_seed(channels)
    images = torch.rand(7, channels, 5, 6)
    grid = make_grid(images, nrow=3, padding=2, scale=2)
    assert grid.shape == (3 * (10 + 2) + 2, 3 * (12 + 2) + 2, channels)
    decoded = np.asarray(PIL.open(io.BytesIO(png_bytes(grid))))
    assert np.array_equal(decoded.reshape(grid.shape), grid)
    # image 4 (row 1, col 1), pixel (0, 0) scaled x2 -> rows/cols 14..15 + padding
    top, left = 2 + 1 * 12, 2 + 1 * 14
    expect = (images[4, :, 0, 0] * 255 + 0.5).to(torch.uint8).numpy()
    assert np.array_equal(grid[top, left], expect) and np.array_equal(grid[top + 1, left + 1], expect)


def test_make_grid_rejects_bad_images():
    with pytest.raises(ValueError, match="images"):
        make_grid(torch.rand(3, 2, 4, 4))
    with pytest.raises(ValueError, match="images"):
        make_grid(torch.rand(0, 1, 4, 4))


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    target = tmp_path / "grid.png"
    save_grid(target, torch.rand(4, 1, 4, 4))
    before = target.read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError, match="disk full"):
        write_atomic(target, b"half a picture")
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.png"]  # no temporary left behind


def test_atomic_write_gives_the_permissions_of_a_plain_open(tmp_path):
    umask = os.umask(0o022)
    try:
        write_atomic(tmp_path / "a.bin", b"x")
        with open(tmp_path / "b.bin", "wb") as f:
            f.write(b"x")
    finally:
        os.umask(umask)
    assert (tmp_path / "a.bin").stat().st_mode == (tmp_path / "b.bin").stat().st_mode


def test_check_writable_names_the_flag(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ValueError, match="--out: cannot write"):
        check_writable(blocker / "sub" / "grid.png")
    with pytest.raises(ValueError, match="--out: .* is a directory"):
        check_writable(tmp_path)


def test_checkpoint_roundtrip_with_optimizer_state(tmp_path):
    torch.manual_seed(0)
    net = torch.nn.Linear(5, 3)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    net(torch.randn(4, 5)).sum().backward()
    opt.step()
    tensors, rest = flatten_optimizer("optim.", opt.state_dict())
    tensors.update({f"model.{k}": v for k, v in net.state_dict().items()})
    save_checkpoint(tmp_path / "c.safetensors", tensors, {"model": "x", "optim": rest, "step": 3})
    loaded, meta = load_checkpoint(tmp_path / "c.safetensors")
    assert meta["step"] == 3 and meta["model"] == "x"
    for k, v in tensors.items():
        assert torch.equal(loaded[k], v), k
    opt2 = torch.optim.Adam(torch.nn.Linear(5, 3).parameters(), lr=1e-3)
    opt2.load_state_dict(unflatten_optimizer("optim.", loaded, meta["optim"]))
    a, b = opt.state_dict(), opt2.state_dict()
    assert a["param_groups"] == b["param_groups"]
    for pid in a["state"]:
        for key, v in a["state"][pid].items():
            assert torch.equal(torch.as_tensor(v), torch.as_tensor(b["state"][pid][key]))


def test_checkpoint_errors_are_one_line(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        load_checkpoint(tmp_path / "missing.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(os.urandom(300))
    with pytest.raises(CheckpointError, match="not a readable safetensors") as err:
        load_checkpoint(bad)
    assert "\n" not in str(err.value)
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, tmp_path / "plain.safetensors")
    with pytest.raises(CheckpointError, match="without genfast metadata"):
        load_checkpoint(tmp_path / "plain.safetensors")


def test_digits_are_upsampled_in_unit_range_with_labels():
    d = load_data("digits", 16)
    assert d.images.shape == (1797, 1, 16, 16) and d.num_classes == 10
    assert d.images.min() >= 0 and d.images.max() <= 1 and d.images.max() > 0.9
    assert sorted(d.labels.unique().tolist()) == list(range(10))
    # a blurred copy of the original 8x8 digit: downsampling back gives it again, roughly
    from sklearn.datasets import load_digits

    orig = torch.as_tensor(load_digits().images[:50], dtype=torch.float32)[:, None] / 16
    back = torch.nn.functional.avg_pool2d(d.images[:50], 2)
    assert (back - orig).abs().mean() < 0.08


def test_image_folder_subfolders_are_classes(tmp_path):
    rng = np.random.default_rng(0)
    for cls, n in (("cats", 3), ("dogs", 2)):
        (tmp_path / cls).mkdir()
        for i in range(n):
            PIL.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(tmp_path / cls / f"{i}.png")
    d = load_data(str(tmp_path), 8)
    assert d.images.shape == (5, 3, 8, 8) and d.num_classes == 2
    assert d.labels.tolist() == [0, 0, 0, 1, 1]


def test_grey_image_folder_gives_one_channel(tmp_path):
    for i in range(2):
        PIL.fromarray(np.full((10, 10), 40 * i, np.uint8)).save(tmp_path / f"{i}.png")
    d = load_data(str(tmp_path), 4)
    assert d.images.shape == (2, 1, 4, 4) and d.labels is None
    assert torch.allclose(d.images[1], torch.full((1, 4, 4), 40 / 255), atol=1e-6)


@pytest.mark.parametrize("layout", ["nhwc", "nchw", "nhw"])
def test_npz_layouts(tmp_path, layout):
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (6, 3, 4, 4), dtype=np.uint8) if layout != "nhw" else rng.integers(0, 256, (6, 4, 4), dtype=np.uint8)
    stored = x.transpose(0, 2, 3, 1) if layout == "nhwc" else x
    np.savez(tmp_path / "d.npz", images=stored, labels=np.arange(6) % 3)
    d = load_data(str(tmp_path / "d.npz"), 4)
    expect = torch.from_numpy(x if layout != "nhw" else x[:, None]).float() / 255
    assert torch.equal(d.images, expect) and d.num_classes == 3 and d.labels.tolist() == [0, 1, 2, 0, 1, 2]


def test_bad_data_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="--data: no images"):
        load_data(str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="--data: .* neither"):
        load_data(str(tmp_path / "nothing-here"))
    np.savez(tmp_path / "w.npz", foo=np.zeros(3))
    with pytest.raises(ValueError, match="no array named images"):
        load_data(str(tmp_path / "w.npz"))
    np.savez(tmp_path / "f.npz", x=np.full((2, 4, 4), 3.0))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        load_data(str(tmp_path / "f.npz"))


@pytest.mark.parametrize("name, magic", [("g.png", b"\x89PNG"), ("g.jpg", b"\xff\xd8\xff"), ("g.JPEG", b"\xff\xd8\xff"),
                                         ("g.bmp", b"BM"), ("g.webp", b"RIFF")])
def test_the_extension_picks_the_format(tmp_path, name, magic):
    images = torch.rand(4, 3, 6, 6)
    save_grid(tmp_path / name, images, nrow=2)
    data = (tmp_path / name).read_bytes()
    assert data.startswith(magic)
    decoded = np.asarray(PIL.open(tmp_path / name).convert("RGB")).astype(int)
    grid = make_grid(images, nrow=2).astype(int)
    assert decoded.shape == grid.shape
    if name.lower().endswith(("jpg", "jpeg")):  # lossy: close on average
        assert np.abs(decoded - grid).mean() <= 8
    else:
        assert np.array_equal(decoded, grid)


def test_an_unknown_extension_is_refused_before_any_work(tmp_path):
    with pytest.raises(ValueError, match=r"--out: .*\.xyz"):
        check_writable(tmp_path / "grid.xyz", "--out", image=True)
    assert check_writable(tmp_path / "grid.png", "--out", image=True) == tmp_path / "grid.png"


def test_atomic_write_follows_a_symlink_and_keeps_the_link(tmp_path):
    target = tmp_path / "real.bin"
    target.write_bytes(b"old")
    link = tmp_path / "link.bin"
    link.symlink_to(target)
    write_atomic(link, b"new")
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert target.read_bytes() == b"new"


def test_atomic_write_keeps_the_permissions_of_an_existing_file(tmp_path):
    target = tmp_path / "a.bin"
    target.write_bytes(b"old")
    os.chmod(target, 0o640)
    write_atomic(target, b"new")
    assert target.read_bytes() == b"new" and (target.stat().st_mode & 0o777) == 0o640


def test_a_device_is_written_in_place_not_replaced(tmp_path):
    import stat

    before = os.stat("/dev/null")
    write_atomic("/dev/null", b"grid bytes")
    after = os.stat("/dev/null")
    assert stat.S_ISCHR(after.st_mode) and after.st_ino == before.st_ino and after.st_rdev == before.st_rdev
    assert check_writable("/dev/null", "--out") == __import__("pathlib").Path("/dev/null")


def test_a_fifo_is_written_in_place_or_refused(tmp_path):
    import stat
    import threading

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(OSError, match="no reader"):  # nobody reads: refuse rather than hang
        write_atomic(fifo, b"x")
    got = []

    def reader():  # a blocking open: it waits for the writer, then reads to EOF
        with open(fifo, "rb") as f:
            got.append(f.read())

    t = threading.Thread(target=reader)
    t.start()
    for _ in range(1000):  # until the reader's open() has registered it (no sleep-based guess)
        try:
            write_atomic(fifo, b"through the pipe")
            break
        except OSError as exc:
            assert "no reader" in str(exc)
            threading.Event().wait(0.01)
    t.join(10)
    assert got == [b"through the pipe"] and stat.S_ISFIFO(os.stat(fifo).st_mode)


def test_a_socket_is_refused(tmp_path):
    import socket

    path = tmp_path / "s.sock"
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(path))
    try:
        with pytest.raises(ValueError, match="--out: .*neither a regular file"):
            check_writable(path, "--out")
        with pytest.raises(OSError, match="not a regular file"):
            write_atomic(path, b"x")
    finally:
        sock.close()
