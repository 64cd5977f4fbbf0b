"""The low and text arms of cpu-vision-arms.sh, each continued from its own 250-update weights with the same settings,
both at once (one thread each): does supervising the fields' "Label:" text raise the label read at their boxes
given more updates? The low arm keeps the labels as they were before label_box (nothing where no element lies).
    python data/train/probes/gui-reading-2026-12-08/continue_arms.py box-only|with-text [msa_lab.vision_pretrain args]
"""
import sys

import msa_lab.vision_pretrain as V
from msa_lab.train import PATCH_HEADS

if sys.argv[1] == "box-only":
    labels = V.patch_labels

    def box_only(ex, cfg):
        lab = labels(ex, cfg)
        no_element = lab[:, PATCH_HEADS.index("gui")] == 0
        for h in ("gui_label", "gui_window"):
            lab[no_element, PATCH_HEADS.index(h)] = 0
        return lab

    V.patch_labels = box_only
elif sys.argv[1] != "with-text":
    raise SystemExit("first argument: box-only or with-text")
sys.exit(V.main(sys.argv[2:]))
