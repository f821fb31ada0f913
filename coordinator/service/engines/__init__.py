"""One round engine per protection mode, behind ``RoundEngine``, found through ``registry``."""
