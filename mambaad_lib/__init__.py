"""MambaAD Companion: an executable, CPU-capable companion to MambaAD (NeurIPS 2024).

Subpackages: ``scan`` (scan orders), ``ops`` (selective scan backends), ``models``
(MambaAD and neighbours), ``metrics``, ``data``, ``synthesis`` (Perlin noise, GLASS),
``engine`` (training and evaluation), ``cli`` (the ``mambaad`` command).
"""
__version__ = "0.1.0"
