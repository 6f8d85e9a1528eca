"""milsil: the MIL-SIL BagNet of Paschali, Naeem et al. (2019), made usable from QuPath.

The package holds the science (models, bags, training, heatmaps); it knows nothing of gRPC
except the client in :mod:`milsil.client`.
"""

from milsil.errors import MilsilError

__version__ = "0.1.0"

__all__ = ["MilsilError", "__version__"]
