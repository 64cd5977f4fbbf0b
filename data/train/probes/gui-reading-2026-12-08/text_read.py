"""Field labels read at their "Label:" text and at their boxes, by a checkpoint's gui_label head (held-out GUI
screens, eval seed 4242, 256 screens). Run from the repository root:
    python data/train/probes/gui-reading-2026-12-08/text_read.py DIR [DIR ...]
(each DIR holds msa-tiny.safetensors and msa-tiny.patch_heads.safetensors)."""
import sys, torch
from pathlib import Path
from msa_lab.model.checkpoint import load_checkpoint
from msa_lab.train import PatchSupervision, load_patch_heads, parse_tasks, PATCH_HEADS
from msa_lab.vision_pretrain import held_out, encoder_states
torch.set_num_threads(2)
res = {}
for d in sys.argv[1:]:
    net, _ = load_checkpoint("msa-tiny", Path(d), device="cpu"); net.float().eval()
    heads = PatchSupervision(net.cfg.d_model); load_patch_heads(heads, d, "msa-tiny")
    px, lab = held_out(net.cfg, parse_tasks("gui:1"), 256, 4242)["gui"]
    with torch.no_grad():
        hid = torch.cat([encoder_states(net, px[i:i+64]) for i in range(0, len(px), 64)])
        lg = heads.heads["gui_label"](hid).view(len(px), -1, heads.heads["gui_label"].out_features)
    gl, gk = lab[..., PATCH_HEADS.index("gui_label")], lab[..., PATCH_HEADS.index("gui")]
    ok = n = okb = nb = 0
    for b in range(len(px)):
        for c in gl[b][(gl[b] > 0) & (gk[b] == 0)].unique().tolist():  # label texts (no element under them)
            m = (gl[b] == c) & (gk[b] == 0)
            ok += int(lg[b][m].mean(0).argmax()) == c; n += 1
            mb = (gl[b] == c) & (gk[b] == 1 + list(("button", "menu", "icon", "checkbox", "close", "field", "list")).index("field"))
            if mb.any():
                okb += int(lg[b][mb].mean(0).argmax()) == c; nb += 1
    print(d, f"field label text read {ok}/{n} = {ok/max(1,n):.3f}; field boxes {okb}/{nb} = {okb/max(1,nb):.3f}")
