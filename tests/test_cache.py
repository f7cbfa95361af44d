"""The persistent preprocessed cache: equal to the uncached chain, never stale, safe under kills and concurrency."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.data import CacheDataset, Dataset

from mammoclip_monai.data import geometry
from mammoclip_monai.data import preprocess as preprocess_module
from mammoclip_monai.data.cache import (
    CachedPreprocessd,
    fill_cache,
    mammogram_dataset,
    read_entry,
)
from mammoclip_monai.data.reader import MammogramReadError
from mammoclip_monai.utils import resources

REPO = Path(__file__).resolve().parents[1]
SIZE = (96, 64)
QUANTUM = 0.5 / 65535 + 1e-7


def dicoms(root: Path, n: int | None = None) -> list[str]:
    files = sorted(str(p) for p in (root / "images").rglob("*.dicom"))
    return files[:n] if n else files


def entries(cache_root: Path) -> dict[str, tuple[np.ndarray, dict]]:
    """Every entry of every chain key under ``cache_root``: name -> (pixels, record)."""
    out = {}
    for path in sorted(cache_root.glob("*/entries/*/*.mce")):
        out[f"{path.parents[2].name}/{path.name}"] = read_entry(path)
    return out


def temporaries(root: Path) -> list[Path]:
    return [p for p in root.rglob(".*") if ".tmp-" in p.name]


def test_cached_item_equals_the_uncached_item_and_maps_back_to_file_pixels(synthetic_dataset, tmp_path):
    plain = CachedPreprocessd(keys=["image", "image2"], spatial_size=SIZE, box_keys=["boxes"])
    cached = CachedPreprocessd(keys=["image", "image2"], spatial_size=SIZE, box_keys=["boxes"], cache_dir=tmp_path)
    files = dicoms(synthetic_dataset, 8)
    for first, second in zip(files[0::2], files[1::2]):
        crop = geometry.geometry_records(plain({"image": first, "image2": second})["image"].applied_operations)[0]
        x0, y0 = crop["x0"] + 10, crop["y0"] + 10  # a finding inside the breast (a crop clips the rest)
        box = np.array([[x0, y0, min(crop["x1"] - 10, x0 + 90), min(crop["y1"] - 10, y0 + 120)]], dtype=float)
        item = {"image": first, "image2": second, "boxes": box, "laterality": "L"}
        expected = plain(item)
        written = cached(item)  # computed and stored
        served = cached(item)  # read back
        for key in ("image", "image2"):
            a, b = expected[key], served[key]
            assert float((a - b).abs().max()) <= QUANTUM and float((written[key] - b).abs().max()) <= QUANTUM
            assert geometry.geometry_records(a.applied_operations) == geometry.geometry_records(b.applied_operations)
            assert torch.allclose(a.affine, b.affine)
            assert {k: v for k, v in a.meta.items() if k != "affine"} == \
                   {k: v for k, v in b.meta.items() if k != "affine"}
        np.testing.assert_allclose(served["boxes"], expected["boxes"], atol=1e-6)
        # boxes and heatmaps at network resolution map back to the file's pixels
        back = geometry.boxes_to_original(served["boxes"], served["image"])
        np.testing.assert_allclose(back, box, atol=1.0)
        heatmap = torch.zeros(1, *SIZE)
        heatmap[:, 20:40, 10:30] = 1.0
        np.testing.assert_allclose(geometry.image_to_original(heatmap, served["image"]).numpy(),
                                   geometry.image_to_original(heatmap, expected["image"]).numpy(), atol=1e-6)
        # MONAI's own inverse works on a served image (the object-id check is skipped for it)
        restored = cached.chain.inverse({"image": served["image"].clone()})["image"]
        assert tuple(restored.shape[-2:]) == tuple(served["image"].meta["spatial_shape"])
    assert cached.cache.count() == len(files)


def test_a_parameter_change_never_serves_a_stale_image(synthetic_dataset, tmp_path, monkeypatch):
    file = dicoms(synthetic_dataset, 1)[0]
    small = CachedPreprocessd(spatial_size=SIZE, cache_dir=tmp_path)
    large = CachedPreprocessd(spatial_size=(128, 80), cache_dir=tmp_path)
    other_voi = CachedPreprocessd(spatial_size=SIZE, cache_dir=tmp_path, voi="minmax")
    assert len({small.cache_key, large.cache_key, other_voi.cache_key}) == 3
    assert tuple(small({"image": file})["image"].shape) == (1, *SIZE)
    assert tuple(large({"image": file})["image"].shape) == (1, 128, 80)
    # a new chain version (the chain's numerics changed) is a new folder: the old entries are not read
    monkeypatch.setattr(preprocess_module, "CHAIN_VERSION", preprocess_module.CHAIN_VERSION + 1)
    newer = CachedPreprocessd(spatial_size=SIZE, cache_dir=tmp_path)
    assert newer.cache_key != small.cache_key
    newer({"image": file})
    assert json.loads((newer.cache.directory / "params.json").read_text())["chain_version"] == \
           preprocess_module.CHAIN_VERSION
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([small.cache_key, large.cache_key, newer.cache_key])


def test_a_changed_file_gets_a_new_entry(synthetic_dataset, tmp_path):
    first, second = dicoms(synthetic_dataset, 2)
    source = tmp_path / "scan.dcm"
    shutil.copyfile(first, source)
    chain = CachedPreprocessd(spatial_size=SIZE, cache_dir=tmp_path / "cache")
    before = chain({"image": str(source)})["image"]
    shutil.copyfile(second, source)  # same path, other content (and size / mtime)
    os.utime(source, ns=(time.time_ns(), time.time_ns() + 10**9))
    after = chain({"image": str(source)})["image"]
    truth = CachedPreprocessd(spatial_size=SIZE)({"image": second})["image"]
    assert float((after - truth).abs().max()) <= QUANTUM and float((after - before).abs().max()) > 0.01
    assert after.meta["image_hash"] != before.meta["image_hash"] and chain.cache.count() == 2


def test_an_unreadable_entry_is_written_again(synthetic_dataset, tmp_path):
    file = dicoms(synthetic_dataset, 1)[0]
    chain = CachedPreprocessd(spatial_size=SIZE, cache_dir=tmp_path)
    expected = chain({"image": file})["image"]
    entry = next(tmp_path.glob("*/entries/*/*.mce"))
    entry.write_bytes(entry.read_bytes()[:100])  # a torn write from outside (e.g. a disk error)
    again = chain({"image": file})["image"]
    assert float((again - expected).abs().max()) <= QUANTUM
    assert read_entry(entry)[0].shape == (1, *SIZE)


def test_bad_files_are_listed_and_the_rest_is_cached(synthetic_dataset, tmp_path):
    files = dicoms(synthetic_dataset, 3)
    broken = tmp_path / "broken.dcm"
    broken.write_bytes(Path(files[0]).read_bytes()[:2000])
    chain = CachedPreprocessd(spatial_size=SIZE, cache_dir=tmp_path / "cache")
    items = [{"image": f} for f in files] + [{"image": str(broken)}, {"image": str(tmp_path / "gone.dcm")}]
    results = fill_cache(chain, items, workers=0, progress=False)
    failed = {Path(r["file"]).name: r["error"] for r in results if "error" in r}
    assert set(failed) == {"broken.dcm", "gone.dcm"} and "applying transform" not in failed["broken.dcm"]
    assert failed["gone.dcm"] == "file not found"
    assert chain.cache.count() == 3
    assert not any(r.get("new") for r in fill_cache(chain, items[:3], workers=0, progress=False))
    with pytest.raises(MammogramReadError, match="broken.dcm"):
        mammogram_dataset(items, chain, progress=False)


def test_header_canonicalisation_keys_entries_by_the_datalist_laterality(synthetic_dataset, tmp_path):
    file = dicoms(synthetic_dataset, 1)[0]
    chain = CachedPreprocessd(spatial_size=SIZE, cache_dir=tmp_path, canonical_method="header")
    left = chain({"image": file, "laterality": "L"})["image"]
    right = chain({"image": file, "laterality": "R"})["image"]
    names = sorted(p.name.split("-")[1] for p in tmp_path.glob("*/entries/*/*.mce"))
    assert names == ["latL.mce", "latR.mce"]
    assert chain({"image": file, "laterality": "R"})["image"].applied_operations[1]["extra_info"] == \
           right.applied_operations[1]["extra_info"]
    assert left.shape == right.shape


def test_the_dataset_streams_from_disk_or_holds_in_ram_only_what_fits(synthetic_dataset, tmp_path, monkeypatch,
                                                                       caplog):
    items = [{"image": f} for f in dicoms(synthetic_dataset, 4)]
    on_disk = mammogram_dataset(items, CachedPreprocessd(spatial_size=SIZE, cache_dir=tmp_path), workers=0,
                                progress=False)
    assert type(on_disk) is Dataset and len(list(tmp_path.glob("*/entries/*/*.mce"))) == 4
    assert isinstance(mammogram_dataset(items, CachedPreprocessd(spatial_size=SIZE), workers=1, progress=False),
                      CacheDataset)
    monkeypatch.setattr(resources, "memory_available", lambda: 1000)  # nothing fits
    with caplog.at_level("WARNING"):
        streamed = mammogram_dataset(items, CachedPreprocessd(spatial_size=SIZE), workers=1, progress=False)
    assert type(streamed) is Dataset and "not caching it" in caplog.text
    # under DDP each rank fills its own share first
    shared = tmp_path / "ddp"
    mammogram_dataset(items, CachedPreprocessd(spatial_size=SIZE, cache_dir=shared), workers=0, progress=False,
                      rank=1, world_size=2)
    assert len(list(shared.glob("*/entries/*/*.mce"))) == 2


def test_the_cli_and_the_bundle_use_the_same_entries():
    parser = ConfigParser()
    parser.read_config(str(REPO / "bundle" / "configs" / "train.json"))
    parser["cache_dir"] = "/tmp/unused-cache"
    parser["dataset_dir"] = "/tmp/unused"
    bundle_chain = parser.get_parsed_content("deterministic_transforms")[0]
    cli_default = CachedPreprocessd(keys="image", spatial_size=(448, 288), cache_dir="/tmp/unused-cache")
    assert bundle_chain.cache_key == cli_default.cache_key


def _fill_command(cache_dir: Path, files: list[str], workers: int = 0) -> list[str]:
    code = ("import sys, json; from mammoclip_monai.data.cache import CachedPreprocessd, fill_cache; "
            f"c = CachedPreprocessd(spatial_size={SIZE!r}, cache_dir=sys.argv[1]); "
            f"r = fill_cache(c, [{{'image': f}} for f in sys.argv[2:]], workers={workers}, progress=False); "
            "sys.exit(any('error' in x for x in r))")
    return [sys.executable, "-c", code, str(cache_dir), *files]


@pytest.mark.slow
def test_two_concurrent_writers_corrupt_nothing(synthetic_dataset, tmp_path):
    files = dicoms(synthetic_dataset, 16)
    reference = tmp_path / "reference"
    assert subprocess.run(_fill_command(reference, files), check=False, timeout=300).returncode == 0
    shared = tmp_path / "shared"
    writers = [subprocess.Popen(_fill_command(shared, files if i == 0 else files[::-1])) for i in range(2)]
    assert [w.wait(timeout=300) for w in writers] == [0, 0]
    expected, got = entries(reference), entries(shared)
    assert got.keys() == expected.keys() and len(got) == len(files)
    for name, (pixels, record) in got.items():
        np.testing.assert_array_equal(pixels, expected[name][0])
        assert record == expected[name][1]
    assert not temporaries(shared)


@pytest.mark.slow
def test_kill_9_during_preprocess_then_a_rerun_gives_the_uninterrupted_cache(synthetic_dataset, tmp_path):
    images = synthetic_dataset / "images"
    command = [sys.executable, "-m", "mammoclip_monai.cli", "-q", "preprocess", str(images), "--height",
               str(SIZE[0]), "--width", str(SIZE[1]), "--workers", "2", "--out"]
    whole = tmp_path / "whole"
    assert subprocess.run([*command, str(whole)], check=False, capture_output=True, timeout=600).returncode == 0
    killed = tmp_path / "killed"
    process = subprocess.Popen([*command, str(killed)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    deadline = time.monotonic() + 300
    while len(list(killed.glob("*/entries/*/*.mce"))) < 5 and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)  # the command and its workers, mid-write
    process.wait(timeout=60)
    partial = len(list(killed.glob("*/entries/*/*.mce")))
    assert 5 <= partial < len(entries(whole)), "the kill came too late to test anything"
    for path in killed.glob("*/entries/*/*.mce"):  # every entry a rerun would keep is whole
        assert read_entry(path)[0].shape == (1, *SIZE)
    rerun = subprocess.run([*command, str(killed)], check=False, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    lines = [json.loads(x) for x in rerun.stdout.splitlines()]
    assert sum(not x["new"] for x in lines) >= partial
    expected, got = entries(whole), entries(killed)
    assert got.keys() == expected.keys()
    for name, (pixels, record) in got.items():
        np.testing.assert_array_equal(pixels, expected[name][0])
        assert record == expected[name][1]
    assert not [p for p in temporaries(killed) if p.parent.name != "sources"]


def test_the_source_index_is_trusted_only_while_size_and_mtime_match(synthetic_dataset, tmp_path):
    first = dicoms(synthetic_dataset, 1)[0]
    source = tmp_path / "scan.dcm"
    shutil.copyfile(first, source)
    chain = CachedPreprocessd(spatial_size=SIZE, cache_dir=tmp_path / "cache")
    digest = chain({"image": str(source)})["image"].meta["image_hash"]
    assert chain.cache.remembered_hash(source)[0] == digest  # remembered by the read that computed it
    remembered = next((tmp_path / "cache").glob("*/sources/*/*.json"))
    record = json.loads(remembered.read_text())
    record["hash"] = "0" * 16  # what the index says is used only while the file looks unchanged
    remembered.write_text(json.dumps(record))
    assert chain.cache.remembered_hash(source)[0] == "0" * 16
    os.utime(source, ns=(time.time_ns(), record["mtime_ns"] + 1))
    assert chain.cache.remembered_hash(source)[0] is None
    assert chain({"image": str(source)})["image"].meta["image_hash"] == digest  # read again, hashed by the reader
    assert chain.cache.remembered_hash(source)[0] == digest
