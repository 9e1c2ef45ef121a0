"""ScanTable: values per scan index, looked up and stored a message at a time."""

from __future__ import annotations

import numpy as np

from serving.sessions.scan_table import ScanTable


def test_values_are_held_by_index_and_kept_when_the_table_grows() -> None:
    table = ScanTable(2, np.float64, limit=5000)
    held, values = table.get(np.array([-1, 0, 4999, 5000]))
    assert not held.any() and values.shape == (4, 2)
    table.put(np.array([3, 7]), [[1.0, 2.0], [3.0, 4.0]])
    table.put(np.array([4999]), [[5.0, 6.0]])  # past the first allocation: the table grows
    held, values = table.get(np.array([-1, 3, 4, 7, 4999, 5000, 3]))
    assert held.tolist() == [False, True, False, True, True, False, True]
    np.testing.assert_array_equal(values[held], [[1, 2], [3, 4], [5, 6], [1, 2]])
    assert values.dtype == np.float64


def test_digests_compare_row_by_row() -> None:
    table = ScanTable(16, np.uint8, limit=10)
    digests = np.arange(32, dtype=np.uint8).reshape(2, 16)
    table.put(np.array([9, 0]), digests)
    held, known = table.get(np.array([0, 9, 5]))
    assert held.tolist() == [True, True, False]
    assert (known == digests[[1, 0, 0]]).all(axis=1).tolist() == [True, True, False]
