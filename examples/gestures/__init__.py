"""Static hand gestures from 21 SYNTHETIC 3D hand keypoints (MediaPipe layout) as a fedsilo task."""
