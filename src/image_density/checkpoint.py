"""Checkpoints and model files: atomic writes, checksums, safe loading, fallback to the previous one.

File format: an ordinary `torch.save` dict, readable with `torch.load(path, weights_only=True)`, that
carries its own checksum under the key "sha256": the sha256 of a canonical walk of every other entry
(tensor dtypes, shapes and bytes; keys; numbers; strings), see `payload_sha256`. Keeping the checksum
inside the one file (rather than in a sidecar) means one `os.replace` publishes file and checksum
together, so no crash can leave them out of step.

Two kinds of file, told apart by the "kind" entry:
- "checkpoint" (resumable state: weights, optimizer, EMA, step, RNG states, metrics window), kept
  in a state folder as `checkpoint.pt` plus the one before it, `checkpoint.prev.pt`;
- "model" (what downstream steps read: weights, EMA ones if EMA is on, + model_spec + config + data
  meta), rebuilt with `load_model`.
"""

from __future__ import annotations

import hashlib
import os
import struct
import warnings
from pathlib import Path
from typing import Any

import torch

from image_density import atomic
from image_density.config import RESUMABLE_CHANGES

FORMAT = 1
CKPT_NAME = "checkpoint.pt"
PREV_NAME = "checkpoint.prev.pt"


class CheckpointError(ValueError):
    """A checkpoint or model file that cannot be used; the message names the file and why."""


# ------------------------------------------------------------------------------------- checksum


def payload_sha256(obj: Any) -> str:
    """sha256 of a nested structure of dicts, lists, tuples, tensors, numbers, strings and None.

    Canonical: dict entries are hashed in order of repr(key), tensors by dtype, shape and raw bytes
    (on CPU), so the digest is the same before saving and after loading on any device.
    """
    h = hashlib.sha256()

    def walk(o: Any) -> None:
        if isinstance(o, torch.Tensor):
            t = o.detach().cpu().contiguous()
            h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(o, dict):
            h.update(b"D%d" % len(o))
            for k, v in sorted(o.items(), key=lambda kv: repr(kv[0])):
                walk(k)
                walk(v)
        elif isinstance(o, list | tuple):
            h.update(b"L%d" % len(o))
            for v in o:
                walk(v)
        elif isinstance(o, bool) or o is None:
            h.update(f"B{o}".encode())
        elif isinstance(o, int):
            h.update(f"I{o}".encode())
        elif isinstance(o, float):
            h.update(b"F" + struct.pack("<d", o))
        elif isinstance(o, str):
            h.update(b"S%d:" % len(o) + o.encode())
        elif isinstance(o, bytes):
            h.update(b"Y%d:" % len(o) + o)
        else:
            raise TypeError(f"cannot checksum a {type(o).__name__} in a checkpoint payload")

    walk(obj)
    return h.hexdigest()


# --------------------------------------------------------------------------------- write / read


def save_atomic(payload: dict, path: Path, *, keep_previous: Path | None = None) -> Path:
    """Write payload + its checksum to `path` atomically: temp file, fsync, os.replace, fsync folder.

    With `keep_previous`, the file already at `path` is first moved there (checkpoint rotation).
    """
    path = Path(path)
    payload = {k: v for k, v in payload.items() if k != "sha256"}
    payload["format"] = FORMAT
    payload["sha256"] = payload_sha256(payload)
    # a fixed temp name: its writers hold the folder's lock (train.py), and a kill mid-write leaves
    # only this file behind, which the next save overwrites and no loader ever reads
    with atomic.replacing(path, tmp=path.with_name(path.name + ".tmp"), durable=True) as tmp:
        with open(tmp, "wb") as f:
            torch.save(payload, f)
        if keep_previous is not None and path.exists():
            os.replace(path, keep_previous)
    return path


def load_verified(path: Path, kind: str | None = None, map_location: str | torch.device = "cpu") -> dict:
    """Load a file written by `save_atomic` (weights_only=True), check its checksum and kind."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such checkpoint or model file: {path}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises several types for truncated / foreign files
        raise CheckpointError(
            f"{path}: unreadable, truncated or not a torch file ({type(err).__name__}: {err})"
        ) from None
    if not isinstance(payload, dict) or "sha256" not in payload or "format" not in payload:
        raise CheckpointError(f"{path}: not a file written by image-density (no format/sha256 entries)")
    if payload["format"] != FORMAT:
        raise CheckpointError(f"{path}: format {payload['format']!r}, this version reads {FORMAT}")
    stored = payload.pop("sha256")
    actual = payload_sha256(payload)
    if stored != actual:
        raise CheckpointError(
            f"{path}: checksum mismatch (stored {stored[:12]}..., contents {actual[:12]}...): "
            "the file was modified or corrupted after it was written"
        )
    if kind is not None and payload.get("kind") != kind:
        raise CheckpointError(f"{path}: is a {payload.get('kind')!r} file, expected a {kind!r} file")
    return payload


# ----------------------------------------------------------------------------- resumable state


def save_checkpoint(state: dict, ckpt_dir: Path, *, rotate: bool = True) -> Path:
    """Publish `state` as ckpt_dir/checkpoint.pt, keeping the one before as checkpoint.prev.pt.

    rotate=False when checkpoint.pt is not the last good checkpoint (`load_latest` skipped it as
    bad): it is overwritten, and checkpoint.prev.pt, the last good one, stays where it is.
    """
    ckpt_dir = Path(ckpt_dir)
    prev = ckpt_dir / PREV_NAME if rotate else None
    return save_atomic({**state, "kind": "checkpoint"}, ckpt_dir / CKPT_NAME, keep_previous=prev)


def load_latest(ckpt_dir: Path, map_location: str | torch.device = "cpu") -> tuple[dict, Path] | None:
    """The newest good checkpoint in ckpt_dir and its path, or None if there is none.

    A bad (truncated, tampered) checkpoint.pt falls back to checkpoint.prev.pt with a warning; a
    missing checkpoint.pt with a prev present (crash between the two renames of a save) too.
    Raises CheckpointError when every checkpoint present is bad.
    """
    ckpt_dir = Path(ckpt_dir)
    latest, prev = ckpt_dir / CKPT_NAME, ckpt_dir / PREV_NAME
    problems = []
    for path in (latest, prev):
        if not path.exists():
            continue
        try:
            payload = load_verified(path, kind="checkpoint", map_location=map_location)
        except CheckpointError as err:
            problems.append(str(err))
            continue
        if problems or path == prev:
            why = problems[0] if problems else f"{latest} is missing"
            warnings.warn(f"{why}; resuming from the previous checkpoint {prev}", stacklevel=2)
        return payload, path
    if problems:
        raise CheckpointError(
            "no usable checkpoint in "
            + str(ckpt_dir)
            + ": "
            + "; ".join(problems)
            + f". Delete {ckpt_dir / 'checkpoint*.pt'} to start over."
        )
    return None


IMAGE_SELECTION = ("subset", "n")  # data meta entries that choose the training images


def check_compatible(
    state: dict,
    path: Path,
    model_spec: dict,
    data_sha256: str | None,
    *,
    train_spec: dict | None = None,
    meta: dict | None = None,
) -> None:
    """Refuse to resume a checkpoint made for another architecture, other data, another choice of
    training images (`meta` subset/n) or other train settings than RESUMABLE_CHANGES."""
    old_spec = state.get("model_spec") or {}
    if old_spec != model_spec:
        # a spec written before an option existed lacks its key: the network's default built it
        diff = [
            f"{k} {old_spec.get(k, '(absent)')!r} -> {model_spec.get(k, '(absent)')!r}"
            for k in sorted(old_spec.keys() | model_spec.keys())
            if old_spec.get(k, "(absent)") != model_spec.get(k, "(absent)")
        ]
        raise CheckpointError(
            f"{path}: written for another network ({'; '.join(diff)}); its weights would not fit the "
            "one the config asks for. Delete the checkpoint or use another checkpoint folder."
        )
    theirs = state.get("meta", {}).get("data_sha256")
    if data_sha256 and theirs and theirs != data_sha256:
        raise CheckpointError(
            f"{path}: trained on data with sha256 {theirs[:12]}..., the data given now has "
            f"{data_sha256[:12]}.... Delete the checkpoint or use another checkpoint folder."
        )
    changed = []
    if train_spec is not None:
        old = state.get("train_spec") or {}
        changed += [
            f"train.{k} {old.get(k)!r} -> {train_spec.get(k)!r}"
            for k in sorted(old.keys() | train_spec.keys())
            if k not in RESUMABLE_CHANGES and old.get(k) != train_spec.get(k)
        ]
    if meta is not None:
        old = state.get("meta") or {}
        changed += [
            f"{k} {old.get(k)!r} -> {meta.get(k)!r}" for k in IMAGE_SELECTION if old.get(k) != meta.get(k)
        ]
    if changed:
        raise CheckpointError(
            f"{path}: the checkpoint in {path.parent} was written with other settings "
            f"({'; '.join(changed)}); resuming it would mix two trainings. Only train.steps, "
            "ckpt_every and log_every may change between runs: restore the old values, or delete "
            f"{path.parent} (or use another checkpoint folder) to train from scratch."
        )


# ---------------------------------------------------------------------------------- model files


def save_model(path: Path, *, weights: dict, model_spec: dict, **info: Any) -> Path:
    """The model file downstream steps read: weights + the spec that rebuilds the network + info
    (config, data meta, step, ...; JSON-like values only)."""
    return save_atomic({"kind": "model", "model": weights, "model_spec": model_spec, **info}, Path(path))


def load_model(path: Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict]:
    """Rebuild the network of a model file (models.build_model) and load its weights; returns
    (model in eval mode on `device`, the file's other entries)."""
    from image_density.models import build_model

    payload = load_verified(Path(path), kind="model")
    model = build_model(payload["model_spec"])
    try:
        model.load_state_dict(payload.pop("model"))
    except RuntimeError as err:
        raise CheckpointError(
            f"{path}: weights do not fit model_spec {payload['model_spec']}: {err}"
        ) from None
    return model.to(device).eval(), payload
