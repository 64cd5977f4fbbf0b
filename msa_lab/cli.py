"""`msa-lab` command line: lab, info, bench, train, pretrain-vision, eval."""
from __future__ import annotations

import argparse
import importlib
import os
import platform
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def _notebook_dir() -> Path:
    for cand in (Path.cwd() / "notebooks", REPO_ROOT / "notebooks"):
        if cand.is_dir():
            return cand
    raise SystemExit(
        "msa-lab lab: no notebooks/ folder found (looked in the current directory and next to the msa_lab "
        "package). Run it from a clone of the msa-lab repository, or pass --notebook-dir."
    )


def cmd_lab(args: argparse.Namespace) -> int:
    try:
        importlib.import_module("jupyterlab")
    except ImportError:
        raise SystemExit("msa-lab lab: JupyterLab is not installed; run `make lab` or pip install 'msa-lab[lab]'.")
    nb_dir = Path(args.notebook_dir) if args.notebook_dir else _notebook_dir()
    cmd = [sys.executable, "-m", "jupyterlab", f"--notebook-dir={nb_dir}", f"--ip={args.ip}"]
    if args.port:
        cmd.append(f"--port={args.port}")
    if args.no_browser or not (os.environ.get("DISPLAY") or sys.platform in ("darwin", "win32")):
        cmd.append("--no-browser")  # headless: JupyterLab still prints the URL with its token
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")  # containers and CI machines often run as root; Jupyter refuses without it
    cmd += args.extra
    print("msa-lab: starting", " ".join(cmd), flush=True)
    os.execv(sys.executable, cmd)
    return 0  # not reached


def info_lines() -> list[str]:
    import torch

    from . import __version__
    from .attention import resolve_backend

    lines = [
        f"msa-lab      {__version__}",
        f"python       {platform.python_version()} ({sys.executable})",
        f"torch        {torch.__version__}",
    ]
    try:
        import triton

        lines.append(f"triton       {triton.__version__}")
    except ImportError:
        lines.append("triton       not installed (kernels unavailable; the torch path runs)")
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        lines.append(f"device       {p.name}, sm_{p.major}{p.minor}, {p.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda}")
        if (p.major, p.minor) != (9, 0):
            lines.append("             note: the kernels are written and tuned for Hopper (sm_90: H100/H200)")
    else:
        lines.append("device       no CUDA GPU (CPU only)")
    lines.append(f"TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET', '') or 'unset'}")
    for dev in ["cpu"] + (["cuda"] if torch.cuda.is_available() else []):
        name, why = resolve_backend(dev)
        lines.append(f"backend[{dev}] {name}: {why}")
    opt = []
    for mod in ("jupyterlab", "ipywidgets", "plotly", "datasets", "PIL", "pandas"):
        try:
            importlib.import_module(mod)
            opt.append(f"{mod} yes")
        except ImportError:
            opt.append(f"{mod} no")
    lines.append("lab extras   " + ", ".join(opt))
    return lines


def cmd_info(args: argparse.Namespace) -> int:
    print("\n".join(info_lines()))
    return 0


def _delegate(module: str, what: str):
    def run(args: argparse.Namespace) -> int:
        try:
            mod = importlib.import_module(module)
        except ImportError as e:
            raise SystemExit(f"msa-lab {what}: {module} is not available ({e}).")
        return int(mod.main(args.extra) or 0)

    return run


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="msa-lab", description="MSA workbench: notebooks, kernels, models.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    lab = sub.add_parser("lab", help="open JupyterLab on the notebooks (what `make lab` runs)")
    lab.add_argument("--notebook-dir", default=None)
    lab.add_argument("--ip", default="127.0.0.1")
    lab.add_argument("--port", type=int, default=None)
    lab.add_argument("--no-browser", action="store_true")
    lab.add_argument("extra", nargs=argparse.REMAINDER, help="passed on to jupyter lab")
    lab.set_defaults(fn=cmd_lab)
    sub.add_parser("info", help="versions, device, and which kernel backend is active and why").set_defaults(fn=cmd_info)
    for name, module, text in (
        ("bench", "msa_lab.bench", "GPU benchmark of the kernels (writes data/bench/<date>-<card>.json)"),
        ("train", "msa_lab.train", "train the small models"),
        ("pretrain-vision", "msa_lab.vision_pretrain", "train the patch path and vision encoder alone on per-patch labels"),
        ("eval", "msa_lab.eval", "evaluate the small models"),
    ):
        p = sub.add_parser(name, help=text, add_help=False)
        p.add_argument("extra", nargs=argparse.REMAINDER)
        p.set_defaults(fn=_delegate(module, name))
    args, unknown = ap.parse_known_args(argv)
    if unknown:
        if args.cmd not in ("bench", "train", "pretrain-vision", "eval"):
            ap.error(f"unrecognized arguments: {' '.join(unknown)}")
        args.extra = unknown + args.extra  # options after `bench`/`train`/`eval` belong to that tool
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
