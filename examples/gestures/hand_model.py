"""A parametric hand that poses SYNTHETIC 21-point hand keypoints in MediaPipe's landmark layout.

No dataset of real hand landmarks can be installed offline, so the gesture example generates its
data. Nothing here was measured on real hands: the geometry (bone lengths, knuckle positions,
joint-angle templates) is a plausible hand, not a recording, and accuracy on this data says how
well the pipeline works, not how well a model would do on people in front of a camera.

Layout (MediaPipe Hands): 0 wrist; thumb 1 CMC, 2 MCP, 3 IP, 4 tip; index 5 MCP, 6 PIP, 7 DIP,
8 tip; middle 9-12; ring 13-16; pinky 17-20.

The hand is built in its own frame (wrist at the origin, fingers along +y, palm facing +z) by
forward kinematics: every finger is a chain of three bones whose flexion angles accumulate, the
thumb a chain that curls across the palm. The posed hand is mirrored for left hands, rotated,
scaled and placed in an image-like frame (x right, y down, z depth relative to the wrist, smaller
is closer), as MediaPipe reports image landmarks.

This module needs numpy only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "GESTURES",
    "NUM_LANDMARKS",
    "POSE_SIZE",
    "HandShape",
    "Pose",
    "gesture_template",
    "pose_hand",
    "random_hand_shape",
    "random_rotation",
    "to_image_frame",
]

NUM_LANDMARKS = 21
GESTURES = ("fist", "open_palm", "point", "victory", "thumbs_up", "ok", "call")

FloatArray = npt.NDArray[np.float64]

# Knuckle (MCP) positions of index, middle, ring and pinky in the hand frame; the palm length
# (wrist to middle MCP) is 1.
_MCP_BASE = np.array([[-0.30, 0.95, 0.0], [-0.08, 1.00, 0.0], [0.13, 0.93, 0.0], [0.32, 0.82, 0.0]])
# Proximal, middle and distal phalanx lengths of the four fingers, in palm lengths.
_PHALANX_BASE = np.array(
    [[0.45, 0.27, 0.20], [0.50, 0.32, 0.22], [0.47, 0.30, 0.21], [0.37, 0.22, 0.19]]
)
# The natural fan of the fingers (degrees, + towards the pinky side); scaled by a pose's splay.
_FAN_DEG = np.array([-9.0, 0.0, 8.0, 17.0])
_THUMB_CMC = np.array([-0.25, 0.25, 0.05])
# Thumb metacarpal, proximal and distal phalanx.
_THUMB_BASE = np.array([0.45, 0.32, 0.27])
# Where the extended thumb points when held against the index finger (alpha 0) and spread wide
# (alpha 1), and the direction it curls towards, across the front of the palm.
_THUMB_ADDUCTED = np.array([-0.25, 0.92, 0.30])
_THUMB_ABDUCTED = np.array([-0.85, 0.45, 0.25])
_THUMB_ACROSS = np.array([0.80, 0.10, 0.60])
_PALM_NORMAL = np.array([0.0, 0.0, 1.0])


@dataclass(frozen=True)
class HandShape:
    """One person's hand: knuckle positions and bone lengths (palm length 1), and handedness."""

    mcp: FloatArray  # (4, 3)
    phalanges: FloatArray  # (4, 3)
    thumb_cmc: FloatArray  # (3,)
    thumb: FloatArray  # (3,)
    fan_deg: FloatArray  # (4,)
    left: bool


@dataclass(frozen=True)
class Pose:
    """Joint angles in degrees: finger flexion (4 fingers x MCP, PIP, DIP), splay, thumb.

    ``thumb_alpha`` in [0, 1] moves the thumb from against the index finger to spread wide;
    ``thumb_flexion`` are its three cumulative curl angles across the palm. ``thumb_to_index``
    in [0, 1] pulls the thumb tip onto the index tip (1 touches: the OK sign).
    """

    fingers: FloatArray  # (4, 3)
    splay: float
    thumb_alpha: float
    thumb_flexion: FloatArray  # (3,)
    thumb_to_index: float = 0.0

    def as_vector(self) -> FloatArray:
        return np.concatenate(
            [
                self.fingers.ravel(),
                [self.splay, self.thumb_alpha],
                self.thumb_flexion,
                [self.thumb_to_index],
            ]
        )

    @classmethod
    def from_vector(cls, vector: FloatArray) -> Pose:
        return cls(
            fingers=vector[:12].reshape(4, 3),
            splay=float(vector[12]),
            thumb_alpha=float(np.clip(vector[13], 0.0, 1.0)),
            thumb_flexion=vector[14:17],
            thumb_to_index=float(np.clip(vector[17], 0.0, 1.0)),
        )


POSE_SIZE = 18
# Typical angles (degrees) of an extended and of a curled finger.
_EXTENDED = (5.0, 5.0, 3.0)
_CURLED = (85.0, 100.0, 55.0)
_THUMB_TUCKED = (40.0, 50.0, 30.0)
_THUMB_OUT = (-5.0, 0.0, 0.0)

_TEMPLATES: dict[str, Pose] = {
    "fist": Pose(np.array([_CURLED] * 4), 0.3, 0.3, np.array(_THUMB_TUCKED)),
    "open_palm": Pose(np.array([_EXTENDED] * 4), 1.6, 1.0, np.array(_THUMB_OUT)),
    "point": Pose(
        np.array([_EXTENDED, _CURLED, _CURLED, _CURLED]), 0.5, 0.4, np.array(_THUMB_TUCKED)
    ),
    "victory": Pose(
        np.array([_EXTENDED, _EXTENDED, _CURLED, _CURLED]), 2.2, 0.4, np.array(_THUMB_TUCKED)
    ),
    "thumbs_up": Pose(np.array([_CURLED] * 4), 0.3, 0.1, np.array([-10.0, 0.0, 0.0])),
    "ok": Pose(
        np.array([(45.0, 70.0, 40.0), _EXTENDED, _EXTENDED, _EXTENDED]),
        1.2,
        0.6,
        np.array([20.0, 20.0, 15.0]),
        thumb_to_index=1.0,
    ),
    "call": Pose(np.array([_CURLED, _CURLED, _CURLED, _EXTENDED]), 1.5, 1.0, np.array(_THUMB_OUT)),
}


def gesture_template(gesture: str) -> Pose:
    """The joint angles of a textbook ``gesture`` (one of ``GESTURES``)."""
    return _TEMPLATES[gesture]


def random_hand_shape(rng: np.random.Generator, left_handed_share: float = 0.15) -> HandShape:
    """A person's hand: bone lengths, knuckle positions and finger fan varied around a mean."""
    return HandShape(
        mcp=_MCP_BASE * np.array([rng.normal(1.0, 0.07), 1.0, 1.0])
        + rng.normal(0.0, 0.025, (4, 3)) * np.array([1.0, 1.0, 0.3]),
        phalanges=_PHALANX_BASE * rng.lognormal(0.0, 0.07, (4, 3)),
        thumb_cmc=_THUMB_CMC + rng.normal(0.0, 0.03, 3),
        thumb=_THUMB_BASE * rng.lognormal(0.0, 0.08, 3),
        fan_deg=_FAN_DEG + rng.normal(0.0, 2.5, 4),
        left=bool(rng.random() < left_handed_share),
    )


def _unit(vector: FloatArray) -> FloatArray:
    return vector / np.linalg.norm(vector)


def _rotate_about_z(vector: FloatArray, degrees: float) -> FloatArray:
    angle = np.radians(degrees)
    c, s = np.cos(angle), np.sin(angle)
    return np.array([c * vector[0] - s * vector[1], s * vector[0] + c * vector[1], vector[2]])


def pose_hand(shape: HandShape, pose: Pose) -> FloatArray:
    """The 21 landmarks (21, 3) of ``shape`` in ``pose``, in the hand frame (right-handed)."""
    points = np.zeros((NUM_LANDMARKS, 3))
    for finger in range(4):
        base = 5 + 4 * finger
        points[base] = shape.mcp[finger]
        # Splay fans the fingers out from the middle finger's axis.
        direction = _rotate_about_z(np.array([0.0, 1.0, 0.0]), -shape.fan_deg[finger] * pose.splay)
        angle = 0.0
        for bone in range(3):
            angle += np.radians(pose.fingers[finger, bone])
            step = direction * np.cos(angle) + _PALM_NORMAL * np.sin(angle)
            points[base + bone + 1] = points[base + bone] + shape.phalanges[finger, bone] * step
    points[1] = shape.thumb_cmc
    rest = _unit(
        (1.0 - pose.thumb_alpha) * _unit(_THUMB_ADDUCTED)
        + pose.thumb_alpha * _unit(_THUMB_ABDUCTED)
    )
    across = _unit(_THUMB_ACROSS)
    angle = 0.0
    for bone in range(3):
        angle += np.radians(pose.thumb_flexion[bone])
        step = _unit(rest * np.cos(angle) + across * np.sin(angle))
        points[bone + 2] = points[bone + 1] + shape.thumb[bone] * step
    if pose.thumb_to_index > 0.0:
        # Closing a ring of thumb and index: bend the thumb's joints towards the index tip, more
        # at the tip than at the base, instead of solving inverse kinematics.
        gap = points[8] - points[4]
        for joint, share in ((2, 0.3), (3, 0.65), (4, 1.0)):
            points[joint] += pose.thumb_to_index * share * gap
    return points


def random_rotation(
    rng: np.random.Generator, roll_deg: float = 70.0, yaw_deg: float = 60.0, pitch_deg: float = 45.0
) -> FloatArray:
    """A 3x3 rotation: in-plane roll, then turning left/right (yaw) and tilting (pitch)."""
    roll, yaw, pitch = (np.radians(rng.uniform(-d, d)) for d in (roll_deg, yaw_deg, pitch_deg))
    (cr, sr), (cy, sy), (cp, sp) = ((np.cos(a), np.sin(a)) for a in (roll, yaw, pitch))
    about_z = np.array([[cr, -sr, 0.0], [sr, cr, 0.0], [0.0, 0.0, 1.0]])
    about_y = np.array([[cy, 0.0, sy], [0.0, 1.0, 0.0], [-sy, 0.0, cy]])
    about_x = np.array([[1.0, 0.0, 0.0], [0.0, cp, -sp], [0.0, sp, cp]])
    result: FloatArray = about_x @ about_y @ about_z
    return result


def to_image_frame(
    points: FloatArray, *, left: bool, rotation: FloatArray, size: float, origin: Any
) -> FloatArray:
    """Mirror (left hand), rotate, scale and place hand-frame points in MediaPipe's image frame."""
    posed = points * np.array([-1.0 if left else 1.0, 1.0, 1.0])
    posed = posed @ rotation.T
    # Image y grows downwards and a palm facing the camera points its normal at it (smaller z).
    posed = posed * np.array([1.0, -1.0, -1.0]) * size
    result: FloatArray = posed + np.asarray(origin, dtype=np.float64)
    return result
