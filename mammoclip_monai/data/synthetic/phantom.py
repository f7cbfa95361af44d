"""Rendering of one synthetic mammogram (breast outline, tissue, lesions, burned-in label).

Everything is drawn in a *canonical* frame (chest wall at the left edge, nipple pointing right)
and mirrored for right breasts at the end, so that the stored orientation follows
`docs/data_formats.md`: left breast = chest wall left, right breast = chest wall right; CC views
have the lateral side at the top, MLO views the superior side (and the pectoral muscle).

Smooth fields (breast distance map, glandular density, texture) are computed on coarse grids and
upsampled, which keeps one 1024 x 832 image well under 0.1 s. Physical sizes are in millimetres;
the pixel spacing follows from the image height and the field of view.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

__all__ = [
    "DENSITY_FRACTION_RANGE",
    "BreastAnatomy",
    "LesionSpec",
    "LesionTruth",
    "RenderedImage",
    "render_image",
    "sample_anatomy",
    "sample_lesion",
]

Box = tuple[float, float, float, float]

# Dense-tissue fraction of the breast per ACR density category (4th-edition quartiles).
DENSITY_FRACTION_RANGE: dict[str, tuple[float, float]] = {
    "A": (0.03, 0.16),
    "B": (0.20, 0.40),
    "C": (0.44, 0.64),
    "D": (0.70, 0.88),
}
# Brightness added by fully dense tissue, per category (denser breasts also look brighter).
_GLAND_CONTRAST: dict[str, float] = {"A": 0.22, "B": 0.26, "C": 0.30, "D": 0.34}

MASS_SHAPES = ("round", "oval", "irregular", "spiculated")
REGIONS = ("upper outer", "upper inner", "lower outer", "lower inner", "central", "subareolar")
_REGION_WEIGHTS = (0.40, 0.14, 0.16, 0.10, 0.10, 0.10)
_MASS_MARGINS = {
    "round": ("circumscribed", "circumscribed", "obscured"),
    "oval": ("circumscribed", "circumscribed", "obscured"),
    "irregular": ("indistinct", "microlobulated", "obscured"),
    "spiculated": ("spiculated",),
}
CALC_MORPHOLOGIES = ("pleomorphic", "amorphous", "fine linear branching", "punctate")


# --------------------------------------------------------------------------------------------
# Specifications (view independent) and results
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BreastAnatomy:
    """Shape parameters of one breast, shared by its CC and MLO views (so depths agree).

    Fractions are of the image width (x) or height (y) in the canonical frame.
    """

    fov_mm: float  # field of view along the image height; sets the pixel spacing
    depth: float  # CC nipple-to-chest-wall extent / W
    mlo_extra: float  # MLO shows a little more posterior tissue: extra depth / W
    cc_center: float  # CC nipple row / H
    cc_half_up: float  # CC lateral half-height at the chest wall / H
    cc_half_down: float  # CC medial half-height / H
    cc_power: float  # superellipse exponent of the CC dome (2 = half ellipse)
    mlo_center: float  # MLO nipple row / H
    mlo_top: float  # MLO tissue extent at the top edge (pectoral + axillary tail) / W
    mlo_bottom: float  # MLO inframammary fold row / H
    mlo_upper_power: float  # curvature of the MLO upper contour
    mlo_lower_power: float  # superellipse exponent of the MLO lower contour
    pec_width: float  # pectoral width at the top edge / W
    pec_height: float  # pectoral height along the chest wall / H
    pec_power: float  # pectoral edge curvature (1 = straight line)
    gland_quantile: float  # where in the density's dense-fraction range this breast lies
    gland_center: float  # position of the glandular cone along the nipple axis (0..1)
    skin_falloff_mm: float  # width of the thinner peripheral rim
    shape_seed: int  # outline wiggles, shared by both views

    def pixel_spacing_mm(self, height: int) -> float:
        """Isotropic pixel spacing for an image of `height` rows."""
        return float(self.fov_mm) / float(height)


@dataclass(frozen=True)
class LesionSpec:
    """One lesion of a breast, in view-independent anatomical coordinates.

    `depth_frac` runs along the nipple axis from the nipple (0) to the chest wall (1);
    `lateral` is -1 (medial / inner) .. +1 (lateral / outer), shown vertically on CC (top = lateral);
    `superior` is -1 (inferior / lower) .. +1 (superior / upper), shown vertically on MLO
    (top = superior). The region (quadrant) follows from `lateral` and `superior`.
    """

    kind: str  # "mass" | "calcification"
    shape: str  # mass: round | oval | irregular | spiculated; calcification: cluster
    size_mm: float  # mass: largest diameter; calcification: cluster extent
    depth_frac: float
    lateral: float
    superior: float
    seed: int  # outline / speck layout, shared by both views
    margin: str = ""  # mass margin descriptor (report / CBIS)
    morphology: str = ""  # calcification morphology (report / CBIS)

    @property
    def depth(self) -> str:
        """Depth third: anterior (near the nipple), mid or posterior (near the chest wall)."""
        if self.depth_frac < 1.0 / 3.0:
            return "anterior"
        return "mid" if self.depth_frac < 2.0 / 3.0 else "posterior"

    @property
    def region(self) -> str:
        """Breast region implied by the anatomical coordinates."""
        radial = math.hypot(self.lateral, self.superior)
        if self.depth_frac < 0.3 and radial < 0.3:
            return "subareolar"
        if radial < 0.25:
            return "central"
        vertical = "upper" if self.superior > 0 else "lower"
        horizontal = "outer" if self.lateral > 0 else "inner"
        return f"{vertical} {horizontal}"

    def clock(self, laterality: str) -> int:
        """Clock-face position as seen facing the patient (left breast: 3 o'clock = lateral)."""
        x = self.lateral if laterality == "L" else -self.lateral
        hour = round(math.degrees(math.atan2(x, self.superior)) / 30.0) % 12
        return 12 if hour == 0 else int(hour)


@dataclass
class LesionTruth:
    """Ground truth of one rendered lesion, in stored pixel coordinates."""

    kind: str
    shape: str
    box: Box
    region: str
    depth: str
    size_mm: float
    mask: np.ndarray | None = field(default=None, repr=False)


@dataclass
class RenderedImage:
    """One rendered mammogram and its ground truth (boxes in stored pixel coordinates)."""

    image: np.ndarray  # float32 (H, W) in [0, 1], MONOCHROME2 sense
    breast_mask: np.ndarray  # bool (H, W)
    breast_box: Box
    lesions: list[LesionTruth]
    label_box: Box
    marker_box: Box
    chest_wall_side: str  # "left" | "right"
    laterality: str = "L"
    view: str = "CC"
    density: str = "B"
    label_text: str = ""
    pixel_spacing_mm: float = 0.0
    nipple_xy: tuple[float, float] = (0.0, 0.0)
    dense_fraction: float = 0.0  # fraction of the breast (pectoral excluded) that is dense


# --------------------------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------------------------
def _as_rng(rng_or_seed: np.random.Generator | int | np.random.SeedSequence) -> np.random.Generator:
    if isinstance(rng_or_seed, np.random.Generator):
        return rng_or_seed
    return np.random.default_rng(rng_or_seed)


def sample_anatomy(rng_or_seed: np.random.Generator | int) -> BreastAnatomy:
    """Draw the outline parameters of one breast (both of its views use them)."""
    rng = _as_rng(rng_or_seed)
    u = rng.uniform
    depth = u(0.52, 0.72)
    pec_width = u(0.20, 0.34)
    mlo_top = min(pec_width + u(0.06, 0.14), depth - 0.12)
    return BreastAnatomy(
        fov_mm=u(232.0, 258.0),
        depth=depth,
        mlo_extra=u(0.0, 0.05),
        cc_center=u(0.45, 0.55),
        cc_half_up=u(0.31, 0.40),
        cc_half_down=u(0.30, 0.39),
        cc_power=u(1.9, 2.8),
        mlo_center=u(0.50, 0.60),
        mlo_top=mlo_top,
        mlo_bottom=u(0.86, 0.97),
        mlo_upper_power=u(1.5, 2.4),
        mlo_lower_power=u(1.8, 2.6),
        pec_width=pec_width,
        pec_height=u(0.34, 0.46),
        pec_power=u(0.85, 1.2),
        gland_quantile=u(0.0, 1.0),
        gland_center=u(0.38, 0.55),
        skin_falloff_mm=u(7.0, 14.0),
        shape_seed=int(rng.integers(0, 2**31 - 1)),
    )


def _sample_position(rng: np.random.Generator, region: str) -> tuple[float, float, float]:
    """Anatomical (depth_frac, lateral, superior) inside the named region."""
    if region == "subareolar":
        return rng.uniform(0.10, 0.26), rng.uniform(-0.15, 0.15), rng.uniform(-0.15, 0.15)
    if region == "central":
        return rng.uniform(0.36, 0.75), rng.uniform(-0.13, 0.13), rng.uniform(-0.13, 0.13)
    vertical, horizontal = region.split()
    sup = rng.uniform(0.32, 0.78) * (1.0 if vertical == "upper" else -1.0)
    lat = rng.uniform(0.32, 0.78) * (1.0 if horizontal == "outer" else -1.0)
    return rng.uniform(0.15, 0.82), lat, sup


def sample_lesion(
    rng_or_seed: np.random.Generator | int,
    kind: str,
    *,
    shape: str | None = None,
    region: str | None = None,
) -> LesionSpec:
    """Draw one lesion (mass or calcification cluster) with plausible size, place and look."""
    rng = _as_rng(rng_or_seed)
    if region is None:
        region = str(rng.choice(REGIONS, p=_REGION_WEIGHTS))
    depth_frac, lateral, superior = _sample_position(rng, region)
    seed = int(rng.integers(0, 2**31 - 1))
    if kind == "mass":
        shape = shape or str(rng.choice(MASS_SHAPES, p=(0.25, 0.3, 0.25, 0.2)))
        margins = _MASS_MARGINS[shape]
        return LesionSpec(
            kind="mass",
            shape=shape,
            size_mm=round(float(rng.uniform(8.0, 30.0)), 1),
            depth_frac=float(depth_frac),
            lateral=float(lateral),
            superior=float(superior),
            seed=seed,
            margin=str(margins[int(rng.integers(len(margins)))]),
        )
    if kind == "calcification":
        return LesionSpec(
            kind="calcification",
            shape="cluster",
            size_mm=round(float(rng.uniform(5.0, 20.0)), 1),
            depth_frac=float(depth_frac),
            lateral=float(lateral),
            superior=float(superior),
            seed=seed,
            morphology=str(rng.choice(CALC_MORPHOLOGIES, p=(0.4, 0.25, 0.2, 0.15))),
        )
    raise ValueError(f"unknown lesion kind {kind!r} (expected 'mass' or 'calcification')")


# --------------------------------------------------------------------------------------------
# Small numerical helpers
# --------------------------------------------------------------------------------------------
def _upsample(arr: np.ndarray, shape: tuple[int, int], cell: float, cubic: bool = False) -> np.ndarray:
    """Resize a coarse grid (cell i covers [i*cell, (i+1)*cell) px) to `shape`, centre aligned."""
    h, w = shape
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if arr.shape == (h, w) and cell == 1:
        return arr
    resample = Image.Resampling.BICUBIC if cubic else Image.Resampling.BILINEAR
    img = Image.fromarray(arr)
    out = img.resize((w, h), resample, box=(0.0, 0.0, w / cell, h / cell))
    return np.asarray(out, dtype=np.float32)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cell: float) -> np.ndarray:
    """Unit-variance Gaussian-correlated noise with correlation length ~ `cell` pixels."""
    gh = max(2, math.ceil(shape[0] / cell))
    gw = max(2, math.ceil(shape[1] / cell))
    grid = ndimage.gaussian_filter(rng.standard_normal((gh, gw), dtype=np.float32), 1.0, mode="wrap")
    grid *= np.float32(1.0 / max(float(grid.std()), 1e-6))
    return _upsample(grid, shape, cell, cubic=True)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return (0.5 * (1.0 + np.tanh(0.5 * x))).astype(np.float32, copy=False)


def _tight_box(mask: np.ndarray, x0: int = 0, y0: int = 0) -> Box:
    """Continuous-convention box [x_min, y_min, x_max, y_max] of the True pixels."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return (0.0, 0.0, 0.0, 0.0)
    return (float(x0 + cols[0]), float(y0 + rows[0]), float(x0 + cols[-1] + 1), float(y0 + rows[-1] + 1))


def _flip_box(box: Box, width: int) -> Box:
    return (width - box[2], box[1], width - box[0], box[3])


# --------------------------------------------------------------------------------------------
# Breast geometry (canonical frame)
# --------------------------------------------------------------------------------------------
@dataclass
class _Geometry:
    """Outline of one view: per-row tissue extent and derived maps."""

    view: str
    shape: tuple[int, int]
    spacing: float
    nipple: tuple[float, float]  # (x, y) px
    half_up: float  # px, vertical extent above the nipple row at the chest wall
    half_down: float
    pec: tuple[float, float, float]  # (width px, height px, power); zero width for CC
    cell: float  # coarse grid cell (px)
    extent: np.ndarray  # (H,) tissue extent X(y) per full-resolution row
    sdf_coarse: np.ndarray  # signed distance to the skin (px), coarse grid
    pec_coarse: np.ndarray  # signed distance into the pectoral (px, >0 inside), coarse grid


def _outline_wiggle(rng: np.random.Generator, v: np.ndarray) -> np.ndarray:
    """Low-order multiplicative wiggle of the outline, v in [-1, 1] along the outline."""
    out = np.ones_like(v)
    for k in (1, 2, 3):
        out += rng.uniform(0.005, 0.025) / k * np.sin(k * math.pi * (v + 1.0) / 2.0 * 1.7 + rng.uniform(0, 6.283))
    return out


def _extent(anat: BreastAnatomy, view: str, y: np.ndarray, shape: tuple[int, int], spacing: float) -> np.ndarray:
    """Tissue extent X(y) (px from the chest wall) for rows `y` (px, continuous)."""
    h, w = shape
    rng = np.random.default_rng(anat.shape_seed + (0 if view == "CC" else 7919))
    if view == "CC":
        y_n = anat.cc_center * h
        a = anat.depth * w
        half = np.where(y < y_n, anat.cc_half_up * h, anat.cc_half_down * h)
        v = (y - y_n) / half
        base = np.clip(1.0 - np.abs(v) ** anat.cc_power, 0.0, None) ** 0.5
        x = a * base * _outline_wiggle(rng, np.clip(v, -1, 1))
    else:
        y_n = anat.mlo_center * h
        a = (anat.depth + anat.mlo_extra) * w
        x_top = anat.mlo_top * w
        t = np.clip(y / y_n, 0.0, 1.0)
        upper = x_top + (a - x_top) * (1.0 - (1.0 - t) ** anat.mlo_upper_power)
        v = np.clip((y - y_n) / (anat.mlo_bottom * h - y_n), 0.0, None)
        lower = a * np.clip(1.0 - v**anat.mlo_lower_power, 0.0, None) ** 0.5
        vv = np.clip(np.where(y < y_n, t - 1.0, v), -1, 1)
        x = np.where(y < y_n, upper, lower) * _outline_wiggle(rng, vv)
    # nipple: a small protrusion at the tip
    nip_len = rng.uniform(1.5, 3.5) / spacing
    nip_w = rng.uniform(3.0, 5.0) / spacing
    x = x + (x > 0) * nip_len * np.exp(-0.5 * ((y - y_n) / nip_w) ** 2)
    return np.clip(x, 0.0, 0.97 * w).astype(np.float32)


def _pectoral_edge(pec: tuple[float, float, float], y: np.ndarray) -> np.ndarray:
    """x of the pectoral edge per row (px); <= 0 below the muscle."""
    width, height, power = pec
    if width <= 0:
        return np.full_like(y, -1e6, dtype=np.float32)
    t = np.clip(1.0 - y / height, 0.0, None)
    return np.where(y < height, width * t**power, -1e6).astype(np.float32)


def _build_geometry(anat: BreastAnatomy, view: str, shape: tuple[int, int]) -> _Geometry:
    """Outline, coarse signed distance map and pectoral map of one view."""
    h, w = shape
    spacing = anat.pixel_spacing_mm(h)
    cell = float(max(1, round(1.0 / spacing)))  # ~1 mm coarse grid
    gh, gw = math.ceil(h / cell), math.ceil(w / cell)
    yc = (np.arange(gh, dtype=np.float32) + 0.5) * cell
    xc = (np.arange(gw, dtype=np.float32) + 0.5) * cell
    extent = _extent(anat, view, np.arange(h, dtype=np.float32) + 0.5, shape, spacing)
    inside = xc[None, :] < _extent(anat, view, yc, shape, spacing)[:, None]
    # tissue continues beyond the chest wall (left) and, on MLO, into the axilla (top)
    pad = int(math.ceil(20.0 / (cell * spacing))) + 2
    padded = np.pad(inside, ((pad, 0), (pad, 0)), mode="edge")
    d_in = ndimage.distance_transform_edt(padded)[pad:, pad:]
    d_out = ndimage.distance_transform_edt(~padded)[pad:, pad:]
    sdf = (np.where(inside, d_in - 0.5, 0.5 - d_out) * cell).astype(np.float32)
    if view == "MLO":
        pec = (anat.pec_width * w, anat.pec_height * h, anat.pec_power)
        y_n = anat.mlo_center * h
        a = (anat.depth + anat.mlo_extra) * w
        half_up, half_down = y_n, anat.mlo_bottom * h - y_n
    else:
        pec = (0.0, 0.0, 1.0)
        y_n = anat.cc_center * h
        a = anat.depth * w
        half_up, half_down = anat.cc_half_up * h, anat.cc_half_down * h
    pec_coarse = (_pectoral_edge(pec, yc)[:, None] - xc[None, :]).astype(np.float32)
    nipple_x = float(np.interp(y_n, np.arange(h) + 0.5, extent))
    return _Geometry(
        view=view,
        shape=shape,
        spacing=spacing,
        nipple=(max(nipple_x, 0.5 * a), y_n),
        half_up=half_up,
        half_down=half_down,
        pec=pec,
        cell=cell,
        extent=extent,
        sdf_coarse=sdf,
        pec_coarse=pec_coarse,
    )


# --------------------------------------------------------------------------------------------
# Tissue
# --------------------------------------------------------------------------------------------
def _polar_noise(
    rng: np.random.Generator, geo: _Geometry, yc: np.ndarray, xc: np.ndarray, sigma: tuple[float, float]
) -> tuple[np.ndarray, np.ndarray]:
    """Noise elongated along lines converging on the nipple (ducts, Cooper's ligaments).

    Returns the noise sampled at the grid points (unit variance) and the distance to the nipple
    in px. `sigma` is the smoothing in (angle degrees, radial fraction of the nipple depth x 64).
    """
    nx, ny = geo.nipple
    ddy, ddx = yc[:, None] - ny, nx - xc[None, :]
    phi = np.arctan2(ddy, ddx)  # 0 = straight back to the chest wall
    rho = np.hypot(ddy, ddx)
    n_phi, n_rho = 360, 64
    polar = rng.standard_normal((n_phi, n_rho), dtype=np.float32)
    polar = ndimage.gaussian_filter(polar, sigma, mode=("wrap", "nearest"))
    polar /= max(float(polar.std()), 1e-6)
    coords = np.stack(
        [
            np.broadcast_to((phi + math.pi) / (2 * math.pi) * n_phi, rho.shape),
            np.clip(rho / max(nx, 1.0), 0.0, 1.3) / 1.3 * (n_rho - 1),
        ]
    )
    noise = ndimage.map_coordinates(polar, coords, order=1, mode="grid-wrap").astype(np.float32)
    return noise, rho.astype(np.float32)


def _gland_map(rng: np.random.Generator, anat: BreastAnatomy, geo: _Geometry, density: str) -> tuple[np.ndarray, float]:
    """Coarse map in [0, 1] of dense fibroglandular tissue and its breast fraction."""
    gh, gw = geo.sdf_coarse.shape
    cell = geo.cell
    yc = (np.arange(gh, dtype=np.float32) + 0.5) * cell
    xc = (np.arange(gw, dtype=np.float32) + 0.5) * cell
    nx, ny = geo.nipple
    u = xc[None, :] / nx  # 0 at the chest wall, 1 at the nipple
    shift = 0.12 * geo.half_up  # the glandular cone leans lateral (CC) / superior (MLO)
    v = (yc[:, None] - ny + shift) / np.where(yc[:, None] < ny, geo.half_up, geo.half_down)
    prior = np.exp(-0.5 * ((u - anat.gland_center) / 0.30) ** 2 - 0.5 * (v / 0.45) ** 2)
    coarse_mm = cell * geo.spacing
    flames, rho = _polar_noise(rng, geo, yc, xc, (2.5, 2.0))
    near_nipple = np.clip(rho * np.float32(geo.spacing / 40.0), 0.0, 1.0)
    field_ = (
        0.30 * _smooth_noise(rng, (gh, gw), 2.0 / coarse_mm)
        + 0.40 * _smooth_noise(rng, (gh, gw), 5.0 / coarse_mm)
        + 0.40 * _smooth_noise(rng, (gh, gw), 12.0 / coarse_mm)
        + 0.45 * flames * near_nipple
        + 2.2 * prior
    )
    dist_mm = geo.sdf_coarse * geo.spacing
    breast = (geo.sdf_coarse > 0) & (geo.pec_coarse < 0)
    core = breast & (dist_mm > 4.0)
    lo, hi = DENSITY_FRACTION_RANGE[density]
    target = lo + (hi - lo) * anat.gland_quantile
    thr = float(np.quantile(field_[core], 1.0 - target)) if core.any() else 0.0
    gland = _sigmoid((field_ - thr) / 0.22)
    gland *= np.clip((dist_mm - 1.5) / 5.0, 0.0, 1.0) * np.clip(
        -geo.pec_coarse * np.float32(geo.spacing / 4.0), 0.0, 1.0
    )
    fraction = float((gland[breast] > 0.5).mean()) if breast.any() else 0.0
    return gland.astype(np.float32), fraction


def _strands(rng: np.random.Generator, geo: _Geometry) -> np.ndarray:
    """Thin curvilinear bright lines running toward the nipple (zero crossings of polar noise)."""
    h, w = geo.shape
    cell = max(1.0, 0.5 / geo.spacing)
    gh, gw = math.ceil(h / cell), math.ceil(w / cell)
    yc = (np.arange(gh, dtype=np.float32) + 0.5) * np.float32(cell)
    xc = (np.arange(gw, dtype=np.float32) + 0.5) * np.float32(cell)
    noise, rho = _polar_noise(rng, geo, yc, xc, (1.2, 4.0))
    ridge = np.exp(-((noise / np.float32(0.12)) ** 2)) * np.clip(rho * np.float32(geo.spacing / 20.0) - 0.2, 0.0, 1.0)
    return _upsample(ridge, (h, w), cell)


def _render_tissue(
    rng: np.random.Generator, anat: BreastAnatomy, geo: _Geometry, density: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, float]:
    """Canonical breast image without lesions, breast mask, signed skin distance (px),
    dense fraction and the brightness of fully dense tissue."""
    h, w = geo.shape
    sp = geo.spacing
    gland_c, fraction = _gland_map(rng, anat, geo, density)
    gland = np.clip(_upsample(gland_c, (h, w), geo.cell, cubic=True), 0.0, 1.0)
    sdf = _upsample(geo.sdf_coarse, (h, w), geo.cell)
    dist_mm = sdf * np.float32(sp)
    xs = np.arange(w, dtype=np.float32) + 0.5
    ys = np.arange(h, dtype=np.float32) + 0.5
    mask = xs[None, :] < geo.extent[:, None]

    fine = _smooth_noise(rng, (h, w), max(1.0, 0.7 / sp))
    mid = _smooth_noise(rng, (h, w), max(1.0, 2.0 / sp))
    strands = _strands(rng, geo)
    fat = np.float32(rng.uniform(0.20, 0.27))
    contrast = np.float32(_GLAND_CONTRAST[density] + rng.uniform(-0.02, 0.02))
    tissue = fat + 0.025 * mid + 0.04 * strands + contrast * gland * (1.0 + 0.10 * fine + 0.12 * mid)

    if geo.pec[0] > 0:  # pectoral muscle: bright band in the upper chest-wall corner
        edge = _pectoral_edge(geo.pec, ys)
        inside = _sigmoid((edge[:, None] - xs[None, :]) / np.float32(0.5 / sp))
        level = fat + rng.uniform(0.20, 0.28) + 0.10 * (1.0 - xs[None, :] / max(geo.pec[0], 1.0))
        tissue = tissue * (1.0 - inside) + inside * (level + 0.035 * mid + 0.02 * fine)

    nx, ny = geo.nipple
    r2 = ((xs[None, :] - nx) ** 2 + (ys[:, None] - ny) ** 2) * np.float32(sp * sp)
    tissue += 0.08 * np.exp(-r2 / np.float32(2 * 4.0**2))  # nipple / areola

    d = np.clip(dist_mm, 0.0, None)
    rim = np.clip(d / np.float32(anat.skin_falloff_mm), 0.0, 1.0)
    thickness = 0.3 + 0.7 * np.sqrt(1.0 - (1.0 - rim) ** 2)
    skin = 0.09 * np.exp(-0.5 * ((d - 0.6) / 0.45) ** 2)
    image = np.where(mask, tissue * thickness + skin, 0.0).astype(np.float32)
    return image, mask, sdf, fraction, float(fat + contrast)


# --------------------------------------------------------------------------------------------
# Lesions
# --------------------------------------------------------------------------------------------
def _mass_radius(spec: LesionSpec, spacing: float, angle_offset: float) -> tuple[np.ndarray, float]:
    """Outline radius (px) on 360 angles, and its maximum; same outline family in both views."""
    rng = np.random.default_rng(spec.seed)
    theta = np.linspace(0.0, 2 * math.pi, 360, endpoint=False)
    radius = spec.size_mm / 2.0 / spacing
    if spec.shape == "oval":
        ratio = rng.uniform(1.3, 1.8)
        t = theta - rng.uniform(0, math.pi) - angle_offset
        r = radius / np.sqrt(np.cos(t) ** 2 + (ratio * np.sin(t)) ** 2)
    else:
        amp = {"round": 0.02, "irregular": 0.16, "spiculated": 0.10}[spec.shape]
        r = np.ones_like(theta)
        for k in range(2, 6):
            r += (
                rng.uniform(0.3, 1.0)
                * amp
                / math.sqrt(k - 1)
                * np.cos(k * (theta - angle_offset) + rng.uniform(0, 6.283))
            )
        r = radius * r / r.max()
    return r.astype(np.float32), float(r.max())


def _calc_layout(spec: LesionSpec, spacing: float) -> tuple[np.ndarray, np.ndarray, float]:
    """Speck offsets (px, shape (n, 2) as dx, dy), speck radii (px) and the cluster radius."""
    rng = np.random.default_rng(spec.seed)
    n = int(rng.integers(5, 26))
    radius = spec.size_mm / 2.0 / spacing
    elong = rng.uniform(1.0, 2.2)
    ang = rng.uniform(0, math.pi)
    pts = rng.uniform(-1.0, 1.0, (n * 4, 2))
    pts = pts[(pts**2).sum(1) <= 1.0][:n]
    while len(pts) < n:  # pragma: no cover - 4n draws nearly always suffice
        pts = np.vstack([pts, [[0.0, 0.0]]])
    pts[:, 1] /= elong
    rot = np.array([[math.cos(ang), -math.sin(ang)], [math.sin(ang), math.cos(ang)]])
    offsets = (pts @ rot.T) * radius
    radii = np.maximum(rng.uniform(0.2, 0.5, n) / spacing, 1.5)
    extent = float(np.sqrt((offsets**2).sum(1)).max() + radii.max()) if n else 0.0
    return offsets.astype(np.float32), radii.astype(np.float32), extent


def _place(spec: LesionSpec, geo: _Geometry, reach: float, view: str) -> tuple[float, float]:
    """Centre (x, y) px of a lesion in the canonical frame, fully inside the breast, off the pectoral."""
    nx, ny = geo.nipple
    x = nx * (1.0 - spec.depth_frac)
    t = spec.lateral if view == "CC" else spec.superior  # + = top of the image
    h = geo.shape[0]
    rows = np.arange(h, dtype=np.float32) + 0.5
    col = (geo.extent > x) & (_pectoral_edge(geo.pec, rows) < x)
    top = float(rows[col].min()) if col.any() else ny
    bottom = float(rows[col].max()) if col.any() else ny
    y = ny - t * (ny - top) if t > 0 else ny - t * (bottom - ny)
    # snap to the nearest coarse cell that keeps the whole lesion inside the breast
    cell = geo.cell
    margin = reach + max(2.0 / geo.spacing, 2.0) + cell
    gh, gw = geo.sdf_coarse.shape
    in_frame = (((np.arange(gh) + 0.5) * cell >= margin)[:, None]) & (((np.arange(gw) + 0.5) * cell >= margin)[None, :])
    valid = (geo.sdf_coarse >= margin) & (geo.pec_coarse <= -margin) & in_frame
    if not valid.any():
        valid = geo.sdf_coarse >= geo.sdf_coarse.max() - 1e-3
    iy, ix = np.nonzero(valid)
    cy, cx = (iy + 0.5) * cell, (ix + 0.5) * cell
    best = int(np.argmin((cx - x) ** 2 + (cy - y) ** 2))
    if (cx[best] - x) ** 2 + (cy[best] - y) ** 2 <= cell**2:
        return float(x), float(y)
    return float(cx[best]), float(cy[best])


def _patch(center: tuple[float, float], reach: float, shape: tuple[int, int]) -> tuple[int, int, int, int]:
    h, w = shape
    x0 = max(0, int(math.floor(center[0] - reach)))
    y0 = max(0, int(math.floor(center[1] - reach)))
    x1 = min(w, int(math.ceil(center[0] + reach)) + 1)
    y1 = min(h, int(math.ceil(center[1] + reach)) + 1)
    return x0, y0, x1, y1


def _draw_mass(
    rng: np.random.Generator, image: np.ndarray, spec: LesionSpec, geo: _Geometry, view: str, dense: float
) -> LesionTruth:
    """Add one mass (dense blob with soft edge, optional spicules); returns its core truth.

    The mass mostly replaces the tissue under it by a level a little above fully dense tissue,
    so it stays visible (if subtle) in dense breasts and is conspicuous in fatty ones.
    """
    sp = geo.spacing
    offset = 0.0 if view == "CC" else 0.35  # the other projection: a slightly rotated outline
    radius, r_max = _mass_radius(spec, sp, offset)
    spikes = spec.shape == "spiculated"
    cx, cy = _place(spec, geo, r_max, view)
    reach = r_max * (2.8 if spikes else 1.3) + 3
    x0, y0, x1, y1 = _patch((cx, cy), reach, geo.shape)
    dx = np.arange(x0, x1, dtype=np.float32)[None, :] + 0.5 - cx
    dy = np.arange(y0, y1, dtype=np.float32)[:, None] + 0.5 - cy
    theta = np.mod(np.arctan2(dy, dx), 2 * math.pi)
    r_edge = radius[(theta / (2 * math.pi) * len(radius)).astype(np.int64) % len(radius)]
    rn = np.hypot(dx, dy) / r_edge
    soft = {"circumscribed": 0.6, "obscured": 1.2, "microlobulated": 1.0}.get(spec.margin, 1.6) / sp
    edge = _sigmoid((1.0 - rn) * r_edge / np.float32(max(soft, 0.6) * 0.5))
    dome = np.sqrt(np.clip(1.0 - (0.85 * rn) ** 2, 0.0, 1.0))
    level = np.float32(dense + rng.uniform(0.03, 0.09))
    contrast = np.float32(rng.uniform(0.06, 0.10))
    grain = ndimage.gaussian_filter(rng.standard_normal(edge.shape).astype(np.float32), max(1.0, 0.8 / sp))
    texture = 1.0 + np.float32(0.05 / max(float(grain.std()), 1e-6)) * grain
    cover = np.float32(0.65) * edge
    target = level * (0.8 + 0.2 * dome) * texture
    add = cover * (target - image[y0:y1, x0:x1]) + contrast * edge * dome
    if spikes:
        add = np.maximum(add, _spicules(rng, dx, dy, r_max, sp, np.float32(0.16)))
    image[y0:y1, x0:x1] += add
    core = np.zeros(geo.shape, dtype=bool)
    core[y0:y1, x0:x1] = rn <= 1.0
    return LesionTruth(
        kind="mass",
        shape=spec.shape,
        box=_tight_box(core[y0:y1, x0:x1], x0, y0),
        region=spec.region,
        depth=spec.depth,
        size_mm=spec.size_mm,
        mask=core,
    )


def _spicules(
    rng: np.random.Generator, dx: np.ndarray, dy: np.ndarray, r_core: float, sp: float, contrast: np.float32
) -> np.ndarray:
    """Thin tapering lines radiating from the mass core."""
    out = np.zeros(np.broadcast_shapes(dx.shape, dy.shape), dtype=np.float32)
    n = int(rng.integers(9, 19))
    width = np.float32(max(0.8, 0.35 / sp))
    for ang in rng.uniform(0, 2 * math.pi, n):
        ex, ey = math.cos(ang), math.sin(ang)
        length = r_core * rng.uniform(1.4, 2.4)
        t = np.clip(dx * ex + dy * ey, 0.0, length)
        dist = np.hypot(dx - t * ex, dy - t * ey)
        taper = 1.0 - t / np.float32(length)
        w = width * (0.5 + taper)  # thicker at the root
        out = np.maximum(out, contrast * taper * np.exp(-0.5 * (dist / w) ** 2))
    return out


def _draw_calcifications(
    rng: np.random.Generator, image: np.ndarray, spec: LesionSpec, geo: _Geometry, view: str
) -> LesionTruth:
    """Add a cluster of fine bright specks; truth box = specks' extent plus a small margin."""
    sp = geo.spacing
    offsets, radii, extent = _calc_layout(spec, sp)
    if view == "MLO":  # the other projection: squash and shear the layout a little
        offsets = offsets * np.array([1.0, 0.85], dtype=np.float32) + offsets[:, ::-1] * np.float32(0.15)
    margin = max(1.0 / sp, 2.0)
    cx, cy = _place(spec, geo, extent + margin, view)
    x0, y0, x1, y1 = _patch((cx, cy), extent + margin + 2, geo.shape)
    dx = np.arange(x0, x1, dtype=np.float32)[None, None, :] + 0.5 - cx - offsets[:, 0, None, None]
    dy = np.arange(y0, y1, dtype=np.float32)[None, :, None] + 0.5 - cy - offsets[:, 1, None, None]
    dist = np.sqrt(dx * dx + dy * dy) - radii[:, None, None]  # (n, h, w): distance to each speck
    brightness = rng.uniform(0.45, 0.65, len(radii)).astype(np.float32)[:, None, None]
    specks = (np.clip(0.5 - dist, 0.0, 1.0) * brightness).max(axis=0)
    image[y0:y1, x0:x1] = np.maximum(image[y0:y1, x0:x1], 0.0) + specks
    region = np.zeros(geo.shape, dtype=bool)
    region[y0:y1, x0:x1] = dist.min(axis=0) <= margin
    return LesionTruth(
        kind="calcification",
        shape="cluster",
        box=_tight_box(region[y0:y1, x0:x1], x0, y0),
        region=spec.region,
        depth=spec.depth,
        size_mm=spec.size_mm,
        mask=region,
    )


# --------------------------------------------------------------------------------------------
# Burned-in label and lead marker
# --------------------------------------------------------------------------------------------
@lru_cache(maxsize=64)
def _text_bitmap(text: str) -> np.ndarray:
    """Ink of `text` in PIL's built-in bitmap font (no font files, identical everywhere)."""
    loader = getattr(ImageFont, "load_default_imagefont", ImageFont.load_default)
    font = loader()
    img = Image.new("L", (8 * len(text) + 8, 16), 0)
    ImageDraw.Draw(img).text((1, 0), text, fill=255, font=font)
    ink = np.asarray(img) > 127
    rows, cols = np.flatnonzero(ink.any(1)), np.flatnonzero(ink.any(0))
    return ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].copy()


def _clear_of(sdf: np.ndarray, box: tuple[int, int, int, int], clearance: float) -> bool:
    """True when the box, grown by `clearance` px on every side, misses the breast (sdf < 0)."""
    x0, y0, x1, y1 = box
    h, w = sdf.shape
    if x0 < 0 or y0 < 0 or x1 > w or y1 > h:
        return False
    c = int(math.ceil(clearance))
    window = sdf[max(0, y0 - c) : y1 + c, max(0, x0 - c) : x1 + c]
    return bool(window.max() < 0.0)


def _place_label(
    rng: np.random.Generator, text: str, sdf: np.ndarray, nipple_right: bool, clearance: float
) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Upscaled text bitmap and its box, in a background corner on the nipple side."""
    h, w = sdf.shape
    ink = _text_bitmap(text)
    target = rng.uniform(0.03, 0.045) * h
    scale = max(1, round(target / ink.shape[0]))
    mx, my = int(rng.uniform(0.02, 0.04) * w), int(rng.uniform(0.02, 0.035) * h)
    for s in range(scale, 0, -1):
        big = np.repeat(np.repeat(ink, s, axis=0), s, axis=1)
        bh, bw = big.shape
        x0 = w - mx - bw if nipple_right else mx
        for y0 in (my, h - my - bh):  # top corner first, then the bottom corner
            box = (x0, y0, x0 + bw, y0 + bh)
            if _clear_of(sdf, box, clearance):
                return big, box
    big = ink
    x0 = w - 1 - big.shape[1] if nipple_right else 1
    return big, (x0, 1, x0 + big.shape[1], 1 + big.shape[0])


def _place_marker(
    rng: np.random.Generator,
    sdf: np.ndarray,
    nipple_right: bool,
    clearance: float,
    avoid: tuple[int, int, int, int],
) -> tuple[int, int, int, int]:
    """Box of a small lead-marker-like object in the background, away from breast and label."""
    h, w = sdf.shape
    size = max(3, int(round(rng.uniform(0.015, 0.022) * h)))

    def fits(x0: int, y0: int) -> bool:
        box = (x0, y0, x0 + size, y0 + size)
        g = clearance
        apart = box[2] + g < avoid[0] or avoid[2] + g < box[0] or box[3] + g < avoid[1] or avoid[3] + g < box[1]
        return apart and _clear_of(sdf, box, clearance)

    for _ in range(100):  # random spot on the nipple side
        cx = rng.uniform(0.62, 0.96) * w if nipple_right else rng.uniform(0.04, 0.38) * w
        x0, y0 = int(cx - size / 2), int(rng.uniform(0.15, 0.92) * h - size / 2)
        if fits(x0, y0):
            return (x0, y0, x0 + size, y0 + size)
    step = max(1, size // 2)  # exhaustive scan, nearest the nipple-side edge first
    xs = range(w - size - 1, 0, -step) if nipple_right else range(1, w - size, step)
    for x0 in xs:
        for y0 in range(1, h - size, step):
            if fits(x0, y0):
                return (x0, y0, x0 + size, y0 + size)
    x0 = w - size - 1 if nipple_right else 1  # pragma: no cover - no background at all
    return (x0, h - size - 1, x0 + size, h - 1)


# --------------------------------------------------------------------------------------------
# Public entry point
# --------------------------------------------------------------------------------------------
def render_image(
    rng_or_seed: np.random.Generator | int,
    laterality: str,
    view: str,
    density: str,
    lesions: list[LesionSpec] | tuple[LesionSpec, ...] = (),
    image_size: tuple[int, int] = (1024, 832),
    *,
    anatomy: BreastAnatomy | None = None,
) -> RenderedImage:
    """Render one mammogram in stored orientation with its ground truth.

    Pass the same `anatomy` and `lesions` for the CC and MLO views of one breast to get
    anatomically consistent views; when `anatomy` is None it is drawn from the generator.
    """
    if laterality not in ("L", "R") or view not in ("CC", "MLO") or density not in _GLAND_CONTRAST:
        raise ValueError(f"bad laterality/view/density: {laterality!r} {view!r} {density!r}")
    rng = _as_rng(rng_or_seed)
    anat = anatomy if anatomy is not None else sample_anatomy(rng)
    h, w = int(image_size[0]), int(image_size[1])
    geo = _build_geometry(anat, view, (h, w))
    image, mask, sdf, fraction, dense = _render_tissue(rng, anat, geo, density)
    truths = [
        _draw_mass(rng, image, spec, geo, view, dense)
        if spec.kind == "mass"
        else _draw_calcifications(rng, image, spec, geo, view)
        for spec in lesions
    ]
    image *= mask  # spicules must not reach into the background
    nipple = geo.nipple
    if laterality == "R":  # mirror: chest wall to the right edge
        image, mask, sdf = image[:, ::-1].copy(), mask[:, ::-1].copy(), sdf[:, ::-1].copy()
        for t in truths:
            t.box = _flip_box(t.box, w)
            t.mask = None if t.mask is None else t.mask[:, ::-1].copy()
        nipple = (w - nipple[0], nipple[1])
    nipple_right = laterality == "L"
    clearance = 0.02 * w + 1
    grown = sdf + np.float32(geo.cell + 1.0)  # slack: sdf comes from a ~1 mm grid
    text = f"{laterality} {view}"
    ink, label = _place_label(rng, text, grown, nipple_right, clearance)
    marker = _place_marker(rng, grown, nipple_right, clearance, label)
    _draw_marker(rng, image, marker)
    image = _finish(rng, image, geo.spacing)
    image[label[1] : label[3], label[0] : label[2]][ink] = np.float32(rng.uniform(0.96, 1.0))
    return RenderedImage(
        image=image,
        breast_mask=mask,
        breast_box=_tight_box(mask),
        lesions=truths,
        label_box=tuple(float(v) for v in label),  # type: ignore[arg-type]
        marker_box=tuple(float(v) for v in marker),  # type: ignore[arg-type]
        chest_wall_side="left" if laterality == "L" else "right",
        laterality=laterality,
        view=view,
        density=density,
        label_text=text,
        pixel_spacing_mm=geo.spacing,
        nipple_xy=(float(nipple[0]), float(nipple[1])),
        dense_fraction=fraction,
    )


def _draw_marker(rng: np.random.Generator, image: np.ndarray, box: tuple[int, int, int, int]) -> None:
    """A square or disc of near-maximal brightness (a lead marker)."""
    x0, y0, x1, y1 = box
    level = np.float32(rng.uniform(0.9, 0.98))
    if rng.random() < 0.5:
        image[y0:y1, x0:x1] = level
        return
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32) + 0.5
    r = (x1 - x0) / 2.0
    disc = (xx - (x0 + r)) ** 2 + (yy - (y0 + r)) ** 2 <= r * r
    image[y0:y1, x0:x1][disc] = level


def _finish(rng: np.random.Generator, image: np.ndarray, spacing: float) -> np.ndarray:
    """Detector blur, a faint background and quantum-like (signal dependent) noise."""
    sigma = max(0.45, 0.11 / spacing)
    image = ndimage.gaussian_filter(image, sigma, truncate=2.5)
    image += np.float32(0.012)
    noise = rng.standard_normal(image.shape, dtype=np.float32)
    image += noise * (np.float32(0.004) + np.float32(0.014) * np.sqrt(np.clip(image, 0.0, 1.0)))
    return np.clip(image, 0.0, 1.0, out=image)
