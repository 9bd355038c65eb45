"""``python -m napari_semiseg.cli`` (what torchrun runs: ``torchrun ... -m napari_semiseg.cli
train ...``) is the ``semiseg`` command."""

import sys

from napari_semiseg.cli import main

sys.exit(main())
