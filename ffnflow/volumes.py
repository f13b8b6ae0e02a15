"""Volume I/O: HDF5 and Neuroglancer precomputed (read and write), zarr and N5 (read).

Conventions: in memory every volume is a 3D numpy array with axes (z, y, x);
shapes, offsets, ROIs and chunk sizes are (z, y, x) voxels; resolutions are
(z, y, x) nanometres per voxel.

Volume specs (strings):

* ``path.h5:dataset`` (also ``.hdf5`` / ``.hdf``); the dataset may be nested
  (``group/ds``); relative paths are resolved against the current directory.
* ``precomputed://file:///abs/path`` (local precomputed via cloud-volume,
  which stores x, y, z[, c]; converted to/from z, y, x here).
* ``precomputed://gs://bucket/path`` (also ``s3://``, ``https://``, ``http://``; and
  ``mem://`` for tests): a remote precomputed volume, read-only, read with cloud-volume
  (credentials as cloud-volume finds them, e.g. ``~/.cloudvolume/secrets``). Only the
  chunks a read touches are downloaded; give the dataset a ``roi`` to process a part.
* ``zarr://LOCATION`` and ``n5://LOCATION``, read-only, with LOCATION ``file:///abs/path``,
  ``gs://``, ``s3://``, ``https://``, ``http://`` (``memory://`` for tests); a local path with
  a ``.zarr`` or ``.n5`` part (``/data/em.zarr/0``, ``em.n5/raw/s0``) is the same as
  ``zarr://file://`` / ``n5://file://`` of it. Zarr v2 and v3, OME-Zarr groups (their
  full-resolution level) and N5, read with TensorStore (:mod:`ffnflow.zarr_n5`, which
  says how axes and resolutions are found).

:meth:`Volume.crop` gives a view of a sub-volume whose voxel (0, 0, 0) is the crop's offset.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import h5py
import numpy as np

from ffnflow.atomic import atomic_output
from ffnflow.errors import InputError

__all__ = [
    "ALLOWED_DTYPES",
    "Roi",
    "RoiLike",
    "Volume",
    "VolumeSpec",
    "create_precomputed",
    "create_volume",
    "open_volume",
    "parse_volume_spec",
    "read_volume",
    "write_region",
    "write_volume",
]

ALLOWED_DTYPES: frozenset[np.dtype] = frozenset(
    np.dtype(t)
    for t in ("bool", "uint8", "uint16", "uint32", "uint64", "int32", "int64", "float32", "float64")
)
LayerType = Literal["image", "segmentation"]
Triple = tuple[int, int, int]

_HDF5_RE = re.compile(r"^(?P<path>.+?\.(?:h5|hdf5|hdf)):(?P<dataset>[^:]+)$", re.IGNORECASE)
_PRECOMPUTED_PREFIX = "precomputed://file://"
_REMOTE_PROTOCOLS = ("gs", "s3", "https", "http", "mem")
_LOCAL_ZARR_N5_RE = re.compile(r"^(?:.*/)?[^/:]+\.(?P<fmt>zarr|n5)(?:/[^:]*)?$", re.IGNORECASE)
_SPEC_FORMS = (
    "accepted forms: 'path.h5:dataset' (.h5/.hdf5/.hdf), 'precomputed://file:///abs/path' or, "
    "read-only, 'precomputed://gs://bucket/path' (also s3://, https://, http://), "
    "'zarr://LOCATION' or 'n5://LOCATION' (LOCATION file:///abs/path, gs://, s3://, https://) "
    "and local paths such as '/data/em.zarr/0' or 'em.n5/raw/s0'"
)


# --------------------------------------------------------------------------- ROI


def _triple(values: Sequence[int] | int, what: str) -> Triple:
    vals = (values,) * 3 if isinstance(values, (int, np.integer)) else tuple(values)
    if len(vals) != 3:
        raise ValueError(f"{what} must have 3 (z, y, x) entries, got {values!r}")
    return (int(vals[0]), int(vals[1]), int(vals[2]))


@dataclass(frozen=True)
class Roi:
    """Axis-aligned box in voxels: ``offset`` and ``shape`` are (z, y, x)."""

    offset: Triple
    shape: Triple

    def __post_init__(self) -> None:
        object.__setattr__(self, "offset", _triple(self.offset, "Roi offset"))
        object.__setattr__(self, "shape", _triple(self.shape, "Roi shape"))
        if min(self.shape) < 0:
            raise ValueError(f"Roi shape must be >= 0, got {self.shape}")

    @classmethod
    def from_shape(cls, shape: Sequence[int]) -> Roi:
        """ROI covering a whole volume of ``shape`` (z, y, x)."""
        return cls((0, 0, 0), _triple(shape, "shape"))

    @property
    def end(self) -> Triple:
        """Exclusive end corner (z, y, x)."""
        return _triple([o + s for o, s in zip(self.offset, self.shape)], "end")

    @property
    def empty(self) -> bool:
        return min(self.shape) == 0

    def to_slices(self) -> tuple[slice, slice, slice]:
        """(z, y, x) slices for numpy/h5py indexing."""
        return tuple(slice(o, e) for o, e in zip(self.offset, self.end))  # type: ignore[return-value]

    def grow(self, context: int | Sequence[int]) -> Roi:
        """Grow by ``context`` voxels on both sides of each axis (negative shrinks)."""
        c = _triple(context, "context")
        return Roi(
            [o - k for o, k in zip(self.offset, c)],
            [max(s + 2 * k, 0) for s, k in zip(self.shape, c)],
        )

    def intersect(self, other: Roi) -> Roi:
        """Overlap of two ROIs (shape 0 along an axis where they are disjoint)."""
        begin = [max(a, b) for a, b in zip(self.offset, other.offset)]
        end = [min(a, b) for a, b in zip(self.end, other.end)]
        return Roi(begin, [max(e - b, 0) for b, e in zip(begin, end)])

    def contains(self, other: Roi | Sequence[int]) -> bool:
        """True if ``other`` (a Roi or a z, y, x point) lies inside this ROI."""
        if isinstance(other, Roi):
            return all(a <= b for a, b in zip(self.offset, other.offset)) and all(
                a >= b for a, b in zip(self.end, other.end)
            )
        p = _triple(other, "point")
        return all(o <= v < e for o, v, e in zip(self.offset, p, self.end))


# (z, y, x) slices, a Roi (or any object with .offset/.shape), or (offset, shape).
RoiLike = Roi | tuple[slice, slice, slice] | tuple[Sequence[int], Sequence[int]] | Any


# -------------------------------------------------------------------- specs


@dataclass(frozen=True)
class VolumeSpec:
    """Parsed volume spec. ``path`` is absolute (None for a remote volume); ``dataset``
    (HDF5) or ``url`` (precomputed, zarr, n5: the normalised spec)."""

    kind: Literal["hdf5", "precomputed", "zarr", "n5"]
    path: Path | None
    dataset: str | None = None
    url: str | None = None

    def __str__(self) -> str:
        return f"{self.path}:{self.dataset}" if self.kind == "hdf5" else str(self.url)

    @property
    def remote(self) -> bool:
        """True for a volume that is not on a local disk."""
        return self.path is None

    @property
    def location(self) -> str:
        """Where a zarr / N5 volume is: a TensorStore key-value store URL."""
        return str(self.url).partition("://")[2]

    def local_path(self, what: str) -> Path:
        """The local path of a writable volume, or an InputError saying why ``what`` cannot
        use this one (remote volumes, zarr and N5 are read-only)."""
        if self.kind in ("zarr", "n5"):
            raise InputError(
                f"volume {self}: {what} needs an HDF5 or precomputed volume; ffnflow reads "
                "zarr and N5 volumes, read-only"
            )
        if self.path is None:
            raise InputError(
                f"volume {self}: {what} needs a local volume; remote volumes are read-only"
            )
        return self.path


def _zarr_n5_spec(fmt: str, location: str, spec: str) -> VolumeSpec:
    from ffnflow.zarr_n5 import LOCATION_PROTOCOLS

    protocol, sep, rest = location.partition("://")
    rest = rest.rstrip("/")
    if not sep or protocol not in LOCATION_PROTOCOLS or not rest.strip("/"):
        raise InputError(f"volume spec {spec!r}: unsupported {fmt} location; {_SPEC_FORMS}")
    if protocol != "file":
        return VolumeSpec(fmt, None, url=f"{fmt}://{protocol}://{rest}")  # type: ignore[arg-type]
    if not rest.startswith("/"):
        raise InputError(f"volume spec {spec!r}: {fmt} path must be absolute; {_SPEC_FORMS}")
    path = Path(rest)
    return VolumeSpec(fmt, path, url=f"{fmt}://file://{path}")  # type: ignore[arg-type]


def parse_volume_spec(spec: str | VolumeSpec) -> VolumeSpec:
    """Parse ``path.h5:dataset``, ``precomputed://file:///abs/path``, a remote
    ``precomputed://gs://bucket/path`` (also s3, https, http, mem; read-only),
    ``zarr://LOCATION`` / ``n5://LOCATION`` or a local ``.zarr`` / ``.n5`` path (read-only)."""
    if isinstance(spec, VolumeSpec):
        return spec
    if not isinstance(spec, str) or not spec.strip():
        raise InputError(f"volume spec {spec!r}: expected a non-empty string; {_SPEC_FORMS}")
    s = spec.strip()
    for fmt in ("zarr", "n5"):
        if s.lower().startswith(f"{fmt}://"):
            return _zarr_n5_spec(fmt, s[len(fmt) + 3 :], spec)
    m = _LOCAL_ZARR_N5_RE.match(s)
    if m is not None and "://" not in s:
        local = Path(s).expanduser().resolve()
        return _zarr_n5_spec(m.group("fmt").lower(), f"file://{local}", spec)
    if s.startswith("precomputed://"):
        if not s.startswith(_PRECOMPUTED_PREFIX):
            protocol, sep, rest = s[len("precomputed://") :].partition("://")
            if not sep or protocol not in _REMOTE_PROTOCOLS or not rest.strip("/"):
                raise InputError(
                    f"volume spec {spec!r}: unsupported precomputed location; {_SPEC_FORMS}"
                )
            return VolumeSpec("precomputed", None, url=s.rstrip("/"))
        local = s[len(_PRECOMPUTED_PREFIX) :].rstrip("/")
        if not local.startswith("/"):
            raise InputError(
                f"volume spec {spec!r}: precomputed path must be absolute; {_SPEC_FORMS}"
            )
        path = Path(local)
        return VolumeSpec("precomputed", path, url=f"{_PRECOMPUTED_PREFIX}{path}")
    m = _HDF5_RE.match(s)
    if m is None or not m.group("dataset").strip("/"):
        raise InputError(f"volume spec {spec!r}: unrecognised form; {_SPEC_FORMS}")
    return VolumeSpec(
        "hdf5", Path(m.group("path")).expanduser().resolve(), dataset=m.group("dataset").strip("/")
    )


# ------------------------------------------------------------------- helpers


def _check_dtype(dtype: Any, spec: Any) -> np.dtype:
    dt = np.dtype(dtype)
    if dt not in ALLOWED_DTYPES:
        allowed = ", ".join(sorted(str(d) for d in ALLOWED_DTYPES))
        raise InputError(f"volume {spec}: unsupported dtype {dt}; allowed: {allowed}")
    return dt


def _resolution(res: Any, spec: Any) -> tuple[float, float, float]:
    try:
        vals = tuple(float(v) for v in np.asarray(res, dtype=float).reshape(-1))
    except (TypeError, ValueError):
        vals = ()
    if len(vals) != 3 or not all(np.isfinite(v) and v > 0 for v in vals):
        raise InputError(
            f"volume {spec}: resolution_nm must be 3 positive (z, y, x) numbers, got {res!r}"
        )
    return vals  # type: ignore[return-value]


def _chunks(chunk_zyx: Sequence[int] | None, shape: Triple, spec: Any) -> Triple:
    if chunk_zyx is None:
        return _triple([min(s, 64) for s in shape], "chunk")
    try:
        c = _triple(chunk_zyx, "chunk_zyx")
    except (TypeError, ValueError) as e:
        raise InputError(f"volume {spec}: bad chunk_zyx {chunk_zyx!r}: {e}") from None
    if min(c) <= 0:
        raise InputError(f"volume {spec}: chunk_zyx must be positive, got {chunk_zyx!r}")
    return _triple([min(a, s) for a, s in zip(c, shape)], "chunk")


def _shape(shape_zyx: Sequence[int], spec: Any) -> Triple:
    try:
        shp = _triple(shape_zyx, "shape")
    except (TypeError, ValueError) as e:
        raise InputError(f"volume {spec}: bad shape {shape_zyx!r}: {e}") from None
    if min(shp) <= 0:
        raise InputError(f"volume {spec}: shape must be positive (z, y, x), got {shape_zyx!r}")
    return shp


def _check_layer_type(layer_type: str, spec: Any) -> None:
    if layer_type not in ("image", "segmentation"):
        raise InputError(
            f"volume {spec}: layer_type must be 'image' or 'segmentation', got {layer_type!r}"
        )


def _segmentation_array(array: np.ndarray, spec: Any) -> np.ndarray:
    """Cast labels to uint32/uint64 (segmentation layers); reject floats/negatives."""
    if array.dtype in (np.uint32, np.uint64):
        return array
    if array.dtype == bool or array.dtype.kind == "u":
        return array.astype(np.uint32)
    if array.dtype.kind != "i":
        raise InputError(
            f"volume {spec}: segmentation needs integer labels, got dtype {array.dtype}"
        )
    lo, hi = (int(array.min()), int(array.max())) if array.size else (0, 0)
    if lo < 0:
        raise InputError(f"volume {spec}: segmentation labels must be >= 0, found {lo}")
    return array.astype(np.uint32 if hi <= np.iinfo(np.uint32).max else np.uint64)


def _cast_region(array: np.ndarray, dtype: np.dtype, spec: Any) -> np.ndarray:
    """Cast a region to the volume dtype if lossless (safe cast or ints in range)."""
    if array.dtype == dtype or np.can_cast(array.dtype, dtype, "safe"):
        return array.astype(dtype, copy=False)
    if array.dtype.kind in "biu" and dtype.kind in "iu" and array.size:
        info = np.iinfo(dtype)
        if info.min <= int(array.min()) and int(array.max()) <= info.max:
            return array.astype(dtype)
    raise InputError(
        f"volume {spec}: cannot write {array.dtype} data losslessly into a {dtype} volume"
    )


def _attr_value(value: Any) -> Any:
    return json.dumps(value, sort_keys=True) if isinstance(value, (dict, type(None))) else value


def _set_hdf5_attrs(
    ds: h5py.Dataset,
    res: Sequence[float],
    layer_type: str,
    attrs: Mapping[str, Any] | None,
    spec: Any,
) -> None:
    ds.attrs["resolution_nm"] = np.asarray(res, dtype=np.float64)
    ds.attrs["axes"] = "zyx"
    ds.attrs["layer_type"] = layer_type
    for key, value in (attrs or {}).items():
        try:
            ds.attrs[str(key)] = _attr_value(value)
        except (TypeError, ValueError) as e:
            raise InputError(
                f"volume {spec}: attribute {key!r} cannot be stored in HDF5: {e}"
            ) from None


def _list_datasets(f: h5py.File) -> list[str]:
    names: list[str] = []
    f.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
    return names


def _open_h5(path: Path, mode: str, spec: Any) -> h5py.File:
    if not path.is_file():
        raise InputError(f"volume {spec}: HDF5 file {path} does not exist")
    try:
        return h5py.File(path, mode)
    except OSError as e:
        raise InputError(f"volume {spec}: cannot open {path} as HDF5: {e}") from None


def _get_dataset(f: h5py.File, vs: VolumeSpec) -> h5py.Dataset:
    obj = f.get(vs.dataset)
    if not isinstance(obj, h5py.Dataset):
        existing = ", ".join(_list_datasets(f)) or "(none)"
        what = "is a group, not a dataset" if obj is not None else "does not exist"
        raise InputError(
            f"volume {vs}: dataset '{vs.dataset}' {what} in {vs.path}; datasets present: {existing}"
        )
    return obj


def _cloudvolume(url: str, **kw: Any) -> Any:
    from cloudvolume import CloudVolume  # heavy import; only when needed

    return CloudVolume(url, mip=0, fill_missing=False, progress=False, **kw)


# In-memory cache of decoded chunks of one remote volume, per process.
REMOTE_CHUNK_CACHE_BYTES = 512 * 2**20
_remote_volumes: dict[tuple[str, int], Any] = {}


def _remote_cloudvolume(url: str) -> Any:
    """One reader per remote volume and process (its info is fetched once, and the chunks
    it decoded are kept in a :data:`REMOTE_CHUNK_CACHE_BYTES` LRU, so that the many small
    reads of nearby ROIs, e.g. the resegmentation's, download each chunk once). Keyed by
    process id: a forked worker opens its own connections."""
    key = (url, os.getpid())
    if key not in _remote_volumes:
        _remote_volumes[key] = _cloudvolume(url, lru_bytes=REMOTE_CHUNK_CACHE_BYTES)
    return _remote_volumes[key]


# ------------------------------------------------------------------- reading


class Volume:
    """Lazy reader for one 3D volume. Use :func:`open_volume`.

    ``shape`` is (z, y, x) voxels, ``resolution_nm`` (z, y, x) nm or None.
    """

    def __init__(
        self,
        spec: VolumeSpec,
        shape: Triple,
        dtype: np.dtype,
        resolution_nm: tuple[float, float, float] | None,
    ):
        self.spec = spec
        self.shape = shape
        self.dtype = dtype
        self.resolution_nm = resolution_nm

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.spec)!r}, shape={self.shape}, dtype={self.dtype})"

    @property
    def roi(self) -> Roi:
        """ROI covering the whole volume."""
        return Roi.from_shape(self.shape)

    def to_roi(self, roi: RoiLike | None) -> Roi:
        """Normalise slices / Roi / (offset, shape) to a non-empty Roi inside the volume.

        Slices are literal (no negative-index wrap-around); step must be 1.
        """
        if roi is None:
            return self.roi
        try:
            if isinstance(roi, tuple) and len(roi) == 3 and all(isinstance(s, slice) for s in roi):
                if any(s.step not in (None, 1) for s in roi):
                    raise ValueError("slice step must be 1")
                start = [0 if s.start is None else int(s.start) for s in roi]
                stop = [n if s.stop is None else int(s.stop) for s, n in zip(roi, self.shape)]
                r = Roi(start, [b - a for a, b in zip(start, stop)])
            elif hasattr(roi, "offset") and hasattr(roi, "shape"):
                r = Roi(roi.offset, roi.shape)
            else:
                offset, shape = roi
                r = Roi(offset, shape)
        except (TypeError, ValueError) as e:
            raise InputError(f"volume {self.spec}: invalid ROI {roi!r}: {e}") from None
        if r.empty or not self.roi.contains(r):
            raise InputError(
                f"volume {self.spec}: ROI offset={r.offset} shape={r.shape} (z,y,x) is empty or "
                f"outside the volume shape {self.shape}"
            )
        return r

    def read(self, roi: RoiLike | None = None) -> np.ndarray:
        """Read ``roi`` (default: everything) as a (z, y, x) array; only that region is loaded."""
        return self._read(self.to_roi(roi))

    def _read(self, roi: Roi) -> np.ndarray:
        raise NotImplementedError

    def crop(self, roi: RoiLike) -> Volume:
        """A read-only view of ``roi`` (inside this volume): its voxel (0, 0, 0) is the ROI's
        offset, its shape the ROI's."""
        return _CroppedVolume(self, self.to_roi(roi))


class _CroppedVolume(Volume):
    def __init__(self, base: Volume, roi: Roi):
        super().__init__(base.spec, roi.shape, base.dtype, base.resolution_nm)
        self.base = base
        self.offset = roi.offset

    def __repr__(self) -> str:
        return f"{super().__repr__()[:-1]}, crop offset={self.offset})"

    def _read(self, roi: Roi) -> np.ndarray:
        return self.base._read(
            Roi(tuple(a + b for a, b in zip(roi.offset, self.offset)), roi.shape)
        )


class _Hdf5Volume(Volume):
    def _read(self, roi: Roi) -> np.ndarray:
        with _open_h5(self.spec.path, "r", self.spec) as f:
            return _get_dataset(f, self.spec)[roi.to_slices()]


class _PrecomputedVolume(Volume):
    def __init__(self, spec: VolumeSpec, cv: Any):
        scale = cv.info["scales"][0]
        self._cv = cv
        self._voxel_offset = tuple(int(v) for v in scale["voxel_offset"])  # x, y, z
        super().__init__(
            spec,
            _triple(list(reversed(scale["size"])), "shape"),
            np.dtype(cv.dtype),
            _resolution(list(reversed(scale["resolution"])), spec),
        )

    def _read(self, roi: Roi) -> np.ndarray:
        from cloudvolume.exceptions import EmptyVolumeException

        (z0, y0, x0), (z1, y1, x1) = roi.offset, roi.end
        ox, oy, oz = self._voxel_offset
        try:
            data = self._cv[x0 + ox : x1 + ox, y0 + oy : y1 + oy, z0 + oz : z1 + oz]
        except EmptyVolumeException as e:
            raise InputError(
                f"volume {self.spec}: chunk files missing for ROI {roi}: {e}"
            ) from None
        data = np.asarray(data)
        if data.ndim == 4:
            data = data[..., 0]
        return np.ascontiguousarray(data.transpose(2, 1, 0))


class _ZarrN5Volume(Volume):
    def __init__(self, spec: VolumeSpec, array: Any):
        super().__init__(
            spec,
            array.shape,
            array.dtype,
            None if array.resolution_nm is None else _resolution(array.resolution_nm, spec),
        )
        self._array = array

    def _read(self, roi: Roi) -> np.ndarray:
        return self._array.read(roi.offset, roi.shape)


def open_volume(spec: str | VolumeSpec) -> Volume:
    """Open and validate a volume (exists, 3D, supported dtype); no voxel data is read."""
    vs = parse_volume_spec(spec)
    if vs.kind in ("zarr", "n5"):
        from ffnflow.zarr_n5 import open_chunked_array

        array = open_chunked_array(vs.kind, vs.location, str(vs))  # type: ignore[arg-type]
        _check_dtype(array.dtype, vs)
        return _ZarrN5Volume(vs, array)
    if vs.kind == "hdf5":
        with _open_h5(vs.path, "r", vs) as f:
            ds = _get_dataset(f, vs)
            if ds.ndim != 3:
                raise InputError(
                    f"volume {vs}: expected a 3D (z, y, x) dataset, got shape {ds.shape}"
                )
            dtype = _check_dtype(ds.dtype, vs)
            res = ds.attrs.get("resolution_nm", f.attrs.get("resolution_nm"))
            return _Hdf5Volume(
                vs, _triple(ds.shape, "shape"), dtype, None if res is None else _resolution(res, vs)
            )
    if not vs.remote and not (vs.path / "info").is_file():
        raise InputError(f"volume {vs}: no precomputed volume at {vs.path} (missing 'info' file)")
    try:
        cv = _remote_cloudvolume(vs.url) if vs.remote else _cloudvolume(vs.url)
    except Exception as e:  # cloud-volume raises many types for a missing or broken info
        raise InputError(f"volume {vs}: cannot open precomputed volume: {e}") from None
    if int(cv.num_channels) != 1:
        raise InputError(
            f"volume {vs}: expected a single-channel 3D volume, got {cv.num_channels} channels"
        )
    _check_dtype(cv.dtype, vs)
    return _PrecomputedVolume(vs, cv)


def read_volume(spec: str | VolumeSpec, roi: RoiLike | None = None) -> np.ndarray:
    """Read ``roi`` (default: all) of ``spec`` as a (z, y, x) array."""
    return open_volume(spec).read(roi)


# ------------------------------------------------------------------- writing


def _prepare(spec: str | VolumeSpec, array: Any, layer_type: str) -> tuple[VolumeSpec, np.ndarray]:
    vs = parse_volume_spec(spec)
    _check_layer_type(layer_type, vs)
    arr = np.asarray(array)
    if arr.ndim != 3:
        raise InputError(f"volume {vs}: expected a 3D (z, y, x) array, got shape {arr.shape}")
    _shape(arr.shape, vs)
    _check_dtype(arr.dtype, vs)
    if layer_type == "segmentation":
        arr = _segmentation_array(arr, vs)
    return vs, arr


def _precomputed_info(
    shape: Triple,
    dtype: np.dtype,
    res: Sequence[float],
    layer_type: str,
    chunks: Triple,
    voxel_offset: Triple = (0, 0, 0),
) -> dict:
    from cloudvolume import CloudVolume

    seg = layer_type == "segmentation" and dtype in (np.uint32, np.uint64)
    return CloudVolume.create_new_info(
        num_channels=1,
        layer_type=layer_type,
        data_type=str(dtype),
        encoding="compressed_segmentation" if seg else "raw",
        resolution=list(reversed([float(r) for r in res])),
        voxel_offset=list(reversed(voxel_offset)),
        volume_size=list(reversed(shape)),
        chunk_size=list(reversed(chunks)),
    )


def write_volume(
    spec: str | VolumeSpec,
    array: np.ndarray,
    resolution_nm: Sequence[float],
    layer_type: LayerType = "image",
    attrs: Mapping[str, Any] | None = None,
    chunk_zyx: Sequence[int] | None = None,
) -> VolumeSpec:
    """Atomically write a whole (z, y, x) array; ``resolution_nm`` is (z, y, x) nm.

    HDF5: gzip, chunks (default min(shape, 64)), attrs ``resolution_nm``/``axes``/
    ``layer_type`` plus ``attrs`` (dicts stored as JSON); other datasets of an
    existing file are kept. Precomputed: written to a temp directory then renamed
    (``attrs`` stored in the info under ``ffnflow_attrs``). Segmentation labels are
    cast to uint32/uint64; bool images to uint8 for precomputed.
    """
    vs, arr = _prepare(spec, array, layer_type)
    vs.local_path("writing")
    res = _resolution(resolution_nm, vs)
    chunks = _chunks(chunk_zyx, _triple(arr.shape, "shape"), vs)
    if vs.kind == "hdf5":
        _write_hdf5(vs, arr, res, layer_type, attrs, chunks)
    else:
        if arr.dtype == bool:
            arr = arr.astype(np.uint8)
        info = _precomputed_info(_triple(arr.shape, "shape"), arr.dtype, res, layer_type, chunks)
        if attrs:
            info["ffnflow_attrs"] = json.loads(json.dumps(dict(attrs), default=str))
        with atomic_output(vs.path) as tmp:
            cv = _cloudvolume(f"{_PRECOMPUTED_PREFIX}{tmp}", info=info)
            cv.commit_info()
            cv[:, :, :] = np.asfortranarray(arr.transpose(2, 1, 0))
    return vs


def _copy_except(src: h5py.Group, dst: h5py.Group, skip: str, spec: VolumeSpec) -> None:
    """Copy ``src`` into ``dst`` except the object at relative path ``skip``."""
    head, _, rest = skip.partition("/")
    dst.attrs.update(src.attrs)
    for name, obj in src.items():
        if name != head:
            src.copy(obj, dst, name=name)
        elif rest:
            if not isinstance(obj, h5py.Group):
                raise InputError(
                    f"volume {spec}: '{obj.name}' in {spec.path} is a dataset, not a group"
                )
            _copy_except(obj, dst.create_group(name), rest, spec)


def _write_hdf5(
    vs: VolumeSpec,
    arr: np.ndarray,
    res: Sequence[float],
    layer_type: str,
    attrs: Mapping[str, Any] | None,
    chunks: Triple,
) -> None:
    with atomic_output(vs.path) as tmp:
        with h5py.File(tmp, "w") as out:
            if vs.path.exists():
                with _open_h5(vs.path, "r", vs) as old:
                    _copy_except(old, out, vs.dataset, vs)
            ds = out.create_dataset(vs.dataset, data=arr, chunks=chunks, compression="gzip")
            _set_hdf5_attrs(ds, res, layer_type, attrs, vs)


def create_precomputed(
    url: str | VolumeSpec,
    shape_zyx: Sequence[int],
    dtype: Any,
    resolution_nm: Sequence[float],
    layer_type: LayerType = "image",
    chunk_zyx: Sequence[int] | None = None,
    overwrite: bool = False,
    voxel_offset_zyx: Sequence[int] = (0, 0, 0),
) -> VolumeSpec:
    """Create an empty precomputed volume (info only) for block-wise writes; not atomic.

    ``voxel_offset_zyx``: where its voxel 0 lies in a larger volume's frame (Neuroglancer
    shows it there); reads and writes through ffnflow stay in the volume's own frame."""
    vs = parse_volume_spec(url)
    if vs.kind != "precomputed":
        raise InputError(
            f"volume {vs}: create_precomputed needs a 'precomputed://file:///abs/path' spec"
        )
    vs.local_path("writing")
    _check_layer_type(layer_type, vs)
    shape = _shape(shape_zyx, vs)
    dt = _check_dtype(dtype, vs)
    if layer_type == "segmentation" and dt not in (np.uint32, np.uint64):
        raise InputError(f"volume {vs}: segmentation layers need uint32 or uint64, got {dt}")
    if dt == np.bool_:
        raise InputError(f"volume {vs}: precomputed layers cannot store bool; use uint8")
    if (vs.path / "info").exists() and not overwrite:
        raise InputError(
            f"volume {vs}: {vs.path} already exists (pass overwrite=True to replace its info)"
        )
    info = _precomputed_info(
        shape,
        dt,
        _resolution(resolution_nm, vs),
        layer_type,
        _chunks(chunk_zyx, shape, vs),
        _triple(voxel_offset_zyx, "voxel_offset_zyx"),
    )
    _cloudvolume(vs.url, info=info).commit_info()
    return vs


def create_volume(
    spec: str | VolumeSpec,
    shape_zyx: Sequence[int],
    dtype: Any,
    resolution_nm: Sequence[float],
    layer_type: LayerType = "image",
    chunk_zyx: Sequence[int] | None = None,
    attrs: Mapping[str, Any] | None = None,
) -> VolumeSpec:
    """Create an empty (zero-filled) volume of either kind for :func:`write_region`; not atomic.

    HDF5: adds the dataset to the file (created if missing); errors if the dataset exists.
    """
    vs = parse_volume_spec(spec)
    if vs.kind == "precomputed":
        return create_precomputed(vs, shape_zyx, dtype, resolution_nm, layer_type, chunk_zyx)
    vs.local_path("creating a volume")
    _check_layer_type(layer_type, vs)
    shape = _shape(shape_zyx, vs)
    dt = _check_dtype(dtype, vs)
    res = _resolution(resolution_nm, vs)
    vs.path.parent.mkdir(parents=True, exist_ok=True)
    try:
        f = h5py.File(vs.path, "a")
    except OSError as e:
        raise InputError(f"volume {vs}: cannot open {vs.path} as HDF5: {e}") from None
    with f:
        if vs.dataset in f:
            raise InputError(f"volume {vs}: dataset '{vs.dataset}' already exists in {vs.path}")
        ds = f.create_dataset(
            vs.dataset,
            shape=shape,
            dtype=dt,
            chunks=_chunks(chunk_zyx, shape, vs),
            compression="gzip",
            fillvalue=0,
        )
        _set_hdf5_attrs(ds, res, layer_type, attrs, vs)
    return vs


def write_region(spec: str | VolumeSpec, array: np.ndarray, offset_zyx: Sequence[int]) -> None:
    """Write a (z, y, x) block at ``offset_zyx`` into an existing volume; not atomic.

    Data are cast to the volume dtype when lossless. Precomputed writes must be
    chunk-aligned (the end may instead touch the volume boundary).
    """
    vol = open_volume(spec)
    if not isinstance(vol, (_Hdf5Volume, _PrecomputedVolume)) or vol.spec.remote:
        raise InputError(f"volume {vol.spec}: remote, zarr and N5 volumes and crops are read-only")
    arr = np.asarray(array)
    if arr.ndim != 3:
        raise InputError(
            f"volume {vol.spec}: region must be a 3D (z, y, x) array, got shape {arr.shape}"
        )
    roi = vol.to_roi(Roi(offset_zyx, arr.shape))
    arr = _cast_region(arr, vol.dtype, vol.spec)
    if isinstance(vol, _Hdf5Volume):
        with _open_h5(vol.spec.path, "a", vol.spec) as f:
            _get_dataset(f, vol.spec)[roi.to_slices()] = arr
        return
    assert isinstance(vol, _PrecomputedVolume)
    chunk = tuple(reversed(vol._cv.info["scales"][0]["chunk_sizes"][0]))
    for o, e, n, c in zip(roi.offset, roi.end, vol.shape, chunk):  # grid starts at voxel_offset
        if o % c or (e % c and e != n):
            raise InputError(
                f"volume {vol.spec}: region offset={roi.offset} shape={roi.shape} (z,y,x) is not aligned "
                f"to chunk size {chunk} (z,y,x)"
            )
    (z0, y0, x0), (z1, y1, x1) = roi.offset, roi.end
    ox, oy, oz = vol._voxel_offset
    vol._cv[x0 + ox : x1 + ox, y0 + oy : y1 + oy, z0 + oz : z1 + oz] = np.asfortranarray(
        arr.transpose(2, 1, 0)
    )
