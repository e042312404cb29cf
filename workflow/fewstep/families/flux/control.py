"""InfuseNet's control image: black, or the reference face's 5 keypoints.

InfiniteYou letterboxes the control picture to the output size (scale the
shorter target side, centre it on white), finds the face again and draws its
keypoints as coloured sticks and dots on black. The reference's keypoints are
already known from the identity embedding step, so here they are carried
through the same letterbox transform instead of detected a second time.
"""

from __future__ import annotations

import math

import numpy as np

#: eyes, nose, mouth corners: red, green, blue, yellow, magenta (RGB)
KEYPOINT_COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255)]
#: every stick joins a keypoint to the nose
STICKS = [(0, 2), (1, 2), (3, 2), (4, 2)]
STICK_HALF_WIDTH = 4
DOT_RADIUS = 10
STICK_BRIGHTNESS = 0.6


def letterbox(source_wh: tuple[int, int], target_wh: tuple[int, int]) -> tuple[float, float, int, int]:
    """(scale_x, scale_y, pad_left, pad_top) of InfiniteYou's resize-and-pad."""
    (sw, sh), (tw, th) = source_wh, target_wh
    if tw <= th:
        nw, nh = tw, int(tw * sh / sw)
    else:
        nw, nh = int(th * sw / sh), th
    return nw / sw, nh / sh, (tw - nw) // 2, (th - nh) // 2


def keypoint_image(kps: np.ndarray, source_wh: tuple[int, int], target_wh: tuple[int, int]) -> np.ndarray:
    """HxWx3 uint8 RGB control image with `kps` (in source pixels) mapped into the target frame."""
    import cv2

    sx, sy, left, top = letterbox(source_wh, target_wh)
    points = np.asarray(kps, dtype=np.float64) * [sx, sy] + [left, top]
    width, height = target_wh
    canvas = np.zeros((height, width, 3), dtype=np.float64)
    for start, end in STICKS:
        (x0, y0), (x1, y1) = points[start], points[end]
        length = math.hypot(x1 - x0, y1 - y0)
        angle = math.degrees(math.atan2(y0 - y1, x0 - x1))
        centre = (int((x0 + x1) / 2), int((y0 + y1) / 2))
        polygon = cv2.ellipse2Poly(centre, (int(length / 2), STICK_HALF_WIDTH), int(angle), 0, 360, 1)
        canvas = cv2.fillConvexPoly(canvas, polygon, KEYPOINT_COLOURS[start])
    canvas = (canvas * STICK_BRIGHTNESS).astype(np.uint8)
    for point, colour in zip(points, KEYPOINT_COLOURS, strict=True):
        canvas = cv2.circle(canvas, (int(point[0]), int(point[1])), DOT_RADIUS, colour, -1)
    return canvas


def black_image(target_wh: tuple[int, int]) -> np.ndarray:
    width, height = target_wh
    return np.zeros((height, width, 3), dtype=np.uint8)
