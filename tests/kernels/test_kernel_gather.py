"""The signal-token gather's reference and its row arithmetic."""

from __future__ import annotations

import numpy as np
import pytest

from vitron_rt.kernels.gather import gather_reference, signal_rows


@pytest.mark.parametrize("src_dtype", ["float32", "float16"])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_gather_is_take_and_cast(src_dtype, dtype):
    rng = np.random.default_rng(3)
    hidden = (rng.standard_normal((2, 9, 33)) * 50).astype(src_dtype)  # (B, T, D)
    positions = np.array([[8, 0, 4], [1, 1, 7]])
    rows = signal_rows(positions, 9)
    assert rows.dtype == np.int32 and rows.tolist() == [8, 0, 4, 10, 10, 16]
    got = gather_reference(hidden.reshape(-1, 33), rows, dtype).reshape(2, 3, 33)
    want = np.stack([hidden[b, positions[b]] for b in range(2)]).astype(dtype)
    np.testing.assert_array_equal(got, want)
    assert got.dtype == np.dtype(dtype)


def test_positions_outside_the_sequence_are_refused():
    with pytest.raises(ValueError, match="outside the sequence"):
        signal_rows(np.array([[0, 9]]), 9)
    with pytest.raises(ValueError, match="outside the source"):
        gather_reference(np.zeros((4, 2), np.float32), [4])
    with pytest.raises(ValueError, match="dtype"):
        gather_reference(np.zeros((4, 2), np.float32), [0], "int8")
    assert signal_rows(np.array([3, 1]), 5).tolist() == [3, 1]  # one sequence given as (K,)
