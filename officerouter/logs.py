"""Log observer factories for ``twistd --logger``.

twistd owns the observers; these are the zero-argument factories it can call.
"""

from __future__ import annotations

import sys

from twisted.logger import ILogObserver, jsonFileLogObserver, textFileLogObserver


def json_observer() -> ILogObserver:
    """One JSON object per line on standard output (``--log-format json``)."""
    return jsonFileLogObserver(sys.stdout)


def text_observer() -> ILogObserver:
    """Human-readable lines on standard output."""
    return textFileLogObserver(sys.stdout)
