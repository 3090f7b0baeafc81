
import pytest
import torch
from PIL import Image

from hart.data.datasets import infinite_batches, make_dataset
from hart.data.sources import FASHION_MNIST_DIR
from hart.common.errors import UserError


def test_synthetic_shapes_and_range():
    ds = make_dataset("synthetic", "train", 24)
    x, y = ds[7]
    assert x.shape == (3, 24, 24) and x.min() >= -1 and x.max() <= 1
    assert 0 <= y < len(ds.classes)
    assert torch.equal(ds[7][0], x)  # deterministic per index
    assert not torch.equal(make_dataset("synthetic", "test", 24)[7][0], x)


def test_folder_skips_corrupt_files(tmp_path, capsys):
    for cls in ("cats", "dogs"):
        (tmp_path / cls).mkdir()
        for i in range(3):
            Image.new("RGB", (40, 30), (i * 50, 10, 200)).save(tmp_path / cls / f"{i}.png")
    (tmp_path / "cats" / "broken.png").write_bytes(b"\x89PNG not really")
    (tmp_path / "dogs" / "notes.txt").write_text("hello")
    ds = make_dataset(f"folder:{tmp_path}", "train", 16)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "skipped 2 unreadable image file(s) (the first: " in err[0] and "broken.png" in err[0]
    assert ds.classes == ["cats", "dogs"] and len(ds) == 6
    xs = [ds[i][0] for i in range(len(ds))]
    assert all(x.shape == (3, 16, 16) and x.min() >= -1 and x.max() <= 1 for x in xs)


def test_folder_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        make_dataset(f"folder:{tmp_path / 'nope'}")
    with pytest.raises(UserError, match="no class subfolders"):
        make_dataset(f"folder:{tmp_path}")
    with pytest.raises(UserError, match="unknown dataset"):
        make_dataset("imagenet")
    with pytest.raises(UserError, match=r"unknown dataset 'caption' in 'caption:/x'; did you mean captions:PATH\?"):
        make_dataset("caption:/x")


def test_fashion_mnist_from_data_dir(tmp_path):
    # write a tiny IDX pair so the reader is tested without the Debian package
    import gzip
    import struct

    import numpy as np

    imgs = np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    with gzip.open(tmp_path / "t10k-images-idx3-ubyte.gz", "wb") as f:
        f.write(struct.pack(">IIII", 0x803, 5, 28, 28) + imgs.tobytes())
    with gzip.open(tmp_path / "t10k-labels-idx1-ubyte.gz", "wb") as f:
        f.write(struct.pack(">II", 0x801, 5) + bytes([0, 1, 2, 3, 9]))
    ds = make_dataset("fashion-mnist", "test", 32, data_dir=tmp_path)
    x, y = ds[4]
    assert x.shape == (3, 32, 32) and y == 9
    # padded by 2 pixels of black (-1), the original pixels in the middle
    assert torch.all(x[:, :2] == -1)
    assert torch.allclose(x[0, 2:30, 2:30], torch.from_numpy(imgs[4]).float() / 127.5 - 1)
    with pytest.raises(UserError, match="not found"):
        make_dataset("fashion-mnist", "train", 32, data_dir=tmp_path)


@pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(), reason="Debian dataset-fashion-mnist not installed")
def test_fashion_mnist_debian_package():
    ds = make_dataset("fashion-mnist", "test", 32)
    assert len(ds) == 10_000 and ds[0][0].shape == (3, 32, 32)
    assert len(make_dataset("fashion-mnist", "train", 32)) == 60_000


def test_infinite_batches_resume_and_shards():
    ds = make_dataset("synthetic", "train", 8)
    ds.size = 40
    g = torch.Generator().manual_seed(3)
    full = infinite_batches(ds, 4, g)
    seq = [next(full)[1] for _ in range(25)]  # crosses epoch boundaries (10 batches per epoch)
    resumed = infinite_batches(ds, 4, torch.Generator().manual_seed(3), start_step=13)
    assert all(torch.equal(next(resumed)[1], seq[i]) for i in range(13, 25))
    r0 = infinite_batches(ds, 4, torch.Generator().manual_seed(3), rank=0, world_size=2)
    r1 = infinite_batches(ds, 4, torch.Generator().manual_seed(3), rank=1, world_size=2)
    a, b = next(r0)[0], next(r1)[0]
    whole = next(infinite_batches(ds, 8, torch.Generator().manual_seed(3)))[0]
    assert torch.equal(torch.cat([a, b]), whole)  # two disjoint halves of the same shuffled batch


def test_infinite_batches_workers_same_batches():
    """--workers loads the same batches in the same order (resumed, across epochs, sharded)."""
    ds = make_dataset("synthetic", "train", 8)
    ds.size = 40
    for kw in ({}, {"start_step": 7}, {"rank": 1, "world_size": 2}):
        plain = infinite_batches(ds, 4, torch.Generator().manual_seed(5), **kw)
        loaded = infinite_batches(ds, 4, torch.Generator().manual_seed(5), workers=2, **kw)
        for _ in range(12):  # crosses an epoch boundary
            (x, y), (x2, y2) = next(plain), next(loaded)
            assert torch.equal(x, x2) and torch.equal(y, y2)


def test_folder_leaves_out_empty_classes_macosx_and_loose_images(tmp_path, capsys):
    for cls in ("cats", "dogs", "empty", "__MACOSX/cats"):
        (tmp_path / cls).mkdir(parents=True)
    for cls in ("cats", "dogs"):
        Image.new("RGB", (20, 20), (200, 10, 10)).save(tmp_path / cls / "a.png")
    (tmp_path / "__MACOSX" / "cats" / "._a.png").write_bytes(b"\x00\x05\x16\x07 resource fork")
    Image.new("RGB", (20, 20)).save(tmp_path / "stray.png")
    ds = make_dataset(f"folder:{tmp_path}", "train", 16)
    assert ds.classes == ["cats", "dogs"] and [label for _, label in ds.items] == [0, 1]
    err = capsys.readouterr().err
    assert "1 class folder(s) without a readable image left out (no class made): empty" in err
    assert "1 image(s) outside the class folders left out (the first: stray.png)" in err
    assert "__MACOSX" not in err and "unreadable" not in err


def test_image_files_are_read_upright_with_alpha_on_white_and_16_bit_scaled(tmp_path):
    import numpy as np

    (tmp_path / "c").mkdir()
    Image.new("RGBA", (16, 16), (0, 0, 0, 0)).save(tmp_path / "c" / "clear.png")  # transparent black
    Image.fromarray(np.full((16, 16), 32896, dtype=np.uint16)).save(tmp_path / "c" / "grey16.png")  # 50% grey
    sideways = Image.new("RGB", (32, 16), (0, 0, 255))
    sideways.paste((255, 0, 0), (0, 0, 16, 16))  # red on the left half
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display"
    sideways.save(tmp_path / "c" / "phone.jpg", exif=exif, quality=95)
    Image.new("P", (16, 16), 0).save(tmp_path / "c" / "anim.gif")
    for spec in (f"folder:{tmp_path}", f"images:{tmp_path}"):
        ds = make_dataset(spec, "train", 16)
        x = {p.name: ds[i][0] for i, (p, _) in enumerate(ds.items)}
        assert sorted(x) == ["anim.gif", "clear.png", "grey16.png", "phone.jpg"]
        assert torch.equal(x["clear.png"], torch.ones(3, 16, 16))  # white, not black
        assert abs(x["grey16.png"].mean().item()) < 0.01  # 128 of 255, not clipped to white
        top, bottom = x["phone.jpg"][:, :8].mean((1, 2)), x["phone.jpg"][:, 8:].mean((1, 2))
        assert top[0] > 0.8 and bottom[2] > 0.8  # upright: red on top (centre crop of the turned image)


def test_undecodable_files_are_skipped_and_named(tmp_path, capsys):
    import io

    for i in range(3):
        Image.new("RGB", (20, 20), (60 * i, 10, 10)).save(tmp_path / f"{i}.jpg")
    (tmp_path / "empty.jpg").write_bytes(b"")
    buf = io.BytesIO()
    Image.effect_noise((64, 64), 60).convert("RGB").save(buf, format="JPEG")
    data = buf.getvalue()
    (tmp_path / "truncated.jpg").write_bytes(data[:len(data) // 2])  # a header that verify() passes
    ds = make_dataset(f"images:{tmp_path}", "train", 16)
    err = capsys.readouterr().err
    assert "skipped 1 unreadable image file(s) (the first: " in err and "empty.jpg" in err
    assert len(ds) == 4
    xs = [ds[i][0] for i in range(len(ds))]  # the truncated file: the next image in its place
    assert all(x.shape == (3, 16, 16) for x in xs)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "truncated.jpg cannot be decoded" in err[0]
    ds[3]  # said once
    assert capsys.readouterr().err == ""


def test_a_spec_names_the_same_data_however_it_is_written():
    from hart.data.datasets import parse_spec

    same = {parse_spec(t).identity() for t in ("folder:photos", "folder:/home/me/photos/", "folder:./photos")}
    assert same == {"folder:photos"}
    assert parse_spec("shapes").identity() == parse_spec("shapes:train").identity() == "shapes:train"
    assert parse_spec("images:photos").identity() != parse_spec("folder:photos").identity()

