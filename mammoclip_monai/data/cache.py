"""A persistent cache of the deterministic chain: each image read, cropped, canonicalised and resized once.

Real archives hold 10^4 - 10^6 full-field mammograms; decoding and preprocessing one costs 100 ms or
more, and holding the results in RAM as float32 (MONAI's ``CacheDataset``) takes 5.5 MB an image at
1520 x 912. This cache writes each result once to disk and reads it back in about a millisecond.

Layout (files + one parameters file per chain; docs/data_formats.md says why this format)::

    <cache_dir>/<chain key>/params.json              what produced these entries (human-readable)
    <cache_dir>/<chain key>/entries/ab/abcdef....mce  one image: its record (JSON) + uint16 pixels
    <cache_dir>/<chain key>/sources/12/123456....json source path -> size, mtime, content hash

* The chain key is a hash of every parameter that changes the pixels (output size, VOI choice,
  crop and canonicalisation settings, chain and format versions): a change of parameters writes to
  another folder and never serves a stale image.
* Entries are keyed by the source file's content hash (``reader.image_hash``), so a copy of a file
  elsewhere is served from the same entry and a changed file gets a new one. Hashing a 30 MB DICOM
  costs more than reading an entry, so ``sources/`` remembers each path's hash together with the
  file's size and modification time (as git's index does); a file whose size or mtime changed is
  hashed again.
* Pixels are stored losslessly as 16-bit integers (``round(x * 65535)`` of the chain's [0, 1] float
  output), not as 8-bit PNGs; the record holds the allow-listed metadata, the affine and the
  geometry records (crop, flip, resize/pad), so boxes and heatmaps map back to the file's pixels
  exactly as after the uncached chain.
* Every file is written to a temporary name and renamed (``utils.files.atomic_path``): a killed
  writer leaves no partial entry, and several processes (DataLoader workers, DDP ranks, jobs on
  other nodes of a shared file system) may fill the cache at once: two writers of the same entry
  write the same bytes and one rename wins. An entry that cannot be read (a disk error, a power
  cut) is treated as missing and written again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import struct
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform
from monai.utils import ensure_tuple, ensure_tuple_rep
from monai.utils.enums import TraceKeys

from ..utils import resources
from ..utils.errors import as_flag
from ..utils.files import atomic_write_bytes, atomic_write_text
from ..utils.progress import progress as progress_bar
from . import geometry
from .preprocess import PreprocessMammogramd
from .reader import DEFAULT_MAX_PIXELS, MammogramReadError, read_error

__all__ = ["CACHE_FORMAT", "CachedPreprocessd", "PreprocessCache", "chain_parameters", "read_entry"]

logger = logging.getLogger(__name__)

CACHE_FORMAT = 2  # layout and entry format; a change makes a new chain key (the chain's numerics:
# preprocess.CHAIN_VERSION, in its cache_params())
ENTRY_MAGIC = b"MAMMOCACHE\x00\x02"  # 12 bytes, then the record's length (uint64 LE), the record, the pixels
ENTRY_SUFFIX = ".mce"
PIXEL_SCALE = 65535.0
_META_TUPLES = ("pixel_spacing", "spatial_shape")


def chain_parameters(chain: PreprocessMammogramd) -> dict[str, Any]:
    """Every setting of ``chain`` that changes its output (its ``cache_params()``), plus the cache format.

    ``allow_any_modality``, ``max_pixels`` and the decoder only decide whether (and how fast) a file
    is read, so they are not part of it: an entry written under one setting is right under another.
    """
    return {"cache_format": CACHE_FORMAT, **chain.cache_params()}


def _digest(text: str | bytes, length: int = 16) -> str:
    data = text.encode("utf-8") if isinstance(text, str) else text
    return hashlib.sha256(data).hexdigest()[:length]


class PreprocessCache:
    """The on-disk store of one chain's outputs (one parameter set), shared by every process that uses it."""

    def __init__(self, cache_dir: str | os.PathLike[str], parameters: Mapping[str, Any]) -> None:
        self.parameters = json.loads(json.dumps(dict(parameters), sort_keys=True))
        self.key = _digest(json.dumps(self.parameters, sort_keys=True))
        self.root = Path(cache_dir).expanduser().absolute()
        self.directory = self.root / self.key
        self._params_written = False

    # ------------------------------------------------------------------ names
    def entry_path(self, content_hash: str, variant: str = "") -> Path:
        """Where the entry of a source with this content hash lives (``variant``: see ``CachedPreprocessd``)."""
        name = content_hash + (f"-{variant}" if variant else "")
        return self.directory / "entries" / content_hash[:2] / f"{name}{ENTRY_SUFFIX}"

    def _source_path(self, source: str) -> Path:
        key = _digest(source)
        return self.directory / "sources" / key[:2] / f"{key}.json"

    # ------------------------------------------------------------------ source -> content hash
    def remembered_hash(self, source: str | os.PathLike[str]) -> tuple[str | None, os.stat_result]:
        """The content hash remembered for ``source`` if its size and mtime are unchanged (else ``None``),
        and the file's current ``stat``. Hashes nothing: the reader hashes a file it reads anyway.

        Raises ``OSError`` when the file cannot be stat'ed (the caller's reader gives the reason).
        """
        path = os.path.abspath(os.fspath(source))
        stat = os.stat(path)
        try:
            known = json.loads(self._source_path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None, stat
        if (isinstance(known, dict) and known.get("path") == path and known.get("size") == stat.st_size
                and known.get("mtime_ns") == stat.st_mtime_ns and isinstance(known.get("hash"), str)):
            return known["hash"], stat
        return None, stat

    def remember(self, source: str | os.PathLike[str], stat: os.stat_result, content_hash: str) -> bool:
        """Record ``source``'s hash, if the file still has the size and mtime of ``stat`` (taken before it
        was read: a file that changed meanwhile is not recorded); ``True`` when recorded."""
        path = os.path.abspath(os.fspath(source))
        try:
            now = os.stat(path)
        except OSError:
            return False
        if (now.st_size, now.st_mtime_ns) != (stat.st_size, stat.st_mtime_ns):
            return False
        record = {"path": path, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "hash": content_hash}
        self._write_params()
        atomic_write_text(json.dumps(record) + "\n", self._source_path(path))
        return True

    # ------------------------------------------------------------------ entries
    def load(self, content_hash: str, variant: str = "") -> tuple[np.ndarray, dict[str, Any]] | None:
        """``(uint16 pixels (1, H, W), record)`` of a stored entry, or ``None`` when there is none (or it is
        unreadable)."""
        path = self.entry_path(content_hash, variant)
        try:
            return read_entry(path)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as err:
            logger.warning("cache entry %s is unreadable (%s); it is written again", path, err)
            return None

    def store(self, content_hash: str, image: MetaTensor, variant: str = "") -> Path:
        """Write the chain's output ``image`` (a ``(1, H, W)`` MetaTensor in [0, 1]) as an entry, atomically."""
        pixels = np.clip(np.rint(image.as_tensor().detach().cpu().numpy() * PIXEL_SCALE), 0, PIXEL_SCALE)
        record = {
            "meta": {k: _jsonable(v) for k, v in image.meta.items() if isinstance(k, str) and k not in ("affine",)
                     and not k.startswith("filename")},
            "affine": image.affine.tolist(),
            "operations": [_trace_entry(op) for op in image.applied_operations],
        }
        self._write_params()
        return atomic_write_bytes(entry_bytes(pixels.astype("<u2"), record), self.entry_path(content_hash, variant))

    def _write_params(self) -> None:
        """``params.json`` beside the entries, so a person can tell what a folder holds (once per process)."""
        if self._params_written:
            return
        target = self.directory / "params.json"
        if not target.is_file():
            atomic_write_text(json.dumps(self.parameters, indent=1, sort_keys=True) + "\n", target)
        self._params_written = True

    def count(self) -> int:
        """The number of entries on disk (walks the folder: for reports and tests, not per item)."""
        entries = self.directory / "entries"
        return sum(1 for p in entries.glob(f"*/*{ENTRY_SUFFIX}")) if entries.is_dir() else 0


def entry_bytes(pixels: np.ndarray, record: Mapping[str, Any]) -> bytes:
    """One entry file: magic, record length (uint64 little-endian), the record as UTF-8 JSON (with the
    pixels' ``shape``), then the pixels as little-endian uint16, C order. One read, no decompression,
    no checksum pass: a torn file is caught by its length."""
    header = json.dumps(dict(record, shape=list(pixels.shape)), sort_keys=True).encode("utf-8")
    return b"".join([ENTRY_MAGIC, struct.pack("<Q", len(header)), header,
                     np.ascontiguousarray(pixels, "<u2").tobytes()])


def read_entry(path: str | os.PathLike[str]) -> tuple[np.ndarray, dict[str, Any]]:
    """``(uint16 pixels, record)`` of an entry file; ``ValueError`` when it is not a whole entry."""
    with open(path, "rb") as handle:
        data = handle.read()
    start = len(ENTRY_MAGIC) + 8
    if len(data) < start or not data.startswith(ENTRY_MAGIC):
        raise ValueError("not a cache entry of this format")
    (length,) = struct.unpack_from("<Q", data, len(ENTRY_MAGIC))
    try:
        record = json.loads(data[start: start + length].decode("utf-8"))
        shape = tuple(int(n) for n in record.pop("shape"))
    except (UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise ValueError("a damaged record") from err
    if len(shape) != 3 or min(shape) < 1 or len(data) - start - length != 2 * int(np.prod(shape)):
        raise ValueError("a truncated or damaged entry")
    return np.frombuffer(data, dtype="<u2", offset=start + length).reshape(shape), record


def _jsonable(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (np.generic,)):
        return value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _trace_entry(entry: Mapping) -> dict[str, Any]:
    """A trace entry as JSON: the record and names; the transform's object id is meaningless later."""
    out = {str(k): _jsonable(v) for k, v in entry.items() if str(k) != TraceKeys.ID}
    return out


def _restored_trace(entry: Mapping) -> dict[str, Any]:
    out = dict(entry)
    out[TraceKeys.ID] = TraceKeys.NONE  # MONAI skips its same-object check for this id (inverse works)
    if TraceKeys.ORIG_SIZE in out:
        out[TraceKeys.ORIG_SIZE] = tuple(out[TraceKeys.ORIG_SIZE])
    return out


def _to_image(pixels: np.ndarray, record: Mapping[str, Any], source: str) -> MetaTensor:
    meta = dict(record["meta"])
    for key in _META_TUPLES:
        if isinstance(meta.get(key), list):
            meta[key] = tuple(meta[key])
    meta["filename_or_obj"] = source
    data = torch.from_numpy(np.multiply(pixels, np.float32(1.0 / PIXEL_SCALE), dtype=np.float32))
    image = MetaTensor(data, affine=torch.tensor(record["affine"], dtype=torch.float64), meta=meta)
    image.applied_operations = [_restored_trace(op) for op in record["operations"]]
    return image


class CachedPreprocessd(MapTransform):
    """The deterministic chain (read -> crop to the breast -> chest wall left -> resize/pad), through a cache.

    The chain is :class:`~mammoclip_monai.data.preprocess.PreprocessMammogramd` (one pass; the same
    output and geometry records as the four separate transforms). With ``cache_dir`` each image is
    read from :class:`PreprocessCache` and only what is missing is computed (and stored); without
    it, every call computes (the same output, up to the cache's 16-bit quantisation of at most
    0.5 / 65535). Either way: a ``(1, H, W)`` float32 MetaTensor in [0, 1] with the allow-listed
    metadata and the geometry records, and boxes in ``box_keys`` moved with the key at the same
    position of ``box_ref_keys`` (default: the first key).

    ``fill_from_data`` as in :class:`~mammoclip_monai.data.transforms.LoadMammogramd`: a datalist's
    ``laterality`` / ``view`` fill the metadata of files whose headers lack them. With
    ``canonical_method="header"`` that laterality decides the flip, so it is part of the entry's name.
    ``crop_options`` are :class:`~mammoclip_monai.data.transforms.CropBreastd`'s settings.
    """

    def __init__(self, keys: KeysCollection = "image", spatial_size: Sequence[int] = (512, 320),
                 cache_dir: str | os.PathLike[str] | None = None, box_keys: KeysCollection = (),
                 box_ref_keys: KeysCollection = (), voi: str = "auto", window_index: int = 0,
                 allow_any_modality: bool = False, canonical_method: str = "image",
                 crop_options: Mapping[str, Any] | None = None, fill_from_data: Sequence[str] = ("laterality", "view"),
                 max_pixels: int = DEFAULT_MAX_PIXELS, decoder: str | None = None,
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.chain = PreprocessMammogramd(
            keys="image", spatial_size=spatial_size, voi=voi, window_index=window_index,
            allow_any_modality=as_flag(allow_any_modality, "allow_any_modality"), max_pixels=max_pixels,
            method=canonical_method, fill_from_data=fill_from_data, decoder=decoder, **dict(crop_options or {}))
        self.parameters = chain_parameters(self.chain)
        self.cache = PreprocessCache(cache_dir, self.parameters) if cache_dir not in (None, "") else None
        self.box_keys = ensure_tuple(box_keys)
        refs = ensure_tuple(box_ref_keys) or (self.keys[0],)
        self.box_ref_keys = refs if len(refs) == len(self.box_keys) else ensure_tuple_rep(refs[0], len(self.box_keys))
        self.fill_from_data = tuple(fill_from_data)
        self.canonical_method = canonical_method

    @property
    def spatial_size(self) -> tuple[int, int]:
        return tuple(self.parameters["spatial_size"])

    @property
    def cache_key(self) -> str | None:
        """The chain key (folder name under ``cache_dir``), or ``None`` without a cache."""
        return self.cache.key if self.cache is not None else None

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        fill = {name: d.get(name) for name in self.fill_from_data}
        images = {}
        for key in self.key_iterator(d):
            d[key] = images[key] = self.preprocess(d[key], fill)
        for box_key, ref_key in zip(self.box_keys, self.box_ref_keys):
            if box_key in d and ref_key in images:
                d[box_key] = geometry.boxes_from_original(d[box_key], images[ref_key])
        return d

    def preprocess(self, source: str | os.PathLike[str], fill: Mapping[str, Any] | None = None) -> MetaTensor:
        """One file through the chain (and the cache); ``fill`` holds the datalist's laterality / view."""
        fill = dict(fill or {})
        source = os.fspath(source)
        if self.cache is None:
            return self._filled(self._compute(source, fill), fill)
        image, _, _ = self._cached(source, fill)
        return self._filled(image, fill)

    def ensure(self, source: str | os.PathLike[str], fill: Mapping[str, Any] | None = None) -> tuple[Path, bool]:
        """Make sure ``source`` is cached: its entry's path, and ``True`` when it had to be computed now.

        Raises the reader's ``MammogramReadError`` for a file it refuses.
        """
        if self.cache is None:
            raise ValueError("ensure() needs a cache_dir")
        _, entry, new = self._cached(os.fspath(source), dict(fill or {}), load=False)
        return entry, new

    def _cached(self, source: str, fill: Mapping[str, Any], load: bool = True
                ) -> tuple[MetaTensor | None, Path, bool]:
        """(image, entry path, computed now). A file is hashed once: by the reader, when it is computed."""
        variant = self._variant(fill)
        try:
            known, stat = self.cache.remembered_hash(source)
        except OSError:
            self._compute(source, fill)  # raises the reader's reason (not found, not a file, ...)
            raise
        unreadable = False
        if known is not None:
            entry = self.cache.entry_path(known, variant)
            if not load and entry.is_file():
                return None, entry, False
            stored = self.cache.load(known, variant) if load else None
            if stored is not None:
                return _to_image(*stored, source), entry, False
            unreadable = load and entry.exists()
        image = self._compute(source, fill)
        digest = image.meta["image_hash"]
        entry = self.cache.entry_path(digest, variant)
        # stored only when the file did not change while it was read; a sound entry is never rewritten
        if self.cache.remember(source, stat, digest) and (unreadable or not entry.is_file()):
            self.cache.store(digest, image, variant)
        return image, entry, True

    def _variant(self, fill: Mapping[str, Any]) -> str:
        if self.canonical_method != "header":
            return ""
        value = fill.get("laterality")
        side = value.strip().upper() if isinstance(value, str) else ""
        return f"lat{side}" if side in ("L", "R") else "latU"

    def _compute(self, source: str, fill: Mapping[str, Any]) -> MetaTensor:
        """The chain's output; the datalist's values enter it only when they decide the flip.

        Otherwise the header's metadata is what gets stored (an entry is shared by every copy of a
        file) and :meth:`_filled` adds the datalist's values afterwards.
        """
        item = dict(fill, image=source) if self.canonical_method == "header" else {"image": source}
        try:
            return self.chain(item)["image"]
        except Exception as err:
            reason = read_error(err)  # the reader's one line, not MONAI's "applying transform" wrapper
            if reason is None:
                raise
            raise reason from None

    def _filled(self, image: MetaTensor, fill: Mapping[str, Any]) -> MetaTensor:
        for name in self.fill_from_data:
            value = fill.get(name)
            if image.meta.get(name) == "unknown" and isinstance(value, str) and value:
                image.meta[name] = value.strip().upper()
        return image


# ----------------------------------------------------------------------------- filling and datasets
def find_cached_chain(transform: Any) -> CachedPreprocessd | None:
    """The :class:`CachedPreprocessd` of a transform or ``Compose`` (first one), if any."""
    if isinstance(transform, CachedPreprocessd):
        return transform
    for step in getattr(transform, "transforms", ()) or ():
        found = find_cached_chain(step)
        if found is not None:
            return found
    return None


class _EnsureItems(torch.utils.data.Dataset):
    """One (source, fill) pair per index; ``__getitem__`` caches it and says what happened."""

    def __init__(self, chain: CachedPreprocessd, jobs: Sequence[tuple[str, dict[str, Any]]]) -> None:
        self.chain, self.jobs = chain, jobs

    def __len__(self) -> int:
        return len(self.jobs)

    def __getitem__(self, index: int) -> dict[str, Any]:
        source, fill = self.jobs[index]
        try:
            entry, new = self.chain.ensure(source, fill)
            return {"file": source, "entry": str(entry), "new": new}
        except MammogramReadError as err:
            return {"file": source, "error": err.reason}
        except OSError as err:
            return {"file": source, "error": err.strerror or type(err).__name__}


def cache_jobs(chain: CachedPreprocessd, items: Sequence[Mapping[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """The distinct (source, fill) pairs that ``items`` ask ``chain`` for (every image key of each item)."""
    seen, jobs = set(), []
    for item in items:
        fill = {name: item.get(name) for name in chain.fill_from_data if isinstance(item.get(name), str)}
        for key in chain.keys:
            source = item.get(key)
            if not isinstance(source, (str, os.PathLike)):
                continue
            variant = (os.fspath(source), chain._variant(fill))
            if variant not in seen:
                seen.add(variant)
                jobs.append((os.fspath(source), fill))
    return jobs


def fill_cache(chain: CachedPreprocessd, items: Sequence[Mapping[str, Any]], workers: int | None = None,
               progress: bool = True, desc: str = "caching", rank: int = 0, world_size: int = 1
               ) -> list[dict[str, Any]]:
    """Compute every missing entry of ``items`` with ``workers`` processes; one result dict per source.

    ``rank`` / ``world_size``: this process fills only its share of the distinct sources (an image
    that two items name is one job, so two ranks never compute it both).

    Results hold ``file`` and either ``new`` (computed now or found) or ``error`` (the reader's reason):
    a bad file is reported, never fatal here. Workers are a ``torch.utils.data.DataLoader``'s (each
    with one torch thread), so the usual fork/spawn caveats are torch's, not ours.
    """

    jobs = cache_jobs(chain, items)[rank::max(1, world_size)]
    workers = resources.available_cores() if workers is None else max(0, int(workers))
    workers = min(workers, len(jobs))
    loader = torch.utils.data.DataLoader(_EnsureItems(chain, jobs), batch_size=None, shuffle=False,
                                         num_workers=workers, collate_fn=lambda x: x)
    return list(progress_bar(loader, desc, total=len(jobs), enabled=progress))


def dataset_bytes(n_items: int, n_keys: int, spatial_size: Sequence[int]) -> int:
    """What ``CacheDataset`` would hold for the deterministic part: float32 ``(1, H, W)`` per image."""
    height, width = (int(s) for s in spatial_size)
    return int(n_items) * int(n_keys) * height * width * 4


def mammogram_dataset(data: Sequence[Mapping[str, Any]], transform: Any, cache_dir: str | None = None,
                      memory_fraction: float = 0.25, workers: int | None = None, progress: bool = True,
                      rank: int = 0, world_size: int = 1) -> torch.utils.data.Dataset:
    """The dataset of a run: streamed from the disk cache, or held in RAM only when it fits.

    * The transform's :class:`CachedPreprocessd` has a cache (the configs' ``cache_dir``): the
      missing entries are filled first (``workers`` processes, a progress bar; under DDP each rank
      fills its share of the distinct images), then a plain ``monai.data.Dataset`` reads each
      item from disk every epoch. Memory does not grow with the number of items; the operating
      system's page cache keeps what fits in RAM.
    * No cache: MONAI's ``CacheDataset`` keeps the deterministic part in RAM when its float32 size
      (items x views x H x W x 4 bytes) is at most ``memory_fraction`` of the available memory;
      otherwise a plain ``Dataset`` recomputes every item every epoch (a warning says so).
    """
    from monai.data import CacheDataset, Dataset

    data = list(data)
    chain = find_cached_chain(transform)
    if chain is not None and chain.cache is not None:
        results = fill_cache(chain, data, workers=workers, progress=progress, rank=rank, world_size=world_size)
        _raise_first_error(results)
        return Dataset(data=data, transform=transform)
    size = chain.spatial_size if chain is not None else None
    available = resources.memory_available()
    if size is not None and available is not None:
        needed = dataset_bytes(len(data), len(chain.keys), size)
        if needed > memory_fraction * available:
            logger.warning("the dataset would need %.1f GB in RAM (%.1f GB available): not caching it; set "
                           "cache_dir to preprocess each image once", needed / 1e9, available / 1e9)
            return Dataset(data=data, transform=transform)
    threads = resources.available_cores() if workers is None else max(1, int(workers))
    return CacheDataset(data=data, transform=transform, cache_rate=1.0, num_workers=threads, progress=progress)


def _raise_first_error(results: Sequence[Mapping[str, Any]]) -> None:
    failed = [r for r in results if "error" in r]
    for result in failed[1:]:
        logger.error("%s: %s", result["file"], result["error"])
    if failed:
        raise MammogramReadError(failed[0]["file"], failed[0]["error"]
                                 + (f" (and {len(failed) - 1} more: see the log)" if len(failed) > 1 else ""))
