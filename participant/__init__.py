"""participant."""

import fedsilo  # noqa: F401 - applies the TLS 1.3-only policy before grpc is imported
