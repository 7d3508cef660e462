"""``from manta import MapReduceComputation, EntityLevel`` (the documented import path).

This package only re-exports :mod:`manta_lib`'s public API.
"""

from manta_lib import *  # noqa: F403
from manta_lib import __all__ as __all__
