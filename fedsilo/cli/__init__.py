"""The ``fedsilo`` command: the layer above the daemons, ``examples`` and the shared base.

``main`` is the console entry point (``fedsilo = "fedsilo.cli:main"``; ``python -m fedsilo`` and
``python -m fedsilo.cli`` run it too). Modules: ``main`` (the parser and dispatch),
``admin_commands`` and ``admin_connection`` (admin API commands and their connection options),
``pki_commands`` (``fedsilo pki``), ``doctor`` (``fedsilo participant doctor``), ``demo``
(``fedsilo demo``) and ``daemons`` (child processes and polling).

Besides the base's errors (``fedsilo/__init__.py``), the command raises ``AdminConnectionError``
(no admin certificate given; a ``ValueError``), ``DemoError`` (a demo step failed) and
``WaitTimeout`` (a polled condition did not hold in time), all ``FedsiloError``.
"""

from fedsilo.cli.main import main

__all__ = ["main"]
