"""bt-images: obtain and locate guest images (docs/images.md).

    bt-images fetch linux [--init FILE] [--refresh]
    bt-images path linux [kernel|initrd|busybox|dir]
    bt-images list

Exit status: 0 ok, 2 bad input (arguments, an unreadable --init file),
69 unavailable (no apt/dpkg, no network, package not found, not fetched yet).
"""
from __future__ import annotations

import argparse
import sys

from bt.cli.common import CliParser, quiet_on_closed_pipe, stops_on_signals
from bt.errors import BadInput
from bt.images import fetch
from bt.images.files import read_file

TARGETS = ("linux",)
EX_UNAVAILABLE = fetch.FetchError.exit_status


@stops_on_signals("bt-images")
@quiet_on_closed_pipe
def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return args.func(args)
    except (BadInput, fetch.FetchError) as e:
        print(f"bt-images: error: {e}", file=sys.stderr)
        return e.exit_status


def _fetch(args) -> int:
    init = read_file(args.init, "--init") if args.init else fetch.DEFAULT_INIT
    paths = fetch.ensure_linux_images(init_script=init, refresh=args.refresh)
    _print_paths(paths)
    return 0


def _path(args) -> int:
    paths = fetch.linux_paths()
    if fetch.read_manifest() is None or not paths["initrd"].is_file():
        raise fetch.FetchError(f"the {args.target} images are not fetched yet (looked in {paths['dir']}); "
                               f"run `bt-images fetch {args.target}`")
    if args.which:
        print(paths[args.which])
    else:
        _print_paths(paths)
    return 0


def _list(args) -> int:
    print(f"image directory: {fetch.image_root()}")
    manifest = fetch.read_manifest()
    if manifest is None:
        print("linux: not fetched (bt-images fetch linux)")
    else:
        k, b = manifest["kernel"], manifest["busybox"]
        init = manifest.get("initramfs", {}).get("init", "none")
        print(f"linux: {k['package']} {k['version']}, {b['package']}:{b['arch']} {b['version']}, "
              f"{init} /init  ({fetch.linux_dir()})")
    return 0


def _print_paths(paths) -> None:
    for key in ("kernel", "initrd", "busybox"):
        print(f"{key}: {paths[key]}")


def _parser() -> argparse.ArgumentParser:
    p = CliParser(prog="bt-images", description="Obtain and locate bt guest images.")
    sub = p.add_subparsers(dest="command", required=True)
    f = sub.add_parser("fetch", help="download and unpack a guest through apt, build its initramfs")
    f.add_argument("target", choices=TARGETS)
    f.add_argument("--init", metavar="FILE", help="script to use as /init (default: a shell on ttyS0)")
    f.add_argument("--refresh", action="store_true", help="download again even if cached")
    f.set_defaults(func=_fetch)
    q = sub.add_parser("path", help="print the paths of a fetched guest")
    q.add_argument("target", choices=TARGETS)
    q.add_argument("which", nargs="?", choices=("kernel", "initrd", "busybox", "dir"))
    q.set_defaults(func=_path)
    s = sub.add_parser("list", help="list guest targets and whether they are fetched")
    s.set_defaults(func=_list)
    return p


if __name__ == "__main__":
    sys.exit(main())
