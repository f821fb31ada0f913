"""TensorFlow's start-up chatter is dropped from stderr; errors and everything else stay."""

from __future__ import annotations

from participant.training.quiet_import import without_chatter

CHATTER = (
    b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
    b"I0000 00:00:1796495039.390513   13209 port.cc:153] oneDNN custom operations are on.\n"
    b"I0000 00:00:1796495039.592374   13209 cpu_feature_guard.cc:227] This TensorFlow binary is "
    b"optimized to use available CPU instructions in performance-critical operations.\n"
    b"To enable the following instructions: AVX2 FMA, in other operations, rebuild TensorFlow.\n"
    b"W0000 00:00:1796495039.6   13209 gpu_device.cc:2] Cannot dlopen some GPU libraries.\n"
)


def test_start_up_chatter_is_dropped() -> None:
    assert without_chatter(CHATTER) == b""


def test_errors_warnings_of_python_and_other_lines_stay() -> None:
    error = b"E0000 00:00:1796495039.7   13209 cuda_dnn.cc:8] Unable to register cuDNN factory\n"
    warning = b"/x/keras/src/module.py:3: DeprecationWarning: old\n"
    log_line = b"2026-12-05 18:30:00 INFO participant polled\n"
    kept = without_chatter(CHATTER + error + warning + CHATTER + log_line)
    assert kept == error + warning + log_line


def test_a_line_like_the_continuation_after_a_kept_line_stays() -> None:
    line = b"To enable the following instructions is also what a user may print\n"
    assert without_chatter(b"hello\n" + line) == b"hello\n" + line
