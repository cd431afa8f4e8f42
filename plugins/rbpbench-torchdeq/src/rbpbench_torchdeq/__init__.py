"""rbpbench-torchdeq: torchdeq's implicit differentiation, phantom gradient and forward solvers for rbpbench.

The methods ``torchdeq-ift`` and ``torchdeq-phantom`` and the forward solvers
``torchdeq-anderson`` and ``torchdeq-broyden`` call torchdeq's own code; this
package only adapts rbpbench's problems and states to it (see the README).
"""

from rbpbench_torchdeq.forward import ANDERSON, BROYDEN, anderson, broyden
from rbpbench_torchdeq.methods import IFT, PHANTOM, ift, phantom

__all__ = ["ANDERSON", "BROYDEN", "IFT", "PHANTOM", "anderson", "broyden", "ift", "phantom"]
