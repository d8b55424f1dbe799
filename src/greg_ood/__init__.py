"""greg-ood: Gradient-Regularized Out-of-Distribution Detection (GReg / GReg+), reproduced as a library + DVC pipeline.

Conventions (stated once, printed in every table header):
* ``energy(logits) = E = -T * logsumexp(logits / T)``; low energy = in-distribution.
* Detection scores are "higher = more in-distribution" (the energy detector scores ``-E``).
* FPR95 is measured with ID as the positive class (the paper's convention) unless ``positive="ood"`` is asked for.
"""
__version__ = "0.1.0"
