"""ModelConfig: the shape of the small multimodal transformer (msa-tiny and dense-200k).

Both models share one backbone; only the attention differs:
  attention="msa"    every layer is MSA (index branch + block-sparse main branch, public ops);
  attention="dense"  dense causal GQA (torch SDPA), with a hard context limit (max_context).

Why msa-tiny changes TINY's local_blocks from 1 to 2: the index branch carries no position (NoPE,
see msa_lab.model.net), so it cannot prefer "the block just before mine" by recency. With a single
local block, a query at the start of its block would see almost no preceding bytes unless the
indexer happened to pick the previous block, and a byte-level model lives on its last few bytes.
Two local blocks guarantee at least block_size preceding tokens; top_k stays 8 (1 init + 2 local +
5 chosen by content). No layer is kept dense: a dense layer would make a 1M-token prefill quadratic.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

from ..config import TINY, MSAConfig

ATTENTION_KINDS = ("msa", "dense")
STEM_SCOPES = ("patch", "image")
DENSE_200K_LIMIT = 204_800


@dataclass(frozen=True)
class ModelConfig:
    name: str = "msa-tiny"
    attention: str = "msa"  # "msa" | "dense"
    # --- backbone ---
    d_model: int = 256
    n_layers: int = 8
    d_ff: int = 704  # SwiGLU hidden size (~ 8/3 d_model, multiple of 64)
    vocab_size: int = 264  # 256 bytes + specials (msa_lab.model.tokens), padded to a multiple of 8
    norm_eps: float = 1e-5
    tie_embeddings: bool = True
    # --- attention shapes (msa-tiny uses the TINY preset's) ---
    n_heads: int = TINY.n_heads
    n_kv_heads: int = TINY.n_kv_heads
    head_dim: int = TINY.head_dim
    index_dim: int = TINY.index_dim
    index_key_heads: int = TINY.index_key_heads
    # --- MSA sparsity pattern ---
    block_size: int = TINY.block_size
    top_k: int = TINY.top_k
    init_blocks: int = TINY.init_blocks
    local_blocks: int = 2  # see the module docstring
    # --- positions (RoPE on the main branch, trained with PoSE jumps; NoPE index branch) ---
    rope_base: float = 10_000.0
    rope_dims: int = 16  # rotated dims per head (half of head_dim 32); the rest are NoPE (see net.py)
    pose_max_position: int = 1_200_000  # training jumps positions up to this, so 1M distances are seen
    # --- token mixing before attention (0 = off, the shipped checkpoints) ---
    # causal depthwise convolutions (width token_conv) on the inputs of q, k, v (and iq, ik), separate
    # taps per path: a key can carry the bytes before it while its value carries its own byte, so one
    # attention layer can match a context and copy what follows it (induction), and a byte-level model
    # can match a multi-byte context such as the needle's "key is: " (see layers.TokenConv)
    token_conv: int = 0
    # --- images ---
    image_size: int = 64  # every image is converted to RGB and resized to image_size x image_size
    patch_size: int = 8
    # a small convolutional stem per patch (channels; 0 = off, the checkpoints shipped before it): three 3x3
    # convolutions (two of stride 2) whose output is added to patch_proj's. A linear patch projection leaves
    # edges, corners and strokes for the transformer to find from 64 pixels per patch; early convolutions
    # give a ViT those local features directly ("Early Convolutions Help Transformers See Better", Xiao et
    # al. 2021). Its output layer starts at zero, so a warm start computes what the checkpoint did.
    patch_stem: int = 0
    # where the stem's convolutions run (with patch_stem > 0): "patch" = each patch alone, zero-padded at its
    # borders (the checkpoints shipped before it); "image" = over the whole picture, then cut into the same
    # per-patch cells, so a glyph or an edge split by a patch border is seen whole by both patches. Same weights
    # and shapes either way. Why: data/train/probes/stem-2026-12-07
    stem_scope: str = "patch"
    # pixels per patch side that patch_proj reads, as a divisor of patch_size (1 = every pixel, the checkpoints
    # shipped before it): patch_proj reads each patch average-pooled by this factor, and the stem's first
    # convolution strides by it (kernel 3 * patch_pool), so image_size can grow by the factor with the same tokens
    # per image and the same parameter shapes beyond that one kernel. Why: a GUI screen of 400-800 px resized to
    # 256 px draws its labels 3-5 px tall; the vision stage read 0.53 of them against 0.99 of the image-QA words
    # (data/train/probes/reader-2026-12-08). At 512 px in 32-px patches with patch_pool 2, the stem sees labels
    # twice as tall while the LM still gets 256 tokens per image. A plain 32-px patch_proj would add 590K weights
    # (1.2 MB), past the 16 MB checkpoint limit. Needs patch_stem: without it the extra pixels are never read.
    # Measured so far (data/train/probes/gui-reading-2026-12-08, CPU): a CNN reads labels cut from 256-px screens
    # to 0.967 and from 512-px ones to 0.989 in the same steps, learning faster at 512; 250 updates of the shipped
    # encoder's vision stage gained nothing from it (0.55 vs 0.56 labels read). No shipped model uses it yet.
    patch_pool: int = 1
    # bidirectional transformer layers over each image's patches before the LM (0 = off, the checkpoints
    # shipped before it); n_heads heads, SwiGLU of 2 * d_model. Why: msa_lab.model.vision_encoder
    vision_layers: int = 0
    # learned key and value offsets (per layer and KV head) added to the sequence's first token, which is always
    # BOS and always inside the forced init block (1 = on, 0 = off, the checkpoints shipped before it). Why: a head
    # with nothing to look up spreads its mass thinly over every block; a sink it can match from any query lets it
    # park that mass in a block MSA always keeps (StreamingLLM's learned sink token, Xiao et al. 2023). Both
    # offsets start at zero, so a warm start computes what the checkpoint did.
    attention_sink: int = 0
    # a GUI pointer (msa_lab.model.pointer.PatchPointer) of this width (0 = off, the checkpoints shipped before
    # it): act() takes its point from a choice among the image's patches instead of the JSON's digits. Needs
    # vision_layers (it matches against the encoder's states). Why: pointer.py
    pointer_dim: int = 0
    # --- limits ---
    max_context: Optional[int] = None  # hard limit in tokens (dense-200k: 204,800); None = memory-bound only
    # --- length extrapolation of dense attention (None = off) ---
    # a query row with n visible keys, n > length_scale_base, has its logits multiplied by
    # ln(n) / ln(length_scale_base) ("log-n" scaling, as in Qwen's logn attention and YaRN's temperature):
    # a softmax over 25x more keys than in training otherwise spreads its mass over them, and the needle's
    # weight drowns. MSA needs none: its softmax always spans at most top_k * block_size keys.
    # No weight depends on it (MSATransformer.set_inference_config switches it), and it applies in training
    # too. The shipped dense-200k was trained to 8K tokens without it, so its rows of 4K-8K keys now see
    # logits at most ln(8192) / ln(4096) = 1.083x those of training.
    length_scale_base: Optional[int] = None

    def __post_init__(self) -> None:
        if self.attention not in ATTENTION_KINDS:
            raise ValueError(f"ModelConfig.attention must be one of {ATTENTION_KINDS}, got {self.attention!r}")
        for f in ("d_model", "n_layers", "d_ff", "vocab_size", "n_heads", "n_kv_heads", "head_dim", "index_dim",
                  "index_key_heads", "block_size", "top_k", "image_size", "patch_size", "pose_max_position"):
            v = getattr(self, f)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ValueError(f"ModelConfig.{f} must be a positive int, got {v!r}")
        if not isinstance(self.rope_dims, int) or self.rope_dims < 0 or self.rope_dims % 2 \
                or self.rope_dims > self.head_dim:
            raise ValueError(f"ModelConfig.rope_dims={self.rope_dims!r} must be an even int in [0, head_dim="
                             f"{self.head_dim}] (0 = no rotary positions).")
        if not isinstance(self.token_conv, int) or isinstance(self.token_conv, bool) or not 0 <= self.token_conv <= 16 \
                or self.token_conv == 1:
            raise ValueError(f"ModelConfig.token_conv={self.token_conv!r} must be 0 (off) or a width in 2..16.")
        if self.head_dim % 2:
            raise ValueError(f"ModelConfig.head_dim={self.head_dim} must be even (RoPE rotates pairs of dims).")
        if self.image_size % self.patch_size:
            raise ValueError(
                f"ModelConfig.image_size={self.image_size} is not a multiple of patch_size={self.patch_size}; "
                f"pick sizes that tile, e.g. image_size=64, patch_size=8."
            )
        if not isinstance(self.patch_stem, int) or isinstance(self.patch_stem, bool) or \
                not (self.patch_stem == 0 or 4 <= self.patch_stem <= 256):
            raise ValueError(f"ModelConfig.patch_stem={self.patch_stem!r} must be 0 (off) or a channel count in 4..256.")
        if not isinstance(self.vision_layers, int) or isinstance(self.vision_layers, bool) or \
                not 0 <= self.vision_layers <= 8:
            raise ValueError(f"ModelConfig.vision_layers={self.vision_layers!r} must be 0 (off) or a layer count in 1..8.")
        if self.attention_sink not in (0, 1) or isinstance(self.attention_sink, bool):
            raise ValueError(f"ModelConfig.attention_sink={self.attention_sink!r} must be 0 (off) or 1 (on).")
        if not isinstance(self.pointer_dim, int) or isinstance(self.pointer_dim, bool) or \
                not (self.pointer_dim == 0 or 8 <= self.pointer_dim <= 1024):
            raise ValueError(f"ModelConfig.pointer_dim={self.pointer_dim!r} must be 0 (off) or a width in 8..1024.")
        if self.pointer_dim and not self.vision_layers:
            raise ValueError("ModelConfig.pointer_dim needs vision_layers >= 1: the pointer matches the instruction "
                             "against the vision encoder's patch states.")
        if self.stem_scope not in STEM_SCOPES:
            raise ValueError(f"ModelConfig.stem_scope={self.stem_scope!r} must be one of {STEM_SCOPES}.")
        if self.stem_scope != "patch" and not self.patch_stem:
            raise ValueError(f"ModelConfig.stem_scope={self.stem_scope!r} needs a stem: set patch_stem (channels, "
                             f"e.g. 32) or leave stem_scope='patch'.")
        if self.patch_stem and self.patch_size % 4:
            raise ValueError(f"ModelConfig.patch_stem needs patch_size divisible by 4 (two stride-2 convolutions), "
                             f"got patch_size={self.patch_size}; use patch_size 8 or 16, or patch_stem=0.")
        if not isinstance(self.patch_pool, int) or isinstance(self.patch_pool, bool) or not 1 <= self.patch_pool <= 4:
            raise ValueError(f"ModelConfig.patch_pool={self.patch_pool!r} must be an int in 1..4 (1 = no pooling).")
        if self.patch_pool > 1 and not self.patch_stem:
            raise ValueError(f"ModelConfig.patch_pool={self.patch_pool} needs a stem (patch_stem > 0): without one, "
                             f"the pixels the pooling drops are never read; set patch_stem (e.g. 32) or patch_pool=1.")
        if self.patch_pool > 1 and self.patch_size % (4 * self.patch_pool):
            raise ValueError(f"ModelConfig.patch_pool={self.patch_pool} needs patch_size divisible by "
                             f"{4 * self.patch_pool} (the stem's stride-{self.patch_pool} convolution, then two of "
                             f"stride 2), got patch_size={self.patch_size}; e.g. image_size 512, patch_size 32, "
                             f"patch_pool 2.")
        if self.vocab_size < 256 + 8:
            raise ValueError(f"ModelConfig.vocab_size={self.vocab_size} must be >= 264 (256 bytes + 8 specials).")
        if self.max_context is not None and (not isinstance(self.max_context, int) or self.max_context <= 0):
            raise ValueError(f"ModelConfig.max_context must be a positive int or None, got {self.max_context!r}")
        if self.length_scale_base is not None and (not isinstance(self.length_scale_base, int)
                                                   or isinstance(self.length_scale_base, bool)
                                                   or self.length_scale_base < 2):
            raise ValueError(f"ModelConfig.length_scale_base must be None (off) or an int >= 2 (tokens), got "
                             f"{self.length_scale_base!r}.")
        self.msa_config()  # validates heads/top_k/forcing through MSAConfig's own checks

    # ------------------------------------------------------------------ derived
    @property
    def sparse(self) -> bool:
        return self.attention == "msa"

    @property
    def patches_per_image(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def patch_dim(self) -> int:
        """Width of a patch row as the model takes it: every pixel of the patch, RGB."""
        return 3 * self.patch_size * self.patch_size

    @property
    def pooled_patch_dim(self) -> int:
        """Width of what patch_proj reads: the patch average-pooled by patch_pool."""
        return 3 * (self.patch_size // self.patch_pool) ** 2

    def msa_config(self) -> MSAConfig:
        """The MSAConfig of every attention layer (dense models use it only for block-level analysis)."""
        return MSAConfig(
            name=f"{self.name}-attn", n_heads=self.n_heads, n_kv_heads=self.n_kv_heads, head_dim=self.head_dim,
            index_dim=self.index_dim, index_key_heads=self.index_key_heads, block_size=self.block_size,
            top_k=self.top_k, init_blocks=self.init_blocks, local_blocks=self.local_blocks,
        )

    def replace(self, **changes) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        """Inverse of to_dict; unknown or missing keys are errors (a config from another version)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(
                f"model config has unknown keys {unknown}; it was written by another msa-lab version. "
                f"Known keys: {sorted(known)}."
            )
        return cls(**d)


MSA_TINY = ModelConfig(name="msa-tiny", attention="msa")
# length_scale_base 4096: measured on an H100 with the shipped weights (scripts/length_scale_probe.py,
# data/eval/dense-200k.length_scale-*.json): NIAH at 204,752 tokens 0/6 without scaling, 6/6 with base 4096,
# 4/6 with 8192, 1/6 with 16384; 16K and 64K stay 1.00 with every base.
DENSE_200K = ModelConfig(name="dense-200k", attention="dense", max_context=DENSE_200K_LIMIT, length_scale_base=4096)
MODEL_CONFIGS = {c.name: c for c in (MSA_TINY, DENSE_200K)}


def model_config(name: str, **overrides) -> ModelConfig:
    """A named config ("msa-tiny" | "dense-200k"), optionally with fields changed (e.g. for tests)."""
    if name not in MODEL_CONFIGS:
        raise KeyError(f"unknown model {name!r}; known models: {', '.join(sorted(MODEL_CONFIGS))}")
    return MODEL_CONFIGS[name].replace(**overrides)


def small_config(attention: str = "msa", **overrides) -> ModelConfig:
    """A very small config for CPU tests and the training smoke run (not a shipped model)."""
    base = dict(
        name=f"test-{attention}", attention=attention, d_model=64, n_layers=2, d_ff=128, n_heads=4, n_kv_heads=2,
        head_dim=16, index_dim=16, index_key_heads=1, block_size=8, top_k=4, init_blocks=1, local_blocks=2,
        image_size=16, patch_size=8, rope_dims=8,
    )
    base.update(overrides)
    return ModelConfig(**base)

