"""Handwritten digits (scikit-learn) as a fedsilo task: Keras model, non-IID partitions."""
