"""Numpy-only digits task (``digits-linear``): fast, TensorFlow-free, for tests and demos."""
