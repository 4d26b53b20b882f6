"""proxytasks: transfer learning from cheap-label proxy tasks to bootstrap face naming.

Stages are library functions first (``proxytasks.<stage>``) and click commands second
(``proxytasks.cli``). See the README for the data flow.
"""
from .errors import ManifestError, ProxytasksError
from .manifest import Face, Manifest
from .pairs import PairSet
from .rules import RuleSet

__all__ = ["Face", "Manifest", "ManifestError", "PairSet", "ProxytasksError", "RuleSet"]
__version__ = "0.1.0"
