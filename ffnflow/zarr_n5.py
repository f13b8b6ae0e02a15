"""Read zarr (v2, v3, OME-Zarr) and N5 arrays as (z, y, x) volumes, with TensorStore.

A location is a TensorStore key-value store URL: ``file:///abs/path``, ``gs://bucket/path``,
``s3://bucket/path``, ``https://host/path`` (``memory://`` in tests). It names either an
array or an OME-Zarr group (``.zattrs`` / ``zarr.json`` with ``multiscales``), whose first
(full-resolution) dataset is then read. An array that its parent group lists as a level
takes that level's axes and scale.

Axis order: named axes are used when the data has them (OME-Zarr ``axes``, zarr v3
``dimension_names``, N5 ``axes``); otherwise a zarr array is taken as (..., z, y, x), the
numpy order in which EM volumes are written, and an N5 array as (x, y, z, ...), N5's own
order. Every axis other than z, y and x (channel, time) must have size 1.

Resolution (z, y, x nm) comes from OME-Zarr scales with their axis units, or from the
units TensorStore reads from zarr v3 / N5 metadata (N5 ``resolution`` + ``units``, or
``pixelResolution``); None when the data does not say.

Arrays are opened read-only. Each process keeps one TensorStore context, whose cache pool
(:data:`CACHE_BYTES`) keeps decoded chunks, and one open array per location.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from ffnflow.errors import InputError

__all__ = ["CACHE_BYTES", "ChunkedArray", "LOCATION_PROTOCOLS", "open_chunked_array"]

Format = Literal["zarr", "n5"]
Triple = tuple[int, int, int]

LOCATION_PROTOCOLS = ("file", "gs", "s3", "http", "https", "memory")
CACHE_BYTES = 512 * 2**20
_NM_PER_UNIT = {
    "nm": 1.0,
    "nanometer": 1.0,
    "um": 1e3,
    "µm": 1e3,
    "micrometer": 1e3,
    "micron": 1e3,
    "mm": 1e6,
    "millimeter": 1e6,
    "angstrom": 0.1,
    "Å": 0.1,
    "pm": 1e-3,
    "picometer": 1e-3,
}
_contexts: dict[int, Any] = {}
_arrays: dict[tuple[str, str, int], ChunkedArray] = {}


def tensorstore_context() -> Any:
    """This process's TensorStore context (cache pool of :data:`CACHE_BYTES`)."""
    import tensorstore as ts

    pid = os.getpid()
    if pid not in _contexts:
        _contexts[pid] = ts.Context({"cache_pool": {"total_bytes_limit": CACHE_BYTES}})
    return _contexts[pid]


@dataclass(frozen=True)
class ChunkedArray:
    """An open zarr / N5 array seen as a (z, y, x) volume.

    ``axes`` are the stored dimensions of z, y and x; ``fixed`` the other (size-1)
    dimensions; ``origin`` the array's index origin, per stored dimension.
    """

    name: str
    store: Any
    axes: Triple
    fixed: tuple[int, ...]
    origin: tuple[int, ...]
    shape: Triple
    dtype: np.dtype
    resolution_nm: tuple[float, float, float] | None

    def read(self, offset_zyx: Triple, shape_zyx: Triple) -> np.ndarray:
        """The (z, y, x) box at ``offset_zyx`` of ``shape_zyx`` voxels (inside the array)."""
        index: list[Any] = [None] * len(self.origin)
        for d in self.fixed:
            index[d] = self.origin[d]
        for d, o, n in zip(self.axes, offset_zyx, shape_zyx):
            index[d] = slice(self.origin[d] + o, self.origin[d] + o + n)
        try:
            data = self.store[tuple(index)].read().result()
        except Exception as e:  # TensorStore raises ValueError and friends for I/O errors
            raise InputError(
                f"volume {self.name}: cannot read z,y,x box at {tuple(offset_zyx)} of "
                f"{tuple(shape_zyx)}: {e}"
            ) from None
        kept = sorted(self.axes)
        return np.ascontiguousarray(np.asarray(data).transpose([kept.index(d) for d in self.axes]))


def _kvstore(location: str) -> Any:
    import tensorstore as ts

    return ts.KvStore.open(location.rstrip("/") + "/", context=tensorstore_context()).result()


def _read_json(kvstore: Any, key: str) -> dict | None:
    result = kvstore.read(key).result()
    if result.state != "value":
        return None
    try:
        return json.loads(bytes(result.value))
    except ValueError:
        return None


def _ome_multiscale(attrs: dict | None) -> dict | None:
    if not attrs:
        return None
    scales = attrs.get("multiscales") or (attrs.get("ome") or {}).get("multiscales")
    return scales[0] if isinstance(scales, list) and scales else None


def _axis_names(axes: Any) -> list[str] | None:
    if not isinstance(axes, list) or not axes:
        return None
    names = [a.get("name") if isinstance(a, dict) else a for a in axes]
    return [str(n).lower() for n in names] if all(isinstance(n, str) for n in names) else None


def _ome_resolution(multiscale: dict, names: list[str], level: int) -> tuple[float, ...] | None:
    """nm per stored dimension of dataset ``level``, or None without spatial units."""
    axes = multiscale.get("axes") or []
    scale = [1.0] * len(names)
    transforms = list(multiscale["datasets"][level].get("coordinateTransformations") or [])
    transforms += list(multiscale.get("coordinateTransformations") or [])
    for t in transforms:
        if (
            isinstance(t, dict)
            and t.get("type") == "scale"
            and len(t.get("scale", [])) == len(names)
        ):
            scale = [a * float(b) for a, b in zip(scale, t["scale"])]
    out = []
    for name, axis, s in zip(names, axes, scale):
        unit = axis.get("unit") if isinstance(axis, dict) else None
        if name in ("z", "y", "x"):
            if unit not in _NM_PER_UNIT:
                return None
            out.append(s * _NM_PER_UNIT[unit])
        else:
            out.append(1.0)
    return tuple(out)


def _units_resolution(store: Any) -> tuple[float, ...] | None:
    units = store.schema.dimension_units
    if units is None or any(u is None for u in units):
        return None
    out = []
    for u in units:
        factor = _NM_PER_UNIT.get(u.base_unit)
        if u.base_unit == "":
            factor = 1.0  # a unitless (channel) dimension
        if factor is None:
            return None
        out.append(u.multiplier * factor)
    return tuple(out)


def _n5_pixel_resolution(attrs: dict | None, rank: int) -> tuple[float, ...] | None:
    res = (attrs or {}).get("pixelResolution")
    if not isinstance(res, dict):
        return None
    dims, unit = res.get("dimensions"), res.get("unit")
    if not isinstance(dims, list) or len(dims) != rank or unit not in _NM_PER_UNIT:
        return None
    return tuple(float(d) * _NM_PER_UNIT[unit] for d in dims)


def _parent_level(location: str) -> tuple[dict | None, int]:
    """The OME-Zarr multiscale of the group above the array at ``location`` and the
    array's level in it, or (None, 0) when the parent is no such group or does not list it."""
    parent, _, leaf = location.rstrip("/").rpartition("/")
    if not parent or parent.endswith(":/"):
        return None, 0
    try:
        kvstore = _kvstore(parent)
        attrs = (_read_json(kvstore, "zarr.json") or {}).get("attributes") or _read_json(
            kvstore, ".zattrs"
        )
    except Exception:  # an unreadable parent (e.g. a bucket's root): not a group we can use
        return None, 0
    multiscale = _ome_multiscale(attrs)
    for level, dataset in enumerate((multiscale or {}).get("datasets") or []):
        if isinstance(dataset, dict) and str(dataset.get("path", "")).strip("/") == leaf:
            return multiscale, level
    return None, 0


def open_chunked_array(fmt: Format, location: str, name: str | None = None) -> ChunkedArray:
    """Open the zarr or N5 array (or OME-Zarr group) at ``location`` (a TensorStore
    key-value store URL) as a (z, y, x) volume; ``name`` is how errors call it."""
    import tensorstore as ts

    name = name or f"{fmt}://{location}"
    key = (fmt, location, os.getpid())
    if key in _arrays:
        return _arrays[key]
    try:
        kvstore = _kvstore(location)
        array_location, names, multiscale, level = location.rstrip("/"), None, None, 0
        if fmt == "zarr":
            v3 = _read_json(kvstore, "zarr.json")
            v2_attrs = _read_json(kvstore, ".zattrs")
            group = (v3 or {}).get("node_type") == "group" or (
                v3 is None and _read_json(kvstore, ".zarray") is None
            )
            if group:
                multiscale = _ome_multiscale((v3 or {}).get("attributes") or v2_attrs)
                if multiscale is None or not multiscale.get("datasets"):
                    what = (
                        "a zarr group"
                        if v3 or v2_attrs or _read_json(kvstore, ".zgroup")
                        else ("nothing readable as zarr (no .zarray, .zattrs or zarr.json)")
                    )
                    raise InputError(
                        f"volume {name}: {location} holds {what}, not an array or an OME-Zarr "
                        "multiscale group; give the path of the array inside it"
                    )
                path = str(multiscale["datasets"][0]["path"]).strip("/")
                array_location = f"{array_location}/{path}"
                v3 = _read_json(_kvstore(array_location), "zarr.json")
            else:  # an array: a level of an OME-Zarr group when its parent lists it
                multiscale, level = _parent_level(array_location)
            if multiscale is not None:
                names = _axis_names(multiscale.get("axes"))
            driver = "zarr3" if v3 is not None else "zarr"
        else:
            driver = "n5"
        store = ts.open(
            {"driver": driver, "kvstore": array_location + "/"},
            read=True,
            open=True,
            context=tensorstore_context(),
        ).result()
    except InputError:
        raise
    except Exception as e:  # TensorStore raises ValueError and friends for missing/bad data
        raise InputError(f"volume {name}: cannot open {fmt} array at {location}: {e}") from None

    rank = store.rank
    shape = tuple(int(n) for n in store.domain.shape)
    labels = [str(label).lower() for label in store.domain.labels]
    if names is None and all(labels) and len(set(labels)) == rank:
        names = labels
    if names is not None and len(names) != rank:
        raise InputError(
            f"volume {name}: {len(names)} axis names {names} for an array of {rank} dimensions"
        )
    if names is not None:
        missing = [a for a in ("z", "y", "x") if a not in names]
        if missing:
            raise InputError(
                f"volume {name}: axes {names} lack {missing}; ffnflow needs z, y and x axes"
            )
        axes = tuple(names.index(a) for a in ("z", "y", "x"))
    elif rank < 3:
        raise InputError(f"volume {name}: expected a 3D (z, y, x) array, got shape {shape}")
    elif fmt == "zarr":
        axes = (rank - 3, rank - 2, rank - 1)
    else:
        axes = (2, 1, 0)
    fixed = tuple(d for d in range(rank) if d not in axes)
    big = [(names[d] if names else f"dimension {d}", shape[d]) for d in fixed if shape[d] != 1]
    if big:
        raise InputError(
            f"volume {name}: shape {shape} has non-spatial axes of size > 1 {big}; ffnflow "
            "needs a single-channel 3D volume"
        )
    if multiscale is not None and names is not None:
        res = _ome_resolution(multiscale, names, level)
    elif fmt == "n5":
        res = _units_resolution(store) or _n5_pixel_resolution(
            _read_json(_kvstore(array_location), "attributes.json"), rank
        )
    else:
        res = _units_resolution(store)
    array = ChunkedArray(
        name=name,
        store=store,
        axes=axes,  # type: ignore[arg-type]
        fixed=fixed,
        origin=tuple(int(v) for v in store.domain.inclusive_min),
        shape=tuple(shape[d] for d in axes),  # type: ignore[arg-type]
        dtype=np.dtype(store.dtype.numpy_dtype),
        resolution_nm=None if res is None else tuple(res[d] for d in axes),  # type: ignore[arg-type]
    )
    _arrays[key] = array
    return array
