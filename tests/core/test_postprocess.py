"""3D post-processing: the largest connected component of each class."""

import numpy as np
import pytest

from src_models.postprocess import largest_component_3d


def test_largest_3d_component_per_class_keeps_3d_connected_shapes():
    vol = np.zeros((6, 10, 10), np.uint8)
    vol[0:4, 1:4, 1:4] = 1  # 36 voxels of class 1
    vol[5, 8, 8] = 1  # a stray voxel of class 1, not connected
    vol[1:3, 6:9, 6:9] = 2  # class 2: one blob ...
    vol[4, 0, 9] = 2  # ... and a stray voxel
    vol[3, 4, 4] = 1  # touches the class-1 blob diagonally (26-connectivity): kept
    out = largest_component_3d(vol, 3)
    assert out[5, 8, 8] == 0 and out[4, 0, 9] == 0 and out[3, 4, 4] == 1
    assert (out == 1).sum() == 37 and (out == 2).sum() == 18
    assert out.dtype == vol.dtype and out.shape == vol.shape
    with pytest.raises(ValueError):
        largest_component_3d(vol[0])
