"""`python -m harness.deploy`: the deployment commands.

    python -m harness.deploy export --card students/student_pidnet_s/card.toml --int8 --out deploy/pidnet_s
    python -m harness.deploy export --localizer mine:pidnet_s=w.pt --input-size 128 \\
        --sdecoder reference_sdecoder --int8 --calib my_photos/ --out deploy/mine

`export` writes `<name>.onnx` (the Localizer with its resize and ImageNet normalisation, B×3×400×400 in [0, 1] →
B×1×h×w logits, batch dynamic, BatchNorm at its running statistics), checked by `onnx.checker` and against eager on
a few of decoder2's views (max |diff| printed), and with `--int8` `<name>.int8.onnx` (ONNX Runtime static
quantisation, QDQ, per channel, calibrated on decoder2's views of a dataset's photos: the reference world's
calibration set by default, `--calib DIR` a folder of your own with manifest.csv). Each file gets a card,
`<file>.json`: source checkpoint and its sha256, opset, versions, the comparison, the quantiser's settings and the
calibration set's hash. Run them in an evaluation with `--localizer LABEL:onnx=FILE.onnx --bn-mode eval`.

Exit codes: 0 done, 2 the export failed or did not match eager (the message says why).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from harness.deploy.build import CALIB_PHOTOS, check_views_for, deploy_module, export_checked, quantized
from harness.deploy.onnx_export import FP32, INT8, DeployError
from harness.models import CheckpointError, build_localizer, build_sdecoder, load_card, sha256_file
from harness.models.cards import trained_input_size


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m harness.deploy", description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    sub = ap.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("export", help="a localizer (and optionally an SDecoder) to ONNX, fp32 and int8")
    what = ex.add_mutually_exclusive_group(required=True)
    what.add_argument("--card", type=Path, help="a model card (students/NAME/card.toml)")
    what.add_argument("--localizer", metavar="[LABEL:]NAME=CKPT", help="a registered localizer and its checkpoint")
    ex.add_argument("--input-size", type=int, default=None,
                    help="--localizer: the side the network sees (default: as its run or card records, else 400)")
    ex.add_argument("--flip-test", action="store_true", help="--localizer: export with HRNet's flip test")
    ex.add_argument("--sdecoder", default=None, metavar="NAME[=CKPT]", help="also export this secret decoder")
    ex.add_argument("--int8", action="store_true", help="also write the int8 file (static quantisation)")
    ex.add_argument("--calib", type=Path, default=None,
                    help="calibration photos: a dataset folder (default: the reference world's, made under "
                         "data/calib)")
    ex.add_argument("--n-calib", type=int, default=CALIB_PHOTOS,
                    help=f"calibration photos, each at every search angle (default {CALIB_PHOTOS})")
    ex.add_argument("--threads", type=int, default=1, help="torch and ORT intra-op threads (default 1)")
    ex.add_argument("--out", type=Path, required=True, help="folder for the .onnx files and their cards")
    return ap


def _localizer(args: argparse.Namespace):
    """(name, arch, module, checkpoint, input_size, flip_test) of the localizer to export."""
    if args.card is not None:
        card = load_card(args.card)
        ckpt = card.checkpoint_path
        return card.name, card.arch, card.build(), None if ckpt is None else str(ckpt), card.input_size, card.flip_test
    head, _, ckpt = args.localizer.partition("=")
    label, _, arch = head.rpartition(":")
    arch, ckpt = arch.strip(), ckpt.strip() or None
    size = args.input_size
    if size is None and ckpt is not None:
        found = trained_input_size(arch, ckpt)
        size = None if found is None else found[0]
        print(f"harness.deploy: {arch} at input {size or 400}" + (f", as {found[1]} records" if found else ""),
              file=sys.stderr)
    module = build_localizer(arch, size, ckpt, args.flip_test)
    return label.strip() or arch, arch, module, ckpt, size, args.flip_test


def export(args: argparse.Namespace) -> list[Path]:
    torch.set_num_threads(args.threads)
    name, arch, module, ckpt, size, flip = _localizer(args)
    source_sha = sha256_file(ckpt) if ckpt else None
    written = []
    for runtime in (FP32, INT8) if args.int8 else (FP32,):
        path, card = deploy_module(module, runtime, args.out, name, arch=arch, source=ckpt, source_sha256=source_sha,
                                   input_size=size, flip_test=flip, calib=args.calib, n_calib=args.n_calib,
                                   threads=args.threads)
        written.append(path)
    if args.sdecoder:
        sd_name, _, sd_ckpt = args.sdecoder.partition("=")
        sd_name, sd_ckpt = sd_name.strip(), sd_ckpt.strip() or None
        sdecoder = build_sdecoder(sd_name, sd_ckpt)
        fp32 = args.out / f"sdecoder_{sd_name}.onnx"
        views = check_views_for(args.calib)
        export_checked(sdecoder, fp32, kind="sdecoder", arch=sd_name, source=sd_ckpt,
                       source_sha256=sha256_file(sd_ckpt) if sd_ckpt else None, check_views=views,
                       threads=args.threads)
        written.append(fp32)
        if args.int8:
            int8 = args.out / f"sdecoder_{sd_name}.int8.onnx"
            quantized(fp32, int8, arch=sd_name, calib=args.calib, n_calib=args.n_calib, module=sdecoder,
                      check_views=views, threads=args.threads)
            written.append(int8)
    return written


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        written = export(args)
    except (DeployError, CheckpointError, ValueError, KeyError, FileNotFoundError) as err:
        print(f"harness.deploy: {err}", file=sys.stderr)
        return 2
    for path in written:
        print(f"{path}  ({path.stat().st_size / 2**20:.2f} MiB; card {path.name}.json)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
