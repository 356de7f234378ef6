"""The msgpack codec: arrays, scalars, crumpets 3's msgpack_numpy layout."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis.extra import numpy as hnp

import crumpets.core
from crumpets.core import _codec, shm
from crumpets.core.shm import pack, unpack


@given(
    hnp.arrays(
        hnp.scalar_dtypes(),
        hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4),
    )
)
def test_codec_round_trips_arrays(arr):
    out = unpack(pack({"a": arr, "nested": [arr, 1, "x"]}))
    np.testing.assert_array_equal(out["a"], arr)
    assert out["a"].dtype == arr.dtype and out["a"].shape == arr.shape
    assert out["a"].flags.writeable
    assert out["nested"][1:] == [1, "x"]


def test_codec_reads_msgpack_numpy_layout():
    import msgpack

    arr = np.arange(6, dtype="<i2").reshape(2, 3)
    legacy = {b"nd": True, b"type": "<i2", b"kind": b"", b"shape": [2, 3], b"data": arr.tobytes()}
    out = unpack(msgpack.packb({"image": legacy, "label": 4}, use_bin_type=True))
    np.testing.assert_array_equal(out["image"], arr)
    assert out["label"] == 4


def test_codec_rejects_objects():
    with pytest.raises(TypeError, match="object"):
        pack(np.array([object()]))
    with pytest.raises(TypeError, match="set"):
        pack({1, 2})


def test_pack_and_unpack_stay_where_the_reference_has_them():
    assert shm.pack is crumpets.core.pack is _codec.pack
    assert shm.unpack is crumpets.core.unpack is _codec.unpack
