"""The fused PreprocessMammogramd against the four-transform chain it replaces, on synthetic DICOMs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose
from monai.utils.enums import TraceKeys

from mammoclip_monai.data import geometry
from mammoclip_monai.data.preprocess import CHAIN_VERSION, PreprocessMammogramd
from mammoclip_monai.data.reader import MammogramReadError
from mammoclip_monai.data.synthetic.dicom_writer import (
    DicomUIDs,
    ImageEncoding,
    PatientIdentity,
    write_mammogram,
)
from mammoclip_monai.data.synthetic.phantom import render_image
from mammoclip_monai.data.transforms import (
    CanonicalLateralityd,
    CropBreastd,
    LoadMammogramd,
    ResizeKeepAspectd,
)

SIZE = (256, 160)
IDENTITY = PatientIdentity("Doe^Test^1", "MRN-1", "19600101", 60, "ACC1", "20200101", "120000")
# MONOCHROME1, VOI LUT, window (linear and sigmoid), rescale, 8- and 16-bit, RLE, both breasts
VARIANTS = {
    "plain16_L": ("L", ImageEncoding(bits_stored=16), {}),
    "mono1_R": ("R", ImageEncoding(bits_stored=12, photometric="MONOCHROME1"), {}),
    "window_R": ("R", ImageEncoding(bits_stored=14, voi="window", window=(0.02, 0.8)), {}),
    "lut_mono1_L": ("L", ImageEncoding(bits_stored=12, photometric="MONOCHROME1", voi="lut", lut_gamma=0.8), {}),
    "rle_window_L": ("L", ImageEncoding(bits_stored=16, transfer="rle", voi="window", window=(0.0, 0.9)), {}),
    "sigmoid_R": ("R", ImageEncoding(bits_stored=12, voi="window", window=(0.05, 0.7)), {"VOILUTFunction": "SIGMOID"}),
    "rescale_L": ("L", ImageEncoding(bits_stored=12), {"RescaleSlope": "0.5", "RescaleIntercept": "-100"}),
    "eight_bit_R": ("R", ImageEncoding(bits_stored=8), {"eight_bit": True}),
}


def _write(path: Path, laterality: str, encoding: ImageEncoding, extra: dict, seed: int) -> np.ndarray:
    rendered = render_image(seed, laterality, "MLO" if seed % 2 else "CC", "C", image_size=(300, 240))
    uids = DicomUIDs(f"1.2.3.{seed}", f"1.2.3.{seed}.1", f"1.2.3.{seed}.1.1")
    write_mammogram(path, rendered.image, laterality=laterality, view="CC", spacing_mm=0.1, identity=IDENTITY,
                    uids=uids, encoding=encoding)
    if extra:
        ds = pydicom.dcmread(path)
        if extra.pop("eight_bit", False):
            pixels = (ds.pixel_array >> 0).astype(np.uint8)
            ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
            ds.PixelData = pixels.tobytes()
            ds["PixelData"].VR = "OB"
        for keyword, value in extra.items():
            setattr(ds, keyword, value)
        ds.save_as(path)
    return np.asarray(rendered.breast_box, dtype=np.float32)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, tuple[Path, np.ndarray]]:
    root = tmp_path_factory.mktemp("chain")
    out = {}
    for seed, (name, (laterality, encoding, extra)) in enumerate(VARIANTS.items()):
        path = root / f"{name}.dcm"
        box = _write(path, laterality, encoding, dict(extra), seed)
        out[name] = (path, box)
    return out


def _four(**kw) -> Compose:
    boxes = ("boxes",)
    return Compose([LoadMammogramd(keys="image"), CropBreastd(keys="image", box_keys=boxes),
                    CanonicalLateralityd(keys="image", box_keys=boxes, **kw),
                    ResizeKeepAspectd(keys="image", spatial_size=SIZE, box_keys=boxes)])


def _records(image: MetaTensor) -> list[dict]:
    return geometry.geometry_records(image.applied_operations)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_fused_chain_matches_the_four_transforms(files, name):
    path, box = files[name]
    lesion = np.stack([box, box * 0.5 + 20])  # any boxes in file pixels
    ref = _four()({"image": str(path), "boxes": lesion})
    out = PreprocessMammogramd(keys="image", spatial_size=SIZE, box_keys="boxes")({"image": str(path),
                                                                                     "boxes": lesion})
    a, b = ref["image"], out["image"]
    assert isinstance(b, MetaTensor) and b.dtype == torch.float32 and tuple(b.shape) == (1, *SIZE)
    assert _records(b) == _records(a)
    assert [e[TraceKeys.ORIG_SIZE] for e in b.applied_operations] == \
        [e[TraceKeys.ORIG_SIZE] for e in a.applied_operations]
    assert sorted(b.applied_operations[0]) == sorted(a.applied_operations[0])
    # records identical: only float rounding of the mirrored resampling remains
    assert float((a.as_tensor() - b.as_tensor()).abs().max()) < 1e-5
    assert float(b.min()) >= 0.0 and float(b.max()) <= 1.0
    assert torch.allclose(a.affine, b.affine, atol=1e-9)
    assert set(a.meta) == set(b.meta)
    for key in ("image_hash", "laterality", "view", "pixel_spacing", "voi", "inverted", "bits_stored"):
        assert a.meta[key] == b.meta[key]
    np.testing.assert_allclose(out["boxes"], ref["boxes"], atol=1e-4)
    back = geometry.boxes_to_original(out["boxes"], b)
    np.testing.assert_allclose(back, geometry.boxes_to_original(ref["boxes"], a), atol=1e-3)
    # a box inside the crop comes back to the file's pixels within a pixel
    crop = _records(b)[0]
    inner = np.array([[crop["x0"] + 5, crop["y0"] + 5, crop["x0"] + 40, crop["y0"] + 30]], dtype=np.float32)
    np.testing.assert_allclose(geometry.boxes_to_original(geometry.boxes_from_original(inner, b), b), inner,
                               atol=1.0)


def test_header_method_and_laterality_follow_the_chain(files):
    path, _ = files["mono1_R"]
    ref = _four(method="header")({"image": str(path)})
    out = PreprocessMammogramd(spatial_size=SIZE, method="header")({"image": str(path)})
    assert _records(out["image"]) == _records(ref["image"])
    assert _records(out["image"])[1]["flipped"] is True


def test_inverse_restores_the_file_geometry(files):
    path, box = files["window_R"]
    chain = Compose([PreprocessMammogramd(spatial_size=SIZE, box_keys="boxes")])
    out = chain({"image": str(path), "boxes": box[None]})
    restored = chain.inverse(out)
    rows, cols = out["image"].meta["spatial_shape"]
    assert tuple(restored["image"].shape) == (1, rows, cols)
    assert restored["image"].applied_operations == []
    assert torch.allclose(restored["image"].affine, torch.diag(torch.tensor([0.1, 0.1, 1.0], dtype=torch.float64)),
                          atol=1e-6)
    np.testing.assert_allclose(restored["boxes"], geometry.clip_boxes(box[None], cols, rows), atol=1.0)
    # the restored image agrees with the file where the crop kept it (coarse: it was resized twice)
    full = LoadMammogramd()({"image": str(path)})["image"]
    crop = _records(out["image"])[0]
    region = (slice(crop["y0"] + 4, crop["y1"] - 4), slice(crop["x0"] + 4, crop["x1"] - 4))
    diff = (restored["image"][0][region] - full[0][region]).abs().mean()
    assert float(diff) < 0.03


def test_bad_file_is_one_read_error(tmp_path):
    bad = tmp_path / "broken.dcm"
    bad.write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00" * 40)
    with pytest.raises(MammogramReadError) as info:
        PreprocessMammogramd(spatial_size=SIZE)({"image": str(bad)})
    assert str(info.value).startswith(str(bad))


def test_cache_params_name_every_pixel_argument():
    base = PreprocessMammogramd(spatial_size=SIZE)
    params = base.cache_params()
    assert json.loads(json.dumps(params)) == params and params["chain_version"] == CHAIN_VERSION
    assert PreprocessMammogramd(spatial_size=SIZE, box_keys="boxes").cache_params() == params
    for change in ({"spatial_size": (128, 80)}, {"voi": "minmax"}, {"window_index": 1}, {"method": "header"},
                   {"margin_fraction": 0.0}, {"relative_threshold": 0.2}, {"border_fraction": 0.02},
                   {"trim_fraction": 0.0}, {"min_area_fraction": 0.1}, {"pad_position": "center"},
                   {"pad_value": 1.0}):
        assert PreprocessMammogramd(**{"spatial_size": SIZE, **change}).cache_params() != params
    with pytest.raises(ValueError):
        PreprocessMammogramd(voi="nope")


@pytest.mark.parametrize(("shape", "size"), [((301, 173), (128, 80)), ((90, 400), (120, 100)), ((200, 60), (64, 60)),
                                             ((50, 40), (64, 48))])
def test_streaming_resize_matches_resize_2d(shape, size):
    """The strip-wise map + resize equals geometry.resize_2d of the mapped crop (shrink, mixed, none)."""
    from mammoclip_monai.data.preprocess import _Grey, _resize_region

    rng = np.random.default_rng(0)
    stored = rng.integers(0, 4096, shape).astype(np.uint16)
    grey = _Grey(None, (100.0, 1.0 / 3500.0))
    expected = geometry.resize_2d(grey(stored)[None], size)[0]
    got = _resize_region(stored, grey, size)
    assert tuple(got.shape) == size
    assert float((got - expected).abs().max()) < 1e-5
    table = np.linspace(1.0, 0.0, 65536, dtype=np.float32)  # a table path (inverted) on a crop view
    view = stored[3:, 2:]
    expected = geometry.resize_2d(torch.from_numpy(table[view])[None], size)[0]
    assert float((_resize_region(view, _Grey(table, None), size) - expected).abs().max()) < 1e-5


def test_analysis_copy_matches_breast_downsample():
    from mammoclip_monai.data.breast import downsample
    from mammoclip_monai.data.preprocess import _downsampled, _Grey

    rng = np.random.default_rng(1)
    for shape in ((300, 240), (517, 300), (1030, 777)):
        image = rng.random(shape, dtype=np.float32)
        small, factor = downsample(image)
        got, got_factor = _downsampled(image, _Grey(None, None))
        assert got_factor == factor and got.shape == small.shape
        assert float(np.abs(got - small).max()) < 1e-6


def test_stored_values_hook_is_scoped(files):
    """Inside the hook the reader hands over stored values; outside it maps as always."""
    from mammoclip_monai.data import dicom
    from mammoclip_monai.data.reader import read_mammogram

    path, _ = files["lut_mono1_L"]
    image, _ = read_mammogram(str(path))
    with dicom.stored_values() as sink:
        placeholder, meta = read_mammogram(str(path))
    pixels, table, linear = sink[0]
    assert placeholder.shape == (1, 1) and linear is None and meta["voi"] == "lut" and meta["inverted"]
    np.testing.assert_array_equal(table[pixels.view(np.uint16)], image)  # the table is exact
    again, _ = read_mammogram(str(path))
    np.testing.assert_array_equal(again, image)
