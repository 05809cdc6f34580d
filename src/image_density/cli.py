"""The `image-density` command: parse, load the config, call one library function, write files.

Each subcommand is a pair `_add_<name>(subparsers)` / `_<name>(args)`; nothing else lives here.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from image_density.config import ConfigError, load_config, write_schema


def _add_schema(sub) -> None:
    p = sub.add_parser("schema", help="write the JSON schema of the params (generated from config.py)")
    p.add_argument("--out", type=Path, default=Path("workflow/schemas/params.schema.json"))
    p.set_defaults(func=_schema)


def _schema(args) -> None:
    write_schema(args.out)


def _add_validate(sub) -> None:
    p = sub.add_parser("validate", help="check a params file and exit")
    p.add_argument("--config", type=Path, required=True)
    p.set_defaults(func=_validate)


def _validate(args) -> None:
    load_config(args.config)
    print(f"{args.config}: ok")


def _add_prepare(sub) -> None:
    p = sub.add_parser("prepare", help="prepare one dataset into results/data/<NAME>/")
    p.add_argument("--config", type=Path, required=True)
    p.add_argument("--dataset", required=True, help="a key of `datasets:` in the params file")
    p.add_argument("--out", type=Path, help="output folder (default: <results>/data/<NAME>)")
    p.set_defaults(func=_prepare)


def _prepare(args) -> None:
    cfg = load_config(args.config)
    if args.dataset not in cfg.datasets:
        raise ConfigError(f"--dataset {args.dataset!r} is not a key of datasets: in {args.config} "
                          f"(defined: {sorted(cfg.datasets)})")
    from image_density.data import prepare_dataset

    out = args.out or cfg.results / "data" / args.dataset
    prepare_dataset(cfg.datasets[args.dataset], out, name=args.dataset)


COMMANDS = [_add_schema, _add_validate, _add_prepare]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="image-density", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ConfigError, FileNotFoundError, ValueError) as err:
        print(f"image-density {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
