"""Mooncake Transfer Engine's Python API over this engine.

Switch with one import::

    from efa_transport.mooncake import TransferEngine   # was: from mooncake.engine import ...

See the package README for every difference from Mooncake.
"""

from ._native import TransferEngine, TransferNotify, TransferOpcode

#: Compile-time feature flags, as ``mooncake.engine`` has them.
SUPPORT_CUDA = False
SUPPORT_EFA = True
SUPPORT_HIP = False
SUPPORT_MNNVL = False
SUPPORT_INTRA_NVLINK = False

__all__ = [
    "TransferEngine",
    "TransferNotify",
    "TransferOpcode",
    "SUPPORT_CUDA",
    "SUPPORT_EFA",
    "SUPPORT_HIP",
    "SUPPORT_MNNVL",
    "SUPPORT_INTRA_NVLINK",
]
