"""Triton kernels for MSA on Hopper, importable as ``msa_lab.kernels`` (see pyproject's package-dir).

Empty until the kernels land; msa_lab.attention falls back to the torch path meanwhile.
"""
