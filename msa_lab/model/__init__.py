"""The small multimodal MSA model: config, network, inference engine and checkpoints.

The user-facing API (load_model, Action) is in msa_lab.api.
"""
from .cache import KVCache, MemoryEstimate, PrefillTooLarge
from .checkpoint import CheckpointError, CheckpointNotFound, load_checkpoint, save_checkpoint
from .config import DENSE_200K, MODEL_CONFIGS, MSA_TINY, ModelConfig, model_config, small_config
from .engine import OVERFLOW_POLICIES, ContextTooLong, Engine, GenerationResult, PrefillStep
from .net import MSATransformer
from .tokens import Encoded, decode, encode_example, encode_prompt
from .vision import PreparedImage, prepare_image

__all__ = [
    "ModelConfig", "MODEL_CONFIGS", "MSA_TINY", "DENSE_200K", "model_config", "small_config", "MSATransformer",
    "Engine", "PrefillStep", "GenerationResult", "ContextTooLong", "OVERFLOW_POLICIES", "KVCache",
    "MemoryEstimate", "PrefillTooLarge", "CheckpointError", "CheckpointNotFound", "save_checkpoint",
    "load_checkpoint", "Encoded", "encode_prompt", "encode_example", "decode", "PreparedImage", "prepare_image",
]
