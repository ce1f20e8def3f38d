"""Turn decoded BGR frames into a model's input tensor, as its model card specifies (pure numpy and OpenCV)."""

from __future__ import annotations

import cv2
import numpy as np

from detectors.card import ModelCard

INTERPOLATIONS = {
    "area": cv2.INTER_AREA,
    "linear": cv2.INTER_LINEAR,
    "nearest": cv2.INTER_NEAREST,
    "cubic": cv2.INTER_CUBIC,
}


class Preprocessor:
    """Resize, reorder colour, normalise and lay out frames into a preallocated batch."""

    def __init__(self, card: ModelCard, dtype: np.dtype):
        self.card = card
        self.dtype = np.dtype(dtype)
        self.height, self.width = card.input_size
        self.interpolation = INTERPOLATIONS[card.resize]
        self.mean = np.asarray(card.mean, dtype=np.float32)
        self.scale = np.asarray(card.channel_scale(), dtype=np.float32)

    def batch_shape(self, batch_size: int) -> tuple[int, int, int, int]:
        if self.card.layout == "NCHW":
            return (batch_size, 3, self.height, self.width)
        return (batch_size, self.height, self.width, 3)

    def prepare(self, image_bgr: np.ndarray) -> np.ndarray:
        """Return one frame as an HWC array in the model's colour order, dtype and value range.

        The resize runs first, on 8-bit pixels, so colour conversion and the float arithmetic
        touch only input_size pixels, never the full-resolution frame.
        """
        small = cv2.resize(image_bgr, (self.width, self.height), interpolation=self.interpolation)
        if self.card.color_order == "RGB":
            small = cv2.cvtColor(small, cv2.COLOR_BGR2RGB)
        if self.dtype == np.uint8:
            return small
        normalised = (small.astype(np.float32) - self.mean) * self.scale
        return normalised.astype(self.dtype, copy=False)

    def fill(self, batch: np.ndarray, index: int, image_bgr: np.ndarray) -> None:
        """Write one frame into row `index` of a batch of shape `batch_shape`."""
        if self.card.layout == "NCHW" and self.dtype == np.float32:
            self._fill_planes(batch[index], image_bgr)
            return
        hwc = self.prepare(image_bgr)
        if self.card.layout == "NCHW":
            batch[index] = hwc.transpose(2, 0, 1)
        else:
            batch[index] = hwc

    def _fill_planes(self, chw: np.ndarray, image_bgr: np.ndarray) -> None:
        """Normalise each colour plane in place inside the batch, with the same arithmetic as `prepare`.

        Normalising an HWC float image and then copying it through a transposed view costs
        about ten times more, because of the temporary arrays and the strided copy. On the
        two-core AMD EPYC of docs/benchmarks.md that was about 1.0 against 0.1 ms per 224x224 frame.
        """
        small = cv2.resize(image_bgr, (self.width, self.height), interpolation=self.interpolation)
        planes = cv2.split(small)  # blue, green, red
        if self.card.color_order == "RGB":
            planes = planes[::-1]
        for channel, plane in enumerate(planes):
            out = chw[channel]
            out[...] = plane
            out -= self.mean[channel]
            out *= self.scale[channel]
