"""PtychoPINN in PyTorch: configuration, the NPZ data contract, grouping, simulation, the generator
network, the physics forward model, stitching, metrics and the workflow entry points.

The numpy-only modules (``config``, ``params``, ``data``, ``grouping``, ``simulation``,
``stitching``, ``metrics``) never import torch, so serving hosts can use them without it.
"""

__version__ = "0.1.0"
