"""Canny edges (4M-21's `canny_edge`), computed from pixels, no weights."""

from __future__ import annotations

import numpy as np
from skimage.color import rgb2gray
from skimage.feature import canny

from pipeline.data.encoding import encode_png
from pipeline.data.labelers.base import DecodedBatch, Labeler, register_labeler


@register_labeler
class CannyEdges(Labeler):
    modality = "canny_edge"
    sigma = 1.5  # smooths JPEG blocking so edges follow objects, not 8x8 artefacts

    def label(self, batch: DecodedBatch) -> list[bytes]:
        payloads = []
        for image in batch.images:
            edges = canny(rgb2gray(image), sigma=self.sigma)
            payloads.append(encode_png(edges.astype(np.uint8) * 255))
        return payloads
