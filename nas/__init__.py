"""hwnas: hardware-aware neural architecture search (DONNA-style predictor + measured latency tables)."""
__version__ = "0.1.0"

from .errors import UserError  # noqa: E402
from .space import Arch, SearchSpace  # noqa: E402

__all__ = ["__version__", "UserError", "SearchSpace", "Arch"]
