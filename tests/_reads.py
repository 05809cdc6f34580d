"""Which params keys a CLI command reads: `load_config` handed back behind a recording proxy.

`install(out_dir)` patches the CLI's `load_config`; every key path a command touches (attribute of a
config model, or key of one of its dicts) is written at exit to `out_dir/<pid>.json` with the
command's argv. A value that is dumped, copied or compared whole (pydantic's own methods) counts as
reading its whole subtree. The config's own methods and properties run against the proxy, so what
they read is recorded too. Keys used only as names (`name in cfg.datasets`) are not reads.
"""

from __future__ import annotations

import atexit
import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path

from pydantic import BaseModel


def _wrap(value, path: tuple[str, ...], log: set):
    if isinstance(value, BaseModel):
        return Recorder(value, path, log)
    if isinstance(value, Mapping):
        return _DictRecorder(value, path, log)
    log.add(path)
    return value


class Recorder:
    """A config model whose reads land in `log` as key paths."""

    def __init__(self, obj: BaseModel, path: tuple[str, ...], log: set):
        object.__setattr__(self, "_obj", obj)
        object.__setattr__(self, "_path", path)
        object.__setattr__(self, "_log", log)

    @property
    def __class__(self):  # isinstance(proxy, SomeSpec) as for the model itself
        return type(object.__getattribute__(self, "_obj"))

    def __getattr__(self, name):
        obj, path, log = (object.__getattribute__(self, k) for k in ("_obj", "_path", "_log"))
        if name in type(obj).model_fields:
            return _wrap(getattr(obj, name), (*path, name), log)
        attr = getattr(type(obj), name, None)
        own = attr is not None and not hasattr(BaseModel, name)
        if own and isinstance(attr, property):
            return attr.fget(self)
        if own and callable(attr):
            return attr.__get__(self)
        log.add(path)  # pydantic's machinery (model_dump, model_copy, ...): the whole subtree
        return getattr(obj, name)

    def __eq__(self, other):
        object.__getattribute__(self, "_log").add(object.__getattribute__(self, "_path"))
        return object.__getattribute__(self, "_obj") == other

    __hash__ = None


class _DictRecorder(Mapping):
    def __init__(self, d: Mapping, path: tuple[str, ...], log: set):
        self._d, self._path, self._log = d, path, log

    def __getitem__(self, key):
        return _wrap(self._d[key], (*self._path, str(key)), self._log)

    def __iter__(self):
        return iter(self._d)

    def __len__(self):
        return len(self._d)

    def __contains__(self, key):
        return key in self._d

    def get(self, key, default=None):
        return self[key] if key in self._d else default


def install(out_dir: Path) -> None:
    from image_density import cli, config

    log: set[tuple[str, ...]] = set()
    real = config.load_config

    def recording_load_config(path):
        return Recorder(real(path), (), log)

    cli.load_config = recording_load_config
    out_dir.mkdir(parents=True, exist_ok=True)

    def dump():
        record = {"argv": sys.argv[1:], "reads": sorted(map(list, log))}
        (out_dir / f"{os.getpid()}.json").write_text(json.dumps(record))

    atexit.register(dump)


if __name__ == "__main__":  # the `image-density` a recording test puts first on PATH
    install(Path(os.environ["IMAGE_DENSITY_RECORD_READS"]))
    from image_density.cli import main

    sys.exit(main())
