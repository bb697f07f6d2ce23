"""Build a development set from recordings that ship in Debian packages (see calm_core.devsets).

    python -m calm_core.devsets [OUT] [--set instruments|events|spoof|calls] [--per-class N] [--seed S]

OUT defaults to ~/.cache/calm/devsets/<set>. The sets and the Debian packages each needs:
  instruments  apt-get install fluidsynth fluid-soundfont-gm espeak-ng
  events       apt-get install tuxpaint-stamps-default wesnoth-1.16-data openttd-opensfx hedgewars-data
               sound-theme-freedesktop
  spoof        apt-get install tuxpaint-stamps-default espeak-ng flite festival festvox-kallpc16k
               festvox-kdlpc16k festvox-us-slt-hts festvox-ca-ona-hts
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ..errors import DatasetError
from . import DEVSETS, default_devset_dir
from . import build_devset as build_named_devset
from .instruments import SOUND_FONT, midi_file

__all__ = ["SOUND_FONT", "build_devset", "main", "midi_file"]


def build_devset(out: str | Path, per_class: int | None = None, seed: int = 0, *, name: str = "instruments") -> Path:
    """Write OUT/{pool,test}/<class>/*.wav and OUT/manifest.json for the named set (instruments by
    default, as before there were others); reuses a complete earlier build with the same parameters."""
    return build_named_devset(name, out, per_class, seed)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m calm_core.devsets",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=__doc__.splitlines()[0],
        epilog="\n".join(f"{d.name}: {d.description}; --per-class is the {d.per_class_meaning}, default "
                         f"{d.default_per_class}" for d in DEVSETS.values()),
    )  # fmt: skip
    parser.add_argument("out", type=Path, nargs="?", help="default: ~/.cache/calm/devsets/<set>")
    parser.add_argument("--set", dest="name", choices=list(DEVSETS), default="instruments")
    parser.add_argument("--per-class", type=int, default=None, help="default: the set's own")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    out = args.out if args.out is not None else default_devset_dir(args.name)
    start = time.perf_counter()
    try:
        print(build_named_devset(args.name, out, args.per_class, args.seed))
    except DatasetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{args.name}: {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
