"""Run the TensorFlow.js converter; executed by .venv-tfjs's Python, never imported by fedsilo.

``python -I tfjs_convert.py ARGS...`` takes ``tensorflowjs_converter``'s arguments. It is a
separate program because the converter cannot be installed next to fedsilo (see
participant/training/tfjs.py); it calls the converter's ``convert`` with the argument list itself,
since the packaged ``tensorflowjs_converter`` command splits a path with spaces in two.
"""

from __future__ import annotations

import sys
import types


def main(argv: list[str]) -> int:
    """Convert as ``tensorflowjs_converter argv...`` would."""
    # tensorflowjs imports tensorflow_decision_forests when it is imported, only to register the
    # custom ops of decision-forest models. That package (and ydf, which it needs) cannot be
    # installed beside TensorFlow 2.21: its protobuf import crashes. A task's Keras model has no
    # decision-forest ops, so an empty module stands in for it; a SavedModel that used one of
    # those ops would fail to convert with the op's name, not convert wrongly.
    sys.modules.setdefault(
        "tensorflow_decision_forests", types.ModuleType("tensorflow_decision_forests")
    )
    from tensorflowjs.converters import converter

    converter.convert(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
