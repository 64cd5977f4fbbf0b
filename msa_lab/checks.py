"""Input validation for the public ops. Every message names the problem and the fix."""
from __future__ import annotations

import torch

from .config import MSAConfig

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_LAYOUT = "q [B, Hq, Nq, D], k/v [B, Hkv, Nk, D], iq [B, Hkv, Nq, Di], ik [B, Hik, Nk, Di], idx [B, Hkv, Nq, top_k]"


class MSAInputError(ValueError):
    """Raised for inputs that break the MSA contract."""


def _tensor4(name: str, t) -> None:
    if not isinstance(t, torch.Tensor):
        raise MSAInputError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != 4:
        raise MSAInputError(
            f"{name} must be 4-D ({_LAYOUT}, SDPA layout), got shape {tuple(t.shape)}; "
            f"if your tensors are [B, N, H, D], call .transpose(1, 2) first."
        )
    if any(s <= 0 for s in t.shape):
        raise MSAInputError(f"{name} has an empty dimension: shape {tuple(t.shape)}; every size must be positive.")


def _float(name: str, t: torch.Tensor) -> None:
    if t.dtype not in SUPPORTED_DTYPES:
        raise MSAInputError(
            f"{name} has dtype {t.dtype}; supported dtypes are float32, float16 and bfloat16: cast with .to(torch.bfloat16)."
        )


def _same_device(**tensors) -> None:
    devs = {n: t.device for n, t in tensors.items()}
    if len(set(devs.values())) > 1:
        listing = ", ".join(f"{n} on {d}" for n, d in devs.items())
        raise MSAInputError(f"tensors are on different devices ({listing}); move them to one device with .to(device).")


def _cfg_field(cfg: MSAConfig, field: str, actual: int, what: str) -> None:
    want = getattr(cfg, field)
    if want is not None and want != actual:
        raise MSAInputError(
            f"config {cfg.name!r} says {field}={want} but {what} is {actual}; pass tensors of that shape, "
            f"or use cfg.replace({field}={actual}) (or a config with {field}=None to take it from the tensors)."
        )


def _check_cfg(cfg) -> None:
    if not isinstance(cfg, MSAConfig):
        raise MSAInputError(f"cfg must be an msa_lab.MSAConfig, got {type(cfg).__name__}; e.g. msa_lab.MSAConfig.preset('m3').")


def check_index_inputs(iq, ik, cfg: MSAConfig) -> None:
    _check_cfg(cfg)
    _tensor4("iq", iq)
    _tensor4("ik", ik)
    _float("iq", iq)
    _float("ik", ik)
    _same_device(iq=iq, ik=ik)
    if iq.dtype != ik.dtype:
        raise MSAInputError(f"iq is {iq.dtype} but ik is {ik.dtype}; cast both index tensors to one dtype.")
    B, Hkv, Nq, Di = iq.shape
    Bk, Hik, Nk, Dik = ik.shape
    if Bk != B:
        raise MSAInputError(f"iq has batch {B} but ik has batch {Bk}; they must match.")
    if Dik != Di:
        raise MSAInputError(f"iq has index dim {Di} but ik has {Dik}; the index branch needs one Di.")
    if Hik not in (1, Hkv):
        raise MSAInputError(
            f"ik has {Hik} heads; it must have 1 (shared index key) or Hkv={Hkv} (one per KV group, "
            f"the number of iq heads)."
        )
    if Nq > Nk:
        raise MSAInputError(
            f"more queries than keys (Nq={Nq} > Nk={Nk}); queries are the last Nq positions of the "
            f"key sequence, so pass the whole key/index-key cache including this chunk."
        )
    _cfg_field(cfg, "n_kv_heads", Hkv, "the number of iq heads")
    _cfg_field(cfg, "index_dim", Di, "iq's last dim")
    _cfg_field(cfg, "index_key_heads", Hik, "the number of ik heads")


def check_attention_inputs(q, k, v, cfg: MSAConfig) -> None:
    _check_cfg(cfg)
    for n, t in (("q", q), ("k", k), ("v", v)):
        _tensor4(n, t)
        _float(n, t)
    _same_device(q=q, k=k, v=v)
    if not (q.dtype == k.dtype == v.dtype):
        raise MSAInputError(f"q, k, v dtypes differ ({q.dtype}, {k.dtype}, {v.dtype}); cast them to one dtype.")
    if k.shape != v.shape:
        raise MSAInputError(f"k {tuple(k.shape)} and v {tuple(v.shape)} must have the same shape [B, Hkv, Nk, D].")
    B, Hq, Nq, D = q.shape
    _, Hkv, Nk, Dk = k.shape
    if k.shape[0] != B:
        raise MSAInputError(f"q has batch {B} but k/v have batch {k.shape[0]}; they must match.")
    if Dk != D:
        raise MSAInputError(f"q has head dim {D} but k/v have {Dk}; they must match.")
    if Hq % Hkv:
        raise MSAInputError(
            f"q has {Hq} heads, not a multiple of k/v's {Hkv} heads; GQA needs Hq % Hkv == 0 "
            f"(query head h uses KV group h // (Hq // Hkv))."
        )
    if Nq > Nk:
        raise MSAInputError(
            f"more queries than keys (Nq={Nq} > Nk={Nk}); queries are the last Nq positions of the "
            f"key sequence, so pass the whole KV cache including this chunk."
        )
    _cfg_field(cfg, "n_heads", Hq, "the number of q heads")
    _cfg_field(cfg, "n_kv_heads", Hkv, "the number of k/v heads")
    _cfg_field(cfg, "head_dim", D, "q's last dim")


def check_pair(q, k, iq, ik) -> None:
    """The index tensors must line up with the attention tensors."""
    _same_device(q=q, iq=iq)
    if iq.shape[0] != q.shape[0] or iq.shape[1] != k.shape[1] or iq.shape[2] != q.shape[2]:
        raise MSAInputError(
            f"iq {tuple(iq.shape)} must be [B, Hkv, Nq, Di] with B={q.shape[0]}, Hkv={k.shape[1]}, "
            f"Nq={q.shape[2]} taken from q and k."
        )
    if ik.shape[2] != k.shape[2]:
        raise MSAInputError(f"ik has {ik.shape[2]} keys but k has {k.shape[2]}; index keys come one per key.")


def check_indices(idx, q, k, cfg: MSAConfig) -> torch.Tensor:
    """Validate a selection; returns it as int32. One pass over idx (cheap next to attention)."""
    if not isinstance(idx, torch.Tensor):
        raise MSAInputError(f"idx must be a torch.Tensor, got {type(idx).__name__}")
    B, Hq, Nq, _ = q.shape
    Hkv, Nk = k.shape[1], k.shape[2]
    want = (B, Hkv, Nq, cfg.top_k)
    if tuple(idx.shape) != want:
        raise MSAInputError(
            f"idx has shape {tuple(idx.shape)}, expected [B, Hkv, Nq, top_k] = {list(want)}; "
            f"if your selection keeps a different number of blocks, use cfg.replace(top_k={idx.shape[-1] if idx.dim() == 4 else '...'})."
        )
    if idx.dtype not in (torch.int32, torch.int64):
        raise MSAInputError(f"idx has dtype {idx.dtype}; it must be int32 (int64 is accepted), padded with -1.")
    if idx.device != q.device:
        raise MSAInputError(f"idx is on {idx.device} but q is on {q.device}; move it with idx.to(q.device).")
    nb = cfg.num_blocks(Nk)
    lo, hi = int(idx.min()), int(idx.max())
    if lo < -1 or hi >= nb:
        raise MSAInputError(
            f"idx entries must be block numbers in [0, {nb}) for Nk={Nk}, block_size={cfg.block_size}, "
            f"or -1 for padding; found values in [{lo}, {hi}]."
        )
    last_visible = ((Nk - Nq + torch.arange(Nq, device=idx.device)) // cfg.block_size).view(1, 1, Nq, 1)
    future = idx > last_visible
    if bool(future.any()):
        b, h, i, t = (int(x) for x in future.nonzero()[0])
        raise MSAInputError(
            f"idx[{b}, {h}, {i}, {t}] = {int(idx[b, h, i, t])} is a block wholly in the future of query {i} "
            f"(position {Nk - Nq + i}, last visible block {Nk - Nq + i} // {cfg.block_size} = "
            f"{(Nk - Nq + i) // cfg.block_size}); only blocks <= the query's own block may be selected."
        )
    srt = idx.sort(-1).values
    dup = (srt[..., 1:] == srt[..., :-1]) & (srt[..., 1:] >= 0)
    if bool(dup.any()):
        b, h, i, _ = (int(x) for x in dup.nonzero()[0])
        raise MSAInputError(
            f"idx[{b}, {h}, {i}] selects a block twice ({srt[b, h, i].tolist()}); each block may appear "
            f"once per row, pad unused slots with -1."
        )
    return idx.to(torch.int32)


def check_finite(**tensors) -> None:
    for n, t in tensors.items():
        if not bool(torch.isfinite(t).all()):
            raise MSAInputError(
                f"{n} contains NaN or inf; check_finite=True refuses it. Without the check, NaN in q/k/v "
                f"reaches the outputs of the rows that attend to it, and a NaN index score counts as -inf."
            )
