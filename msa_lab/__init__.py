"""msa-lab: a workbench for MSA, the block-sparse attention of MiniMax M3.

Core API (torch and triton only): MSAConfig, PRESETS, select_blocks, sparse_attention, msa_attention.
"""
import importlib.abc as _abc
import importlib.util as _util
import sys as _sys
from pathlib import Path as _Path


class _SourceKernelsFinder(_abc.MetaPathFinder):
    """Maps msa_lab.kernels to the repo's top-level kernels/ when running from a source checkout.

    An installed msa-lab (wheel or editable) resolves msa_lab.kernels itself; this finder sits last
    on sys.meta_path and only answers when nothing else did, e.g. `python -m pytest` from the repo
    root on a GPU machine where ./msa_lab shadows the editable install's mapping.
    """

    _dir = _Path(__file__).resolve().parent.parent / "kernels"

    def find_spec(self, name, path=None, target=None):
        if name != "msa_lab.kernels" or not (self._dir / "__init__.py").is_file():
            return None
        return _util.spec_from_file_location(name, self._dir / "__init__.py", submodule_search_locations=[str(self._dir)])


if not any(isinstance(f, _SourceKernelsFinder) for f in _sys.meta_path):
    _sys.meta_path.append(_SourceKernelsFinder())

from .api import Action, load_model  # noqa: E402
from .attention import msa_attention, resolve_backend, select_blocks, sparse_attention
from .checks import MSAInputError
from .config import LLAMA3_8B, M3, PRESETS, TINY, MSAConfig

__version__ = "0.1.0"

__all__ = [
    "MSAConfig", "PRESETS", "M3", "LLAMA3_8B", "TINY", "MSAInputError",
    "select_blocks", "sparse_attention", "msa_attention", "resolve_backend",
    "load_model", "Action", "__version__",
]
