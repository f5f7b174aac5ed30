"""Tests of scalelearn.data: sources, resampler, protocols, in-depth generator, batches, files."""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from scalelearn.data import datasets, in_depth, loader, mnist, rescale, store
from scalelearn.errors import ScalelearnError

# ../shared beside the repository (as in CI).
SHARED_MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"
T10K_CLASS_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.fixture(scope="module")
def pool():
    images, labels, _ = mnist.load_pool("embedded")
    return images, labels


@pytest.fixture(scope="module")
def uneven_pool(pool):
    """560 digits with unequal class frequencies (20 + 8c of class c), so stratification shows."""
    images, labels = pool
    keep = np.concatenate([np.flatnonzero(labels == c)[: 20 + 8 * c] for c in range(10)])
    return images[keep], labels[keep]


def write_idx(path: Path, array: np.ndarray, magic: int) -> None:
    header = np.array([magic, *array.shape], dtype=">u4").tobytes()
    path.write_bytes(header + array.astype(np.uint8).tobytes())


# ---------------------------------------------------------------- sources


def test_embedded_source_is_5000_real_digits(pool):
    images, labels = pool
    assert images.shape == (5000, 28, 28) and images.dtype == np.uint8
    assert labels.dtype == np.int64
    assert np.bincount(labels).tolist() == [500] * 10
    assert images.max() == 255
    # MNIST: mean intensity ~0.13, an empty outer frame, a bright centre.
    assert 0.10 < images.mean() / 255 < 0.16
    assert images[:, 0, :].mean() < 1 and images[:, :, 0].mean() < 1
    assert images[:, 10:18, 10:18].mean() > 60


@pytest.mark.skipif(not SHARED_MNIST.is_dir(), reason="no shared MNIST IDX folder")
def test_idx_dir_reads_gzipped_and_raw(tmp_path):
    images, labels, info = mnist.load_pool("idx_dir", idx_dir=SHARED_MNIST)
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert np.bincount(labels).tolist() == T10K_CLASS_COUNTS
    assert all(f["verified"] for f in info["files"])

    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (tmp_path / name).write_bytes(gzip.decompress((SHARED_MNIST / f"{name}.gz").read_bytes()))
    raw_images, raw_labels, raw_info = mnist.load_pool("idx_dir", idx_dir=tmp_path)
    np.testing.assert_array_equal(raw_images, images)
    np.testing.assert_array_equal(raw_labels, labels)
    assert not any(f["verified"] for f in raw_info["files"])


def test_idx_dir_joins_train_before_test(tmp_path):
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, (3, 28, 28))
    test = rng.integers(0, 256, (2, 28, 28))
    write_idx(tmp_path / "train-images-idx3-ubyte", train, mnist.IMAGES_MAGIC)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.array([1, 2, 3]), mnist.LABELS_MAGIC)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", test, mnist.IMAGES_MAGIC)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.array([7, 9]), mnist.LABELS_MAGIC)
    images, labels, _ = mnist.load_pool("idx_dir", idx_dir=tmp_path)
    np.testing.assert_array_equal(images, np.concatenate([train, test]))
    assert labels.tolist() == [1, 2, 3, 7, 9]


@pytest.mark.parametrize(
    "damage, message",
    [
        ("magic", "magic number"),
        ("truncate", "truncated"),
        ("unpaired", "matching labels"),
        ("shape", "not an MNIST pair"),
    ],
)
def test_idx_dir_rejects_broken_files(tmp_path, damage, message):
    images = np.zeros((4, 28, 28))
    write_idx(tmp_path / "t10k-images-idx3-ubyte", images, mnist.IMAGES_MAGIC)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.arange(4), mnist.LABELS_MAGIC)
    image_file = tmp_path / "t10k-images-idx3-ubyte"
    if damage == "magic":  # a labels file where the images belong
        write_idx(image_file, np.arange(4), mnist.LABELS_MAGIC)
    elif damage == "truncate":
        image_file.write_bytes(image_file.read_bytes()[:-100])
    elif damage == "unpaired":
        (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    elif damage == "shape":
        write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.arange(3), mnist.LABELS_MAGIC)
    with pytest.raises(ScalelearnError, match=message):
        mnist.load_pool("idx_dir", idx_dir=tmp_path)


@pytest.mark.skipif(not SHARED_MNIST.is_dir(), reason="no shared MNIST IDX folder")
def test_idx_dir_checks_md5_of_known_files(tmp_path):
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        shutil.copy(SHARED_MNIST / name, tmp_path / name)
    labels_file = tmp_path / "t10k-labels-idx1-ubyte.gz"
    data = bytearray(gzip.decompress(labels_file.read_bytes()))
    data[100] = (data[100] + 1) % 10  # a valid IDX file, but not the official one
    labels_file.write_bytes(gzip.compress(bytes(data)))
    with pytest.raises(ScalelearnError, match="md5"):
        mnist.load_pool("idx_dir", idx_dir=tmp_path)


def test_missing_folder_and_unknown_source_explain_the_choices(tmp_path):
    with pytest.raises(ScalelearnError) as error:
        mnist.load_pool("idx_dir", idx_dir=tmp_path / "nowhere")
    text = str(error.value)
    assert "idx_dir" in text and "nowhere" in text and "embedded" in text

    with pytest.raises(ScalelearnError, match="no IDX pair"):
        mnist.load_pool("idx_dir", idx_dir=tmp_path)
    with pytest.raises(ScalelearnError, match="mnist.idx_dir"):
        mnist.load_pool("idx_dir")
    with pytest.raises(ScalelearnError) as error:
        mnist.load_pool("kaggle")
    assert all(name in str(error.value) for name in mnist.SOURCES)


def test_torchvision_source_without_internet_says_what_to_do(monkeypatch, tmp_path):
    import torchvision.datasets

    def offline(*args, **kwargs):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz: name resolution failed")

    monkeypatch.setattr(torchvision.datasets, "MNIST", offline)
    with pytest.raises(ScalelearnError) as error:
        mnist.load_pool("torchvision", root=tmp_path)
    text = str(error.value)
    assert "`torchvision`" in text and "failed" in text and "name resolution failed" in text
    assert "idx_dir" in text and "embedded" in text


# ---------------------------------------------------------------- resampler


def bordered_digits(images: np.ndarray, n: int) -> np.ndarray:
    """Digits with an empty 2-pixel border (Pillow replicates edge pixels; zero fill does not)."""
    rim = images.copy()
    rim[:, 2:-2, 2:-2] = 0
    return images[rim.reshape(len(images), -1).max(axis=1) == 0][:n]


@pytest.mark.parametrize("factor", [0.3, 0.55, 0.9, 1.3])
def test_rescale_matches_sesn_generator(pool, factor):
    """SESN made MNIST-Scale with torchvision's affine on PIL images, bicubic: same pixels up to
    one grey level (Pillow truncates where we round)."""
    from PIL import Image
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.functional import affine

    digits = bordered_digits(pool[0], 40)
    factors = torch.full((len(digits),), factor, dtype=torch.float64)
    ours = rescale.rescale_uint8(torch.from_numpy(digits), factors, 28).numpy().astype(int)
    reference = np.stack(
        [
            np.asarray(
                affine(
                    Image.fromarray(d),
                    angle=0.0,
                    translate=[0, 0],
                    scale=factor,
                    shear=[0.0],
                    interpolation=InterpolationMode.BICUBIC,
                )
            )
            for d in digits
        ]
    ).astype(int)
    assert np.abs(ours - reference).max() <= 1


def test_rescale_by_one_places_the_frame_at_the_centre(pool):
    digits = torch.from_numpy(pool[0][:5])
    ones = torch.ones(5, dtype=torch.float64)
    assert torch.equal(rescale.rescale_uint8(digits, ones, 28), digits)
    big = rescale.rescale_uint8(digits, ones, 56)
    assert torch.equal(big[:, 14:42, 14:42], digits) and big.sum() == digits.sum()


def moments(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centroid offset from the canvas centre [n, 2] and radius of gyration [n]."""
    n, size = images.shape[0], images.shape[-1]
    coords = np.arange(size) - (size - 1) / 2
    mass = images.reshape(n, -1).sum(axis=1)
    y = (images.sum(axis=2) * coords).sum(axis=1) / mass
    x = (images.sum(axis=1) * coords).sum(axis=1) / mass
    yy = (images.sum(axis=2) * coords**2).sum(axis=1) / mass - y**2
    xx = (images.sum(axis=1) * coords**2).sum(axis=1) / mass - x**2
    return np.stack([y, x], axis=1), np.sqrt(xx + yy)


@pytest.mark.parametrize("factor", [0.5, 2.0, 3.5])
def test_rescale_scales_size_and_offset_by_the_factor(pool, factor):
    digits = pool[0][:50].astype(np.float64)
    canvas = 112
    flat = torch.ones(50, dtype=torch.float64)
    frames = torch.from_numpy(digits).unsqueeze(1)
    base = rescale.rescale_about_centre(frames, flat, canvas)[:, 0].numpy()
    scaled = rescale.rescale_about_centre(frames, flat * factor, canvas)[:, 0].numpy()
    base_offset, base_radius = moments(np.clip(base, 0, None))
    offset, radius = moments(np.clip(scaled, 0, None))
    np.testing.assert_allclose(radius / base_radius, factor, rtol=0.03)
    np.testing.assert_allclose(offset, base_offset * factor, atol=0.1 + 0.02 * factor)


def test_antialias_suppresses_aliasing_when_shrinking():
    stripes = torch.zeros(1, 1, 84, 84, dtype=torch.float64)
    stripes[..., ::2] = 1.0  # the highest frequency the grid holds
    factor = torch.tensor([0.3], dtype=torch.float64)
    aliased = rescale.rescale_about_centre(stripes, factor, 84)[0, 0, 42, 34:50]
    smooth = rescale.rescale_about_centre(stripes, factor, 84, antialias=True)[0, 0, 42, 34:50]
    assert aliased.std() > 0.2  # point sampling turns the stripes into a false pattern
    assert smooth.std() < 0.05 and abs(float(smooth.mean()) - 0.5) < 0.05
    # Upsampling is unaffected by the antialias switch.
    up = torch.tensor([2.0], dtype=torch.float64)
    assert torch.equal(
        rescale.rescale_about_centre(stripes, up, 84),
        rescale.rescale_about_centre(stripes, up, 84, antialias=True),
    )


def test_uint8_float_round_trip_and_random_rescale():
    levels = torch.arange(256, dtype=torch.uint8)
    assert torch.equal(rescale.to_uint8(rescale.to_float(levels)), levels)
    assert torch.equal(rescale.to_uint8(torch.tensor([-0.2, 1.3])), torch.tensor([0, 255]))

    images = torch.randint(0, 256, (6, 1, 28, 28), dtype=torch.uint8)
    first = rescale.random_rescale(images, (0.5, 2.0), torch.Generator().manual_seed(3))
    again = rescale.random_rescale(images, (0.5, 2.0), torch.Generator().manual_seed(3))
    assert torch.equal(first[0], again[0]) and first[0].shape == images.shape
    assert first[0].dtype == torch.uint8
    assert bool(((first[1] >= 0.5) & (first[1] <= 2.0)).all())


# ---------------------------------------------------------------- protocols


def test_split_sizes_fit_or_scale_down():
    assert datasets.resolve_split_sizes((10000, 5000, 50000), 70000) == (
        (10000, 5000, 50000),
        False,
    )
    sizes, scaled = datasets.resolve_split_sizes((10000, 5000, 50000), 5000)
    assert scaled and sizes == (769, 385, 3846) and sum(sizes) == 5000
    assert datasets.resolve_split_sizes((100, 50, 200), 5000) == ((100, 50, 200), False)
    with pytest.raises(ScalelearnError):
        datasets.resolve_split_sizes((0, 10, 10), 100)


def test_small_pool_scales_the_split_with_a_warning(uneven_pool, caplog):
    images, labels = uneven_pool
    with caplog.at_level(logging.WARNING, logger="scalelearn.data.datasets"):
        arrays, manifest = datasets.make_mnist_scale(images, labels, seed=0)
    assert "scaled split" in caplog.text
    assert manifest["split_scaled"] is True
    assert manifest["split_requested"] == {"train": 10000, "val": 2000, "test": 50000}
    sizes = [len(arrays[f"{s}_labels"]) for s in datasets.SPLITS]
    assert sum(sizes) == len(labels) and sizes == list(manifest["split"].values())
    np.testing.assert_allclose(np.array(sizes) / len(labels), [10 / 62, 2 / 62, 50 / 62], atol=2e-3)


def test_stratified_disjoint_and_consistent(uneven_pool):
    images, labels = uneven_pool
    sizes = (100, 57, 300)
    arrays, _ = datasets.make_mnist_scale(images, labels, seed=4, split=sizes)
    proportions = np.bincount(labels) / len(labels)
    seen = []
    for split, n in zip(datasets.SPLITS, sizes, strict=True):
        index = arrays[f"{split}_index"]
        assert len(index) == n
        np.testing.assert_array_equal(arrays[f"{split}_labels"], labels[index])
        counts = np.bincount(arrays[f"{split}_labels"], minlength=10)
        assert np.abs(counts - n * proportions).max() < 1.5
        assert not np.all(np.diff(arrays[f"{split}_labels"]) >= 0)  # shuffled, not class-sorted
        seen.append(index)
    every = np.concatenate(seen)
    assert len(np.unique(every)) == len(every)
    np.testing.assert_array_equal(arrays["test_digits"], images[arrays["test_index"]])


def test_scale_distribution_is_log_uniform_on_the_canvas(pool):
    images, labels = pool
    width = 8.0
    # Canvas 28 keeps this cheap: the draws do not depend on the canvas.
    arrays, manifest = datasets.make_scale_distribution(
        images, labels, width_b=width, canvas=28, seed=1, split=(1000, 500, 3500)
    )
    scales = np.concatenate([arrays[f"{s}_scales"] for s in datasets.SPLITS])
    assert arrays["train_scales"].dtype == np.float32
    assert scales.min() >= 1.0 and scales.max() <= width
    u = np.log(scales) / np.log(width)  # Uniform[0, 1] exactly when s is log-uniform
    np.testing.assert_allclose(
        np.quantile(u, [0.1, 0.25, 0.5, 0.75, 0.9]), [0.1, 0.25, 0.5, 0.75, 0.9], atol=0.03
    )
    assert manifest["parameters"]["width_b"] == width and manifest["split_scaled"] is False


def test_mnist_scale_is_uniform_on_28(pool):
    images, labels = pool
    arrays, manifest = datasets.make_mnist_scale(images, labels, seed=2, split=(1000, 200, 3800))
    assert arrays["train_images"].shape == (1000, 28, 28)
    assert arrays["test_digits"].shape == (3800, 28, 28)
    scales = np.concatenate([arrays[f"{s}_scales"] for s in datasets.SPLITS])
    assert scales.min() >= 0.3 and scales.max() <= 1.0
    u = (scales - 0.3) / 0.7
    np.testing.assert_allclose(np.quantile(u, [0.1, 0.5, 0.9]), [0.1, 0.5, 0.9], atol=0.03)
    assert manifest["protocol"] == "mnist_scale"
    assert manifest["parameters"]["scale_range"] == [0.3, 1.0]


def test_images_are_the_pool_frames_at_their_stored_scale(uneven_pool):
    images, labels = uneven_pool
    arrays, _ = datasets.make_scale_distribution(
        images, labels, width_b=2.0, canvas=60, seed=0, split=(40, 20, 60)
    )
    assert arrays["train_images"].shape == (40, 60, 60)
    assert arrays["val_images"].shape == (20, 60, 60)
    frames = torch.from_numpy(images[arrays["val_index"]])
    factors = torch.from_numpy(arrays["val_scales"].astype(np.float64))
    np.testing.assert_array_equal(
        rescale.rescale_uint8(frames, factors, 60).numpy(), arrays["val_images"]
    )
    _, radius = moments(arrays["val_images"].astype(np.float64))
    _, base = moments(rescale.rescale_uint8(frames, torch.ones(20), 60).numpy().astype(float))
    np.testing.assert_allclose(radius / base, arrays["val_scales"], rtol=0.05)


def test_same_seed_same_file_other_seed_other_data(uneven_pool, tmp_path):
    images, labels = uneven_pool

    def build(seed, path):
        arrays, manifest = datasets.make_scale_distribution(
            images, labels, width_b=2.0, canvas=56, seed=seed, split=(60, 20, 100)
        )
        return arrays, datasets.save_dataset(path, arrays, manifest)

    first, manifest_a = build(3, tmp_path / "a" / "seed3.npz")
    second, manifest_b = build(3, tmp_path / "b" / "seed3.npz")
    other, _ = build(4, tmp_path / "c" / "seed4.npz")
    for key in datasets.DATASET_KEYS:
        np.testing.assert_array_equal(first[key], second[key])
    assert manifest_a["sha256"] == manifest_b["sha256"]
    assert not np.array_equal(first["train_index"], other["train_index"])
    assert not np.array_equal(first["train_scales"], other["train_scales"])


def test_save_is_atomic_and_the_manifest_describes_the_file(uneven_pool, tmp_path, monkeypatch):
    images, labels = uneven_pool
    arrays, manifest = datasets.make_mnist_scale(images, labels, seed=0, split=(50, 10, 60))
    path = tmp_path / "sesn" / "seed0.npz"
    written = datasets.save_dataset(path, arrays, manifest)
    assert sorted(p.name for p in path.parent.iterdir()) == ["seed0.json", "seed0.npz"]
    on_disk = json.loads(path.with_suffix(".json").read_text())
    assert on_disk == written
    assert on_disk["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert on_disk["scalelearn_version"] and on_disk["seed"] == 0
    loaded = datasets.load_dataset(path)
    assert set(loaded) == set(datasets.DATASET_KEYS)
    for key in datasets.DATASET_KEYS:
        np.testing.assert_array_equal(loaded[key], arrays[key])

    # A write that dies half-way leaves the old file intact and no temporary behind.
    before = path.read_bytes()

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np.lib.format, "write_array", broken)
    with pytest.raises(OSError):
        datasets.save_dataset(path, arrays, manifest)
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["seed0.json", "seed0.npz"]


def test_load_dataset_errors(tmp_path):
    with pytest.raises(ScalelearnError, match="does not exist"):
        datasets.load_dataset(tmp_path / "missing.npz")
    store.write_npz(tmp_path / "partial.npz", {"train_images": np.zeros((1, 2, 2), np.uint8)})
    with pytest.raises(ScalelearnError, match="lacks"):
        datasets.load_dataset(tmp_path / "partial.npz")


# ---------------------------------------------------------------- in-depth test


def test_in_depth_renders_every_digit_at_every_scale(pool):
    scales = in_depth.IN_DEPTH_SCALES
    assert len(scales) == 45 and scales[0] == 0.5 and np.isclose(scales[-1], 2**3.5)
    np.testing.assert_allclose(np.diff(np.log2(scales)), 4.5 / 44)

    digits, labels = pool[0][:300], pool[1][:300]
    batches = in_depth.InDepthBatches(digits, labels, canvas=56, batch_size=3, n_digits=7, seed=5)
    items = list(batches)
    assert len(items) == len(batches) == 45 * 3
    assert sum(len(b.labels) for b in items) == 7 * 45
    assert [b.scale_index for b in items[::3]] == list(range(45))
    np.testing.assert_allclose([b.scale for b in items[::3]], scales)
    chosen = batches.digit_index
    assert len(np.unique(chosen)) == 7
    np.testing.assert_array_equal(
        in_depth.InDepthBatches(digits, labels, n_digits=7, seed=5).digit_index, chosen
    )
    assert not np.array_equal(
        in_depth.InDepthBatches(digits, labels, n_digits=7, seed=6).digit_index, chosen
    )
    at_scale = [b for b in items if b.scale_index == 30]
    images = torch.cat([b.images for b in at_scale])
    assert images.shape == (7, 56, 56) and images.dtype == torch.uint8
    expected = rescale.rescale_uint8(
        torch.from_numpy(digits[chosen]), torch.full((7,), scales[30]), 56
    )
    assert torch.equal(images, expected)
    assert torch.cat([b.labels for b in at_scale]).tolist() == labels[chosen].tolist()


# ---------------------------------------------------------------- batches


def test_batches_cover_every_index_once_in_a_reproducible_order():
    n = 10
    images = torch.arange(n, dtype=torch.uint8).reshape(n, 1, 1).expand(n, 2, 2).contiguous()
    labels = torch.arange(n)
    batches = loader.Batches(images, labels, batch_size=4, shuffle=True, seed=7)
    assert len(batches) == 3
    assert len(loader.Batches(images, labels, batch_size=4, drop_last=True)) == 2

    def epoch_order(b, epoch):
        b.set_epoch(epoch)
        order = []
        for x, y in b:
            assert x.dtype == torch.uint8 and x.shape[1:] == (1, 2, 2) and y.dtype == torch.int64
            assert torch.equal(x[:, 0, 0, 0].long(), y)
            order += y.tolist()
        return order

    first = epoch_order(batches, 0)
    assert sorted(first) == list(range(n))
    assert epoch_order(loader.Batches(images, labels, 4, shuffle=True, seed=7), 0) == first
    assert epoch_order(batches, 1) != first
    assert epoch_order(batches, 0) == first
    assert epoch_order(loader.Batches(images, labels, 4, shuffle=True, seed=8), 0) != first
    assert epoch_order(loader.Batches(images, labels, 4), 3) == list(range(n))
    dropped = epoch_order(loader.Batches(images, labels, 4, shuffle=True, drop_last=True), 0)
    assert len(dropped) == 8 and len(set(dropped)) == 8
    # min_last leaves out a last batch only when it is smaller: 10 = 4 + 4 + 2 keeps the 2.
    kept = loader.Batches(images, labels, 4, shuffle=True, seed=7, min_last=2)
    assert len(kept) == 3 and epoch_order(kept, 0) == first
    single = loader.Batches(images[:9], labels[:9], 4, shuffle=True, min_last=2)
    assert len(single) == 2 and len(set(epoch_order(single, 0))) == 8


def test_train_statistics_in_chunks_match_numpy(pool):
    images = pool[0][:1000]
    mean, std = loader.train_statistics(images, chunk=77)
    reference = images.astype(np.float64) / 255
    assert mean == pytest.approx(reference.mean(), rel=1e-9)
    assert std == pytest.approx(reference.std(), rel=1e-9)


# ---------------------------------------------------------------- command line


def test_command_line_makes_pool_and_datasets(tmp_path, capsys):
    from scalelearn.cli import main

    pool_path = tmp_path / "mnist" / "pool.npz"
    main(["data", "pool", "--source", "embedded", "--out", str(pool_path)])
    pool_manifest = json.loads(pool_path.with_suffix(".json").read_text())
    assert pool_manifest["source"] == "embedded" and pool_manifest["n_images"] == 5000

    out = tmp_path / "scale_distribution" / "b2" / "seed0.npz"
    main(
        [
            "data",
            "scale-distribution",
            "--pool",
            str(pool_path),
            "--width",
            "2",
            "--canvas",
            "56",
            "--seed",
            "0",
            "--split",
            "60",
            "20",
            "100",
            "--out",
            str(out),
        ]
    )
    manifest = json.loads(out.with_suffix(".json").read_text())
    assert manifest["mnist_source"] == "embedded"
    assert manifest["pool"]["sha256"] == pool_manifest["sha256"]
    assert manifest["split"] == {"train": 60, "val": 20, "test": 100}
    assert datasets.load_dataset(out)["train_images"].shape == (60, 56, 56)

    sesn = tmp_path / "mnist_scale" / "sesn" / "seed1.npz"
    main(
        [
            "data",
            "mnist-scale",
            "--pool",
            str(pool_path),
            "--seed",
            "1",
            "--split",
            "50",
            "10",
            "40",
            "--scale-range",
            "0.5",
            "0.9",
            "--out",
            str(sesn),
        ]
    )
    assert json.loads(sesn.with_suffix(".json").read_text())["parameters"]["scale_range"] == [
        0.5,
        0.9,
    ]
    assert "wrote" in capsys.readouterr().out

    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "data",
                "pool",
                "--source",
                "idx_dir",
                "--idx-dir",
                str(tmp_path / "no"),
                "--out",
                str(tmp_path / "p.npz"),
            ]
        )
    assert exit_info.value.code == 1
    assert "idx_dir" in capsys.readouterr().err


def test_a_killed_writers_temporary_is_removed_by_the_next_write(tmp_path):
    """SIGKILL runs no cleanup: a dataset job killed mid-write leaves `.NAME.XXXX.tmp` beside
    its target (the CI preset's kill hit one). The next write of that file removes it, and only
    temporaries of that file."""
    from scalelearn import atomic

    target = tmp_path / "seed0.npz"
    stale = tmp_path / ".seed0.npz.y_lq426h.tmp"
    other = tmp_path / ".seed1.npz.abcd1234.tmp"
    stale.write_bytes(b"half")
    other.write_bytes(b"half")
    atomic.write_text(target, "done")
    assert target.read_text() == "done"
    assert not stale.exists() and other.exists()
