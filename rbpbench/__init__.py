"""rbpbench: a benchmark of gradient methods for convergent recurrent networks."""

from importlib.metadata import PackageNotFoundError, version

from rbpbench.hookspecs import hookimpl
from rbpbench.problem import GradientResult, MethodSpec, Problem, TaskSpec

try:
    __version__ = version("rbpbench")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

__all__ = ["GradientResult", "MethodSpec", "Problem", "TaskSpec", "__version__", "hookimpl"]
