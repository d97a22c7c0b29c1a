"""MedXpert: reproducible chest X-ray retrieval, captioning and report-generation research tools.

Research software only: nothing it produces is a diagnosis and it must never be used for
clinical decisions.
"""

__version__ = "0.1.0"

from medxpert_utils.core.notices import DISCLAIMER

__all__ = ["DISCLAIMER", "__version__"]
