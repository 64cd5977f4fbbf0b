"""Checkpoints: <dir>/<name>.safetensors (fp16 weights) + <name>.json (config, sha256, training record).

Loading verifies the format, the sha256 of the weights file, the config and every tensor's name and
shape, and says what to do when something is off. Never pickle: safetensors and JSON only.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Optional, Tuple

import torch

from .config import MODEL_CONFIGS, ModelConfig
from .net import MSATransformer

FORMAT = "msa-lab/checkpoint-v1"
MAX_BYTES = 16 * 2**20  # the project's size budget per checkpoint
REPO_ROOT = Path(__file__).resolve().parents[2]


class CheckpointError(RuntimeError):
    """A checkpoint that exists but cannot be trusted or used (hash, config or tensor mismatch)."""


class CheckpointNotFound(FileNotFoundError):
    """No checkpoint for this model name: train one (the message says how)."""


def default_dir() -> Path:
    """$MSA_LAB_CHECKPOINTS, else <repo>/data/checkpoints."""
    return Path(os.environ.get("MSA_LAB_CHECKPOINTS", REPO_ROOT / "data" / "checkpoints"))


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def paths(name: str, directory: Optional[Path] = None) -> Tuple[Path, Path]:
    d = Path(directory) if directory is not None else default_dir()
    return d / f"{name}.safetensors", d / f"{name}.json"


def save_checkpoint(net: MSATransformer, directory: Optional[Path] = None, *, name: Optional[str] = None,
                    dtype: torch.dtype = torch.float16, train: Optional[dict] = None) -> Path:
    """Write <name>.safetensors + <name>.json (with sha256). Returns the JSON path.

    Refuses (CheckpointError) a file over 16 MiB, the project's per-checkpoint budget.
    """
    from safetensors.torch import save_file

    name = name or net.cfg.name
    wpath, jpath = paths(name, directory)
    wpath.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", dtype).contiguous() for k, v in net.state_dict().items()}
    if any(not torch.isfinite(v).all() for v in state.values()):
        bad = [k for k, v in state.items() if not torch.isfinite(v).all()]
        raise CheckpointError(f"refusing to save {name}: non-finite values in {bad[:5]} "
                              f"(in {dtype}; weights too large for fp16? save with dtype=torch.bfloat16).")
    tmp = wpath.with_suffix(".safetensors.tmp")
    save_file(state, str(tmp), metadata={"format": FORMAT, "name": name})
    size = tmp.stat().st_size
    if size > MAX_BYTES:
        tmp.unlink()
        raise CheckpointError(f"{name} would be {size / 2**20:.1f} MiB, over the {MAX_BYTES / 2**20:.0f} MiB budget; "
                              f"shrink the model config (d_model, n_layers, d_ff).")
    os.replace(tmp, wpath)
    meta = {
        "format": FORMAT, "name": name, "weights": wpath.name, "sha256": sha256_file(wpath), "bytes": size,
        "dtype": str(dtype).replace("torch.", ""), "n_params": net.n_params(), "config": net.cfg.to_dict(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "train": train or {},
    }
    jpath.write_text(json.dumps(meta, indent=2) + "\n")
    return jpath


def read_meta(name: str, directory: Optional[Path] = None) -> dict:
    wpath, jpath = paths(name, directory)
    if not jpath.is_file():
        known = ", ".join(sorted(MODEL_CONFIGS))
        raise CheckpointNotFound(
            f"no checkpoint for {name!r}: {jpath} does not exist. Train it with "
            f"`msa-lab train --model {name} --minutes 20` (or `python -m msa_lab.train --model {name}`) on a GPU, "
            f"or point checkpoint_dir / $MSA_LAB_CHECKPOINTS at a directory holding {name}.json. Models: {known}."
        )
    try:
        meta = json.loads(jpath.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{jpath} is not valid JSON ({e}); the file is damaged: retrain or restore it.") from e
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{jpath} has format {meta.get('format')!r}, expected {FORMAT!r}; it was written by "
                              f"another msa-lab version: retrain with this one.")
    return meta


def load_checkpoint(name: str, directory: Optional[Path] = None, *, device=None,
                    dtype: torch.dtype = torch.float32) -> Tuple[MSATransformer, dict]:
    """(net in eval mode, meta dict). Verifies sha256, config and tensor names/shapes."""
    from safetensors.torch import load_file

    meta = read_meta(name, directory)
    wpath, jpath = paths(name, directory)
    if not wpath.is_file():
        raise CheckpointError(f"{jpath} exists but its weights {wpath} do not; copy both files, or retrain.")
    digest = sha256_file(wpath)
    if digest != meta.get("sha256"):
        raise CheckpointError(
            f"sha256 mismatch for {wpath}: the file hashes to {digest} but {jpath.name} records "
            f"{meta.get('sha256')}. The weights are corrupt or belong to another run; re-copy both files "
            f"together, or retrain (`msa-lab train --model {name}`)."
        )
    try:
        cfg = ModelConfig.from_dict(meta["config"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{jpath} holds an invalid model config: {e}") from e
    if cfg.name != name:
        raise CheckpointError(f"{jpath} holds the config of {cfg.name!r}, not {name!r}; the files were renamed.")
    net = MSATransformer(cfg)
    state = load_file(str(wpath))
    want = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    if want != got:
        missing = sorted(set(want) - set(got))
        extra = sorted(set(got) - set(want))
        shapes = sorted(k for k in set(want) & set(got) if want[k] != got[k])
        raise CheckpointError(f"{wpath} does not match its config: missing {missing[:5]}, unexpected {extra[:5]}, "
                              f"wrong shapes {shapes[:5]}; retrain, or restore the matching JSON.")
    net.load_state_dict({k: v.to(dtype) for k, v in state.items()})
    net.to(device=device, dtype=dtype).eval()
    return net, meta
