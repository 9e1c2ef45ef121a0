"""The object pixel size of a scan and a model: read, validated, and checked against each other."""

from __future__ import annotations

import pytest

from ptycho_torch.errors import DataContractError
from ptycho_torch.pixel_size import check_pixel_size, scan_pixel_size


def test_scan_metadata_gives_the_pixel_size_or_none() -> None:
    assert scan_pixel_size({"pixel_size_m": 1.25e-8}) == 1.25e-8
    assert scan_pixel_size({"nphotons": 1e6}) is None
    for bad in (-1e-8, 0, "ten nm", float("nan"), 5e-3):
        with pytest.raises(DataContractError, match="`_metadata.pixel_size_m` must be the object pixel size in metres"):
            scan_pixel_size({"pixel_size_m": bad})


def test_pixel_sizes_within_one_percent_agree_and_others_are_refused() -> None:
    assert check_pixel_size(1.0e-8, 1.005e-8, model="m") == 1.0e-8
    assert check_pixel_size(None, 1e-8, model="m") == 1e-8
    assert check_pixel_size(2e-8, None, model="m") == 2e-8
    assert check_pixel_size(None, None, model="m") is None
    with pytest.raises(DataContractError, match=r"scan's object pixel size 2e-08 m differs from bundle x's training "
                                                r"pixel size 1e-08 m \(ratio 2.000\)"):
        check_pixel_size(2e-8, 1e-8, model="bundle x")


def test_scan_metadata_is_read_without_the_patterns(tmp_path, data_dir) -> None:
    import numpy as np

    from ptycho_torch.data import RawData, scan_metadata

    positions = np.arange(4.0)
    raw = RawData.from_coords_without_pc(positions, positions, np.ones((4, 8, 8), np.float32),
                                         np.ones((8, 8), np.complex64), metadata={"pixel_size_m": 1e-8, "nphotons": 5})
    assert scan_metadata(raw.to_file(tmp_path / "s.npz")) == {"pixel_size_m": 1e-8, "nphotons": 5}
    assert scan_metadata(data_dir / "siemens-star-small.npz.bz2") == {}  # the tike layout has none
    with pytest.raises(DataContractError, match="must be an existing .npz or .npz.bz2 file"):
        scan_metadata(tmp_path / "absent.npz")
