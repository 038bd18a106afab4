"""Import the `mdct` package (0.4, 2016) under numpy 2 / current scipy, for cross-checks in the tests only.

mdct 0.4 and its dependency stft 0.5.2 use names that numpy 2 and scipy removed: ``scipy.signal.kaiser``,
``scipy.signal.cosine``, ``numpy.lib.pad`` and ``scipy.real``. This module puts them back before importing;
the project itself never imports `mdct`.
"""

import numpy
import pytest
import scipy
import scipy.signal
import scipy.signal.windows


def load():
    """The `mdct` module, or skip the test when the package is not installed."""
    for name in ("kaiser", "cosine"):
        if not hasattr(scipy.signal, name):
            setattr(scipy.signal, name, getattr(scipy.signal.windows, name))
    if not hasattr(numpy.lib, "pad"):
        numpy.lib.pad = numpy.pad
    if not hasattr(scipy, "real"):
        scipy.real = numpy.real
    return pytest.importorskip("mdct")
