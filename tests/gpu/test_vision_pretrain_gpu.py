"""Vision pre-training on a CUDA GPU: bf16 autocast, drawing processes forked by the DataLoader, pinned batches.

Run on the device machine: ``pytest -q tests/gpu/test_vision_pretrain_gpu.py``.
"""
import json

import pytest
import torch

from msa_lab import train as T
from msa_lab import vision_pretrain as V
from msa_lab.model import load_checkpoint

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run through the device tool)"),
]


@pytest.mark.parametrize("pool", ["1", "2"])  # 2: the 16-px checkpoint's weights carried into a pooled 32-px front end
def test_stage_runs_on_the_gpu_with_drawing_processes(tmp_path, pool):
    assert T.main(["--smoke", "--no-progress", "--steps", "1", "--device", "cpu", "--out-dir", str(tmp_path / "ck"),
                   "--log-dir", str(tmp_path / "log"), "--vision-layers", "1"]) == 0
    out = tmp_path / "v"
    assert V.main(["--smoke", "--device", "cuda", "--workers", "2", "--max-steps", "6", "--batch", "8",
                   "--no-progress", "--init-from", str(tmp_path / "ck"), "--out-dir", str(out),
                   "--image-size", "32", "--patch-size", "16", "--patch-stem", "4", "--stem-scope", "image",
                   "--replay", "3", "--patch-pool", pool]) == 0
    ev = json.loads((out / "vision_eval.json").read_text())
    assert ev["steps"] == 6 and ev["pictures"] == 48 and "NVIDIA" in ev["device"]
    log = [json.loads(line) for line in (out / "vision_log.jsonl").read_text().splitlines()]
    assert len(log) == 6 and all(r["loss"] > 0 for r in log)
    assert 6 <= log[-1]["updates"] <= 18  # replay: 1 to 3 updates per drawn batch
    before, after = load_checkpoint("smoke-msa", tmp_path / "ck")[0], load_checkpoint("smoke-msa", out)[0]
    assert after.cfg.stem_scope == "image" and after.cfg.patch_pool == int(pool)
    assert torch.equal(before.state_dict()["embed.weight"], after.state_dict()["embed.weight"])
    assert not torch.equal(before.state_dict()["vision.blocks.0.wqkv.weight"],
                           after.state_dict()["vision.blocks.0.wqkv.weight"])
