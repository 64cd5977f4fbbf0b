"""msa-lab: a workbench for MSA, the block-sparse attention of MiniMax M3.

Core API (torch and triton only): MSAConfig, PRESETS, select_blocks, sparse_attention, msa_attention.
"""
from .api import Action, load_model
from .attention import msa_attention, resolve_backend, select_blocks, sparse_attention
from .checks import MSAInputError
from .config import LLAMA3_8B, M3, PRESETS, TINY, MSAConfig

__version__ = "0.1.0"

__all__ = [
    "MSAConfig", "PRESETS", "M3", "LLAMA3_8B", "TINY", "MSAInputError",
    "select_blocks", "sparse_attention", "msa_attention", "resolve_backend",
    "load_model", "Action", "__version__",
]
