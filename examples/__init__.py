"""Example tasks: handwritten digits with Keras (``digits``) and with numpy (``digits-linear``)."""
