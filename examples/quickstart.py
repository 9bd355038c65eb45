"""The Python API in a dozen lines: load, train on three labeled slices, predict, save.

Run from the project root: python examples/quickstart.py [method] [iterations]
"""

import sys

import numpy as np

from napari_semiseg.io import read_labels, read_volume, write_volume
from src_models.data import SliceSampler, make_volumes
from src_models.inference import predict_volume
from src_models.training import TrainConfig, train
from src_models.training.checkpoint import create_model

method = sys.argv[1] if len(sys.argv) > 1 else "crossmatch"
iterations = int(sys.argv[2]) if len(sys.argv) > 2 else 200

image, meta = read_volume("examples/data/hippocampus_003_image.nii.gz")
truth, _ = read_labels("examples/data/hippocampus_003_labels.nii.gz")
sparse = np.zeros_like(truth)
sparse[[10, 16, 22]] = truth[[10, 16, 22]]  # the user painted three slices (axis 0)

volumes, num_classes = make_volumes([image], [sparse], axis=0)
sampler = SliceSampler(volumes, patch_size=64, batch_size=8, seed=0)
model = create_model(method, {}, in_channels=1, num_classes=num_classes, patch_size=64)
train(model, sampler, TrainConfig(iterations=iterations), out_dir="out/quickstart_run")

prediction = predict_volume(model, image, maps=["confidence"])
write_volume("out/quickstart_mask.nii.gz", prediction.labels, meta, labels=True)
write_volume("out/quickstart_confidence.nii.gz", prediction.maps["confidence"], meta)
for c in (1, 2):
    p, t = prediction.labels == c, truth == c
    print(f"class {c}: Dice {2 * (p & t).sum() / (p.sum() + t.sum()):.3f}")
