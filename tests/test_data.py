"""Image reading, HR/LR pairing, bicubic LR, patch datasets, validation split and demo data."""

from __future__ import annotations

import multiprocessing
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader

from zerosr.data import (
    PairedImageDataset,
    PairedPatchDataset,
    bicubic_downscale,
    ensure_demo_dataset,
    pair_images,
    read_image,
    seed_worker,
    split_validation,
    write_image,
)
from zerosr.data.demo import generate_image
from zerosr.data.io import quantize, read_image_raw
from zerosr.errors import UserError


def smooth_image(seed: int, height: int, width: int) -> np.ndarray:
    """A float RGB image with both smooth and sharp content."""
    rng = np.random.default_rng(seed)
    coarse = torch.from_numpy(rng.random((1, 3, height // 8 + 1, width // 8 + 1)).astype(np.float32))
    image = F.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)[0]
    image = image.permute(1, 2, 0).numpy().copy()
    image[height // 3 : height // 2, :, 0] = 1.0  # a sharp band
    return image


# --- reading -------------------------------------------------------------------------------------


def test_read_png_8_and_16_bit(tmp_path):
    rgb8 = quantize(smooth_image(0, 12, 10))
    write_image(tmp_path / "a.png", rgb8)
    assert np.array_equal(quantize(read_image(tmp_path / "a.png")), rgb8)

    rgb16 = np.arange(12 * 10 * 3, dtype=np.uint16).reshape(12, 10, 3) * 181  # not multiples of 257
    write_image(tmp_path / "b.png", rgb16)
    image = read_image(tmp_path / "b.png")
    assert image.dtype == np.float32 and image.shape == (12, 10, 3)
    np.testing.assert_allclose(image, rgb16 / 65535.0, atol=1e-7)  # 16 bits kept, not truncated to 8


def test_read_converts_gray_rgba_palette_and_cmyk_to_rgb(tmp_path):
    rgb = quantize(smooth_image(1, 16, 16))
    Image.fromarray(rgb[:, :, 0]).save(tmp_path / "gray.png")
    Image.fromarray(np.dstack([rgb, np.full((16, 16), 7, np.uint8)])).save(tmp_path / "rgba.png")
    Image.fromarray(rgb).convert("P").save(tmp_path / "palette.png")
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=98)
    gray16 = (np.arange(16 * 16, dtype=np.uint16).reshape(16, 16) * 200)
    Image.fromarray(gray16).save(tmp_path / "gray16.png")

    gray = read_image(tmp_path / "gray.png")
    assert gray.shape == (16, 16, 3)
    assert np.array_equal(quantize(gray[:, :, 1]), rgb[:, :, 0]) and np.array_equal(gray[:, :, 0], gray[:, :, 2])
    assert np.array_equal(quantize(read_image(tmp_path / "rgba.png")), rgb)  # alpha dropped
    assert read_image(tmp_path / "palette.png").shape == (16, 16, 3)
    cmyk = read_image(tmp_path / "cmyk.jpg")
    assert cmyk.shape == (16, 16, 3)
    assert np.abs(cmyk - rgb / 255.0).mean() < 0.03
    np.testing.assert_allclose(read_image(tmp_path / "gray16.png")[:, :, 2], gray16 / 65535.0, atol=1e-7)


@pytest.mark.parametrize("extension", [".webp", ".bmp", ".tif", ".jpg"])
def test_read_other_formats(tmp_path, extension):
    rgb = quantize(smooth_image(2, 16, 24))
    Image.fromarray(rgb).save(tmp_path / f"x{extension}", **({"lossless": True} if extension == ".webp" else {}))
    image = read_image(tmp_path / f"x{extension}")
    assert image.shape == (16, 24, 3)
    tolerance = 0.05 if extension == ".jpg" else 0.0
    assert np.abs(image - rgb / 255.0).mean() <= tolerance + 1e-7


def test_exif_orientation_is_ignored_so_pairs_stay_pixel_aligned(tmp_path):
    rgb = quantize(smooth_image(8, 16, 24))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    Image.fromarray(rgb).save(tmp_path / "rotated.jpg", quality=98, exif=exif)
    assert read_image(tmp_path / "rotated.jpg").shape == (16, 24, 3)


def test_read_16_bit_tiff(tmp_path):
    rgb16 = (smooth_image(3, 8, 8) * 65535).astype(np.uint16)
    write_image(tmp_path / "x.tif", rgb16)
    assert read_image_raw(tmp_path / "x.tif").dtype == np.uint16
    assert np.array_equal(read_image_raw(tmp_path / "x.tif"), rgb16)


def test_corrupt_truncated_empty_and_missing_files_are_user_errors(tmp_path):
    write_image(tmp_path / "good.png", quantize(smooth_image(4, 32, 32)))
    data = (tmp_path / "good.png").read_bytes()
    (tmp_path / "truncated.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "garbage.jpg").write_bytes(b"not an image at all")
    (tmp_path / "empty.png").write_bytes(b"")
    for name in ("truncated.png", "garbage.jpg", "empty.png", "missing.png"):
        with pytest.raises(UserError) as err:
            read_image(tmp_path / name)
        message = str(err.value)
        assert name in message and "\n" not in message


# --- pairing -------------------------------------------------------------------------------------


def make_files(folder, names, size=(8, 8)):
    for name in names:
        write_image(folder / name, np.zeros((*size, 3), np.uint8))


def test_pair_by_stem_extension_and_x_scale_names(tmp_path):
    make_files(tmp_path / "hr", ["0001.png", "0002.png", "sub/0003.png", "cat.png"])
    make_files(tmp_path / "lr", ["0001x2.png", "0002x2.jpg", "sub/0003.png", "cat.webp"])
    (tmp_path / "hr" / "notes.txt").write_text("ignored")
    pairs = pair_images(tmp_path / "hr", tmp_path / "lr", scale=2)
    names = [(gt.relative_to(tmp_path).as_posix(), lq.relative_to(tmp_path).as_posix()) for gt, lq in pairs]
    assert names == [
        ("hr/0001.png", "lr/0001x2.png"),
        ("hr/0002.png", "lr/0002x2.jpg"),
        ("hr/cat.png", "lr/cat.webp"),
        ("hr/sub/0003.png", "lr/sub/0003.png"),
    ]


def test_pairing_errors_name_the_folder_and_files(tmp_path):
    make_files(tmp_path / "hr", ["a.png", "b.png"])
    make_files(tmp_path / "lr", ["a.png"])
    with pytest.raises(UserError, match=r"1 of 2 HR images .*'b.png'"):
        pair_images(tmp_path / "hr", tmp_path / "lr", 2)

    make_files(tmp_path / "lr", ["b.png", "stray.png"])
    with pytest.raises(UserError, match=r"LR images .* no HR .*'stray.png'"):
        pair_images(tmp_path / "hr", tmp_path / "lr", 2)

    with pytest.raises(UserError, match=r"data.lq_path: '.*nowhere' does not exist"):
        pair_images(tmp_path / "hr", tmp_path / "nowhere", 2)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"val_gt: folder '.*empty' has no images"):
        pair_images(tmp_path / "empty", tmp_path / "lr", 2, gt_key="val_gt")

    make_files(tmp_path / "lr2", ["a.png", "ax2.png", "b.png"])
    with pytest.raises(UserError, match="keep one of them"):
        pair_images(tmp_path / "hr", tmp_path / "lr2", 2)


# --- bicubic -------------------------------------------------------------------------------------


def test_bicubic_downscale_shape_constant_and_interior_matches_torch_antialias():
    hr = smooth_image(5, 41, 30)  # odd height: cropped to 40 first
    lr = bicubic_downscale(hr, 2)
    assert lr.shape == (20, 15, 3) and lr.dtype == np.float32
    assert np.allclose(bicubic_downscale(np.full((12, 12, 3), 0.3, np.float32), 3), 0.3, atol=1e-6)

    # torch uses the same antialiased cubic (a = -0.5) but renormalises instead of mirroring at the
    # borders, so the two agree away from the edges.
    for scale in (2, 3, 4):
        hr = smooth_image(scale, 48, 60)
        reference = F.interpolate(torch.from_numpy(hr).permute(2, 0, 1)[None], scale_factor=1 / scale,
                                  mode="bicubic", antialias=True, align_corners=False)[0].permute(1, 2, 0).numpy()
        mine = bicubic_downscale(hr, scale)
        np.testing.assert_allclose(mine[2:-2, 2:-2], np.clip(reference, 0, 1)[2:-2, 2:-2], atol=1e-5)


# --- datasets ------------------------------------------------------------------------------------


def write_pair(tmp_path, name, height, width, scale, lr_file=True):
    hr = quantize(smooth_image(sum(map(ord, name)), height, width))
    write_image(tmp_path / "hr" / f"{name}.png", hr)
    if lr_file:
        write_image(tmp_path / "lr" / f"{name}.png", quantize(bicubic_downscale(hr / 255.0, scale)))
    return tmp_path / "hr" / f"{name}.png", (tmp_path / "lr" / f"{name}.png") if lr_file else None


def assert_aligned(sample, scale):
    """The LR patch is the bicubic downscale of the HR patch (up to 8-bit rounding), away from its edges."""
    gt = sample["gt"].permute(1, 2, 0).numpy()
    lq = sample["lq"].permute(1, 2, 0).numpy()
    assert gt.shape[:2] == (lq.shape[0] * scale, lq.shape[1] * scale)
    recomputed = bicubic_downscale(gt, scale)
    np.testing.assert_allclose(recomputed[3:-3, 3:-3], lq[3:-3, 3:-3], atol=1.5 / 255)


@pytest.mark.parametrize("lr_file", [True, False])
def test_patches_stay_aligned_under_crops_flips_and_rotations(tmp_path, lr_file):
    pairs = [write_pair(tmp_path, "p0", 64, 80, 2, lr_file), write_pair(tmp_path, "p1", 81, 64, 2, lr_file)]
    dataset = PairedPatchDataset(pairs if lr_file else [gt for gt, _ in pairs], scale=2, lq_size=16, length=40)
    assert len(dataset) == 40
    torch.manual_seed(0)
    for i in range(40):
        sample = dataset[i]
        assert sample["lq"].shape == (3, 16, 16) and sample["gt"].shape == (3, 32, 32)
        assert sample["lq"].dtype == torch.float32 and sample["index"] == i % 2
        assert_aligned(sample, 2)


def test_augmentation_produces_all_eight_orientations(tmp_path):
    gt, lq = write_pair(tmp_path, "square", 32, 32, 2)
    dataset = PairedPatchDataset([(gt, lq)], scale=2, lq_size=16, cache=False)
    torch.manual_seed(1)
    seen = {dataset[0]["lq"].numpy().tobytes() for _ in range(80)}
    assert len(seen) == 8
    plain = PairedPatchDataset([(gt, lq)], scale=2, lq_size=16, augment=False)
    assert torch.equal(plain[0]["lq"], plain[0]["lq"])


def test_patches_reproducible_with_workers_and_cache_does_not_change_them(tmp_path):
    pairs = [write_pair(tmp_path, f"r{i}", 40, 40, 2) for i in range(4)]

    def batches(num_workers, cache, seed=123):
        dataset = PairedPatchDataset(pairs, scale=2, lq_size=8, cache=cache, length=16)
        loader = DataLoader(dataset, batch_size=4, num_workers=num_workers, worker_init_fn=seed_worker)
        torch.manual_seed(seed)
        return torch.cat([batch["lq"] for batch in loader])

    with_workers = batches(2, True)
    assert torch.equal(with_workers, batches(2, True))
    assert torch.equal(with_workers, batches(2, False))
    assert not torch.equal(with_workers, batches(2, True, seed=124))
    in_process = batches(0, True)
    assert torch.equal(in_process, batches(0, False))
    assert not torch.equal(in_process, batches(0, True, seed=124))


def test_cache_respects_its_budget(tmp_path):
    pairs = [write_pair(tmp_path, "c", 40, 40, 2)]
    assert PairedPatchDataset(pairs, 2, 8, cache=True).images.cached
    assert not PairedPatchDataset(pairs, 2, 8, cache=True, cache_max_bytes=100).images.cached
    assert not PairedPatchDataset(pairs, 2, 8, cache=False).images.cached


def test_size_mismatch_mod_crop_and_small_images(tmp_path):
    write_image(tmp_path / "hr" / "odd.png", quantize(smooth_image(6, 33, 35)))  # LR 16x17 -> HR cropped to 32x34
    write_image(tmp_path / "lr" / "odd.png", quantize(smooth_image(6, 16, 17)))
    sample = PairedImageDataset(pair_images(tmp_path / "hr", tmp_path / "lr", 2), scale=2)[0]
    assert sample["gt"].shape == (3, 32, 34) and sample["lq"].shape == (3, 16, 17) and sample["name"] == "odd"

    with pytest.raises(UserError, match="at scale 3 the HR must be 51x48"):
        PairedImageDataset(pair_images(tmp_path / "hr", tmp_path / "lr", 3), scale=3)
    with pytest.raises(UserError, match=r"train.lq_size=20 is larger than .*odd.png' \(17x16"):
        PairedPatchDataset(pair_images(tmp_path / "hr", tmp_path / "lr", 2), scale=2, lq_size=20)


def test_16_bit_pairs_stay_16_bit(tmp_path):
    hr16 = (smooth_image(7, 32, 32) * 65535).astype(np.uint16)
    write_image(tmp_path / "hr16.png", hr16)
    dataset = PairedImageDataset([tmp_path / "hr16.png"], scale=2, cache=True)
    gt_cached, lq_cached = dataset.images[0]
    assert gt_cached.dtype == np.uint16 and lq_cached.dtype == np.uint16
    np.testing.assert_allclose(dataset[0]["gt"].permute(1, 2, 0).numpy(), hr16 / 65535.0, atol=1e-7)


def test_validation_split_is_deterministic_and_disjoint():
    pairs = [(f"hr{i}", f"lr{i}") for i in range(10)]
    train, val = split_validation(pairs, 3, seed=5)
    assert len(train) == 7 and len(val) == 3 and not set(train) & set(val)
    assert (train, val) == split_validation(pairs, 3, seed=5)
    assert split_validation(pairs, 0, seed=5) == (pairs, [])
    with pytest.raises(UserError, match="too few"):
        split_validation(pairs[:3], 3, seed=0)


# --- demo dataset --------------------------------------------------------------------------------


def test_demo_images_are_deterministic_and_varied():
    first = generate_image(3, size=64)
    assert first.shape == (64, 64, 3) and first.dtype == np.float32
    assert np.array_equal(first, generate_image(3, size=64))
    assert not np.array_equal(first, generate_image(4, size=64))
    assert first.std() > 0.05


def test_demo_dataset_is_generated_once_and_pairs(tmp_path):
    root = tmp_path / "demo"
    paths = ensure_demo_dataset(root, n_train=3, n_val=2, size=32)
    assert len(list(paths["train_gt"].glob("*.png"))) == 3 and len(list(paths["val_lq"].glob("*.png"))) == 2
    pairs = pair_images(paths["train_gt"], paths["train_lq"], 2)
    assert read_image(pairs[0][1]).shape == (16, 16, 3)
    stamp = os.stat(pairs[0][0]).st_mtime_ns
    assert ensure_demo_dataset(root, n_train=3, n_val=2, size=32) == paths
    assert os.stat(pairs[0][0]).st_mtime_ns == stamp
    with pytest.raises(UserError, match="delete it to regenerate"):
        ensure_demo_dataset(root, n_train=4, n_val=2, size=32)
    (tmp_path / "other").mkdir()
    with pytest.raises(UserError, match="not a zerosr demo dataset"):
        ensure_demo_dataset(tmp_path / "other")


def _generate(root):
    ensure_demo_dataset(root, n_train=6, n_val=2, size=32)


def test_demo_dataset_survives_two_processes_at_once(tmp_path):
    root = tmp_path / "demo"
    context = multiprocessing.get_context("fork" if os.name == "posix" else "spawn")
    workers = [context.Process(target=_generate, args=(root,)) for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    assert len(list((root / "train" / "hr").glob("*.png"))) == 6
    assert [p.name for p in tmp_path.iterdir()] == ["demo"]  # no staging folder left behind


@pytest.mark.parametrize("option", ["demo", "paired", "realistic"])
def test_every_data_option_gives_the_training_set_the_engine_relies_on(option, tmp_path, monkeypatch):
    """The batch search, the stream and the loop use one interface, whatever data option built the set."""
    from zerosr.config.compose import compose_config
    from zerosr.data import PatchDataset
    from zerosr.engine.data import BatchStream, build_data

    monkeypatch.setenv("ZEROSR_CACHE_DIR", str(tmp_path / "cache"))
    folder = tmp_path / "hr"
    folder.mkdir()
    sizes = {f"{i}.png": (h, w) for i, (h, w) in enumerate([(80, 96), (64, 72), (96, 96)])}
    for name, (h, w) in sizes.items():
        write_image(folder / name, smooth_image(len(name), h, w))
    overrides = [f"data={option}", "train.lq_size=16", "scale=2"]
    if option != "demo":
        overrides += [f"data.gt_path={folder}", "data.n_val=1"]
    train = build_data(compose_config(overrides)).train
    assert isinstance(train, PatchDataset)
    smallest = min(min(h, w) for h, w in train.images.lq_sizes)
    assert train.largest_lq_size == smallest
    if option != "demo":  # the smallest held-in image's LR side, from the files written above
        assert train.largest_lq_size == min(min(sizes[gt.name]) // 2 for gt, _ in train.images.pairs)
    train.lq_size = 24  # what the batch search's apply_batch does
    batch = BatchStream(train, 2, seed=0).next_batch()
    assert batch["lq"].shape == (2, 3, 24, 24) and batch["gt"].shape == (2, 3, 48, 48)
