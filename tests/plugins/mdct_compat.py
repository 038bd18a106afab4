"""Import the `mdct` package (0.4, 2016) under numpy 2 / current scipy, for cross-checks in tests and benchmarks only.

mdct 0.4 and its dependency stft 0.5.2 use names that numpy 2 and scipy removed: ``scipy.signal.kaiser``,
``scipy.signal.cosine``, ``numpy.lib.pad`` and ``scipy.real``; and stft's ``unpad``/``center_unpad`` index an
array with a list of slices, which numpy >= 1.23 rejects (``imdct`` fails with an IndexError). This module puts
the names back and replaces the two helpers with tuple-indexing equivalents before importing; the project
itself never imports `mdct`.
"""

import numpy
import scipy
import scipy.signal
import scipy.signal.windows


def _patch() -> None:
    for name in ("kaiser", "cosine"):
        if not hasattr(scipy.signal, name):
            setattr(scipy.signal, name, getattr(scipy.signal.windows, name))
    if not hasattr(numpy.lib, "pad"):
        numpy.lib.pad = numpy.pad
    if not hasattr(scipy, "real"):
        scipy.real = numpy.real


def _patch_stft_utils() -> None:
    import stft.utils

    def unpad(data, outlength):
        return data[(slice(None, outlength),) + (slice(None),) * (data.ndim - 1)]

    def center_unpad(data, framelength):
        return data[(slice(framelength // 2, -framelength // 2),) + (slice(None),) * (data.ndim - 1)]

    stft.utils.unpad, stft.utils.center_unpad = unpad, center_unpad


def import_mdct():
    """The patched `mdct` module; ImportError when the package is not installed (``pip install mdct==0.4``)."""
    _patch()
    import mdct

    _patch_stft_utils()
    return mdct


def load():
    """The patched `mdct` module, or skip the calling test when the package is not installed."""
    import pytest

    try:
        return import_mdct()
    except ImportError:
        pytest.skip("the `mdct` package is not installed (pip install mdct==0.4)")
