"""`--update` publishes through the store's one set (issue 12's commit record), sidecar included:
a kill at any file-system step of an update leaves the old set or the new one (array, manifest,
error list, OUT.meta.json, OUT.files.jsonl), and the next run completes or resumes it to the
bytes of an uninterrupted update. Runs the store in-process with a stand-in for the model."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from bitcli.results import EmbedResult
from bitcli.store import EmbedPaths, recover
from bitcli.store.collection import Collection
from relhelpers import KillSwitch, killed, norms_state
from test_reliability_outputs import _row

DIM = 4
FINGERPRINT = {"model": "stand-in", "commit": None, "weights": [], "preprocessing": {}, "dtype": "float32"}
OLD = ["a.png", "b.png", "c.png", "d.png", "e.png"]
NEW = ["a.png", "b.png", "d.png", "e.png", "f.png", "g.png"]  # c removed, b changed, f and g new
BROKEN = {"d.png"}  # fails while being embedded (so both sets have an error list)
OUT_FILES = ("out.npy", "out.paths.txt", "out.errors.txt", "out.meta.json", "out.files.jsonl", "out.norms.npz")


INTERRUPT_AFTER: list[int] = []  # set: Ctrl-C after that many batches


def _groups(items):
    """The stand-in model: batches of 2, BROKEN inputs failing (`items`: paths, as `--update` gives them)."""
    items = [_Item(path) for path in items]
    for start in range(0, len(items), 2):
        if INTERRUPT_AFTER and start // 2 == INTERRUPT_AFTER[0]:
            raise KeyboardInterrupt
        yield [EmbedResult(i.path, error="broken") if i.path in BROKEN else EmbedResult(i.path, _row(i.path + open(i.path).read()))
               for i in items[start:start + 2]]


class _Item:
    def __init__(self, path: str):
        self.path = path


def _update(inputs: list[str], *, resume: bool = False, overwrite: bool = False) -> None:
    """What `bit embed INPUTS -o out.npy --update` does, in the current directory."""
    paths = EmbedPaths.for_output(Path("out.npy"))
    recover(paths)
    run = Collection(paths).plan([_Item(p) for p in inputs], _groups, dim=DIM, fingerprint=dict(FINGERPRINT),
                                 update=True, resume=resume, overwrite=overwrite)
    if not run.up_to_date:
        run.write()


def _state() -> tuple:
    """The published files' bytes (the header without `cwd`: each copy runs in its own folder; the
    row norms' values and whether they are sealed: a copy is another array, so the identity they
    record differs)."""
    state = []
    for name in OUT_FILES:
        data = Path(name).read_bytes() if Path(name).exists() else None
        if name.endswith(".norms.npz"):
            data = norms_state(Path(name), valid=False)
        if name.endswith(".meta.json") and data is not None:
            header = json.loads(data)
            header.pop("cwd")
            data = json.dumps(header, sort_keys=True).encode()
        state.append(data)
    return tuple(state)


def _make_old(directory: Path) -> None:
    directory.mkdir()
    os.chdir(directory)
    for name in OLD:
        Path(name).write_text(name)
    _update(OLD)
    Path("b.png").write_text("b, changed")  # another size
    Path("c.png").unlink()
    for name in ("f.png", "g.png"):
        Path(name).write_text(name)


def _copy(base: Path, name: str) -> Path:
    target = base.parent / name
    shutil.copytree(base, target, symlinks=True)  # copy2: modification times kept
    os.chdir(target)
    return target


@pytest.mark.slow
def test_a_kill_at_any_step_of_an_update_leaves_one_set_sidecar_included(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    base = tmp_path / "base"
    _make_old(base)
    old = _state()
    assert all(s is not None for s in old)
    _copy(base, "reference")
    _update(NEW)
    new = _state()
    assert all(s is not None for s in new)
    assert [o != n for o, n in zip(old, new)] == [True, True, False, True, True, True]  # the same input fails in both
    assert norms_state(Path("out.norms.npz")) == (new[-1][0], True)  # computed from the array published
    kept = np.load("out.npy")[list(map(str.strip, open("out.paths.txt"))).index("a.png")]
    assert kept.tobytes() == np.load(base / "out.npy")[0].tobytes()  # a kept row: the old bytes
    _copy(base, "probe")
    with KillSwitch() as counter:
        _update(NEW)
    steps = counter.count
    assert steps > 5
    for at in range(steps + 1):
        _copy(base, f"kill-{at}")
        with KillSwitch(at):
            killed(lambda: _update(NEW))
        state = _state()
        if state not in (old, new):
            recover(EmbedPaths.for_output(Path("out.npy")))  # what any later run does first
            state = _state()
        assert state in (old, new), f"killed at step {at} of {steps}: " + ", ".join(
            f"{n}={'old' if s == o else 'new' if s == w else 'other'}" for n, s, o, w in zip(OUT_FILES, state, old, new))
        _update(NEW, resume=True)
        assert _state() == new, f"killed at step {at}: the next run did not give the new set"
        assert norms_state(Path("out.norms.npz"))[1], f"killed at step {at}: the norms are not the array's"
        litter = [p for p in os.listdir(".") if "partial" in p or p.endswith(".tmp")]
        assert litter == []


@pytest.mark.parametrize("resume", [False, True])
def test_overwrite_starts_an_interrupted_update_again_from_the_published_rows(tmp_path, monkeypatch, resume):
    """--update --overwrite discards the interrupted update (here: planned before more files came)."""
    monkeypatch.chdir(tmp_path)
    _make_old(tmp_path / "base")
    monkeypatch.setattr("test_collection_update_kills.INTERRUPT_AFTER", [1])
    with pytest.raises(KeyboardInterrupt):
        _update(NEW)
    monkeypatch.setattr("test_collection_update_kills.INTERRUPT_AFTER", [])
    assert Path("out.npy.partial").is_dir()
    Path("h.png").write_text("h.png")  # the folder changed again: the interrupted plan is stale
    from bitcli.errors import UsageError

    if resume:
        with pytest.raises(UsageError, match="--update --overwrite"):
            _update(NEW + ["h.png"], resume=True)
    _update(NEW + ["h.png"], overwrite=True)
    assert open("out.paths.txt").read().split() == ["a.png", "b.png", "e.png", "f.png", "g.png", "h.png"]
    assert not Path("out.npy.partial").exists()
