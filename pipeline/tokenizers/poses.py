"""The `human_poses` serializer: people's boxes and 2-D COCO-17 keypoints as value-bin runs (see sequence.py).

The record is what pipeline/data/labelers/poses.py writes, in pixels of the sample:

    {"width": W, "height": H,
     "people": [{"box": [x0, y0, x1, y1], "score": s, "keypoints": [[x, y, score] x 17 in COCO_KEYPOINTS order]}]}

Per person, largest box first (the priority under truncation): `v0=x0 v1=y0 v2=x1 v3=y1`, then `v0=k v1=x v2=y`
for each keypoint k scored at least VISIBLE_SCORE, every coordinate in 1000 bins of the image size, as det does.
Only a box uses group 3, so a run of groups 0-3 always starts a person and parsing is unambiguous. A person is one
element: a row that does not fit max_tokens loses whole people, never half a skeleton. Person scores are not
written; parsed keypoints score 1 where written and are [0, 0, 0] where not.
"""

from __future__ import annotations

from pipeline.tokenizers.sequence import (
    COORDINATE_BINS,
    SequenceSerializer,
    _bins,
    _words,
    dequantize,
    quantize,
    register_serializer,
    value_token,
)

COCO_KEYPOINTS = ("nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
                  "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee",
                  "right_knee", "left_ankle", "right_ankle")
VISIBLE_SCORE = 0.3  # keypoints scored below this are not written (the usual ViTPose / mmpose display cut)


def box_area(box) -> float:
    x0, y0, x1, y1 = (float(v) for v in box)
    return max(0.0, x1 - x0) * max(0.0, y1 - y0)


def _bin(value: float, size: float) -> int:
    return quantize(float(value), 0, size, COORDINATE_BINS)


def _unbin(bin_index: int, size: float) -> float:
    return dequantize(bin_index, 0, size, COORDINATE_BINS)


@register_serializer
class PosesSerializer(SequenceSerializer):
    modality = "human_poses"

    def elements(self, record: dict) -> list[str]:
        width, height = float(record["width"]), float(record["height"])
        if not (width > 0 and height > 0):
            raise ValueError(f"human_poses: width and height must be positive, got {width} x {height}")
        runs = []
        for person in sorted(record["people"], key=lambda p: -box_area(p["box"])):  # stable: ties keep their order
            keypoints = person["keypoints"]
            if len(keypoints) != len(COCO_KEYPOINTS):
                raise ValueError(f"human_poses: {len(keypoints)} keypoints, COCO has {len(COCO_KEYPOINTS)}")
            x0, y0, x1, y1 = person["box"]
            words = [value_token(g, _bin(v, size))
                     for g, (v, size) in enumerate(((x0, width), (y0, height), (x1, width), (y1, height)))]
            for k, (x, y, score) in enumerate(keypoints):
                if score >= VISIBLE_SCORE:
                    words += [value_token(0, k), value_token(1, _bin(x, width)), value_token(2, _bin(y, height))]
            runs.append(" ".join(words))
        return runs

    def parse(self, text: str, image_size: tuple[int, int] | None = None) -> dict:
        if image_size is None:
            raise ValueError("human_poses: parsing keypoints needs the image size (width, height)")
        width, height = image_size
        words, people, i = _words(text), [], 0
        while i < len(words):
            box, keypoint = _bins(words, i, (0, 1, 2, 3)), _bins(words, i, (0, 1, 2))
            if box is not None:
                box = [_unbin(b, size) for b, size in zip(box, (width, height, width, height))]
                people.append({"box": box, "keypoints": [[0.0, 0.0, 0.0] for _ in COCO_KEYPOINTS]})
                i += 4
            elif keypoint is not None and people and keypoint[0] < len(COCO_KEYPOINTS):
                k, x, y = keypoint
                people[-1]["keypoints"][k] = [_unbin(x, width), _unbin(y, height), 1.0]
                i += 3
            else:  # a malformed run (from a model, say): skip a word and resynchronise
                i += 1
        return {"width": width, "height": height, "people": people}
