"""load_ordered: input order, bounded look-ahead, errors in place, prompt interruption."""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from pathlib import Path

import pytest
import torch

from bitcli.decode import open_image
from bitcli.errors import InputError
from bitcli.inputs import InputItem, expand_inputs
from bitcli.loader import Loaded, image_loader, load_ordered
from bitcli.preprocess import PreprocessConfig, preprocess

from images import write_zoo

SAMPLE_DIR = Path(__file__).parent.parent / "sample_images"


def items(count: int) -> list[InputItem]:
    return [InputItem(index=i, path=f"img{i:04d}") for i in range(count)]


def tensor_for(path: str) -> torch.Tensor:
    return torch.tensor([float(path[3:])])


def test_results_come_in_input_order_despite_random_durations():
    rng = random.Random(0)
    delays = {f"img{i:04d}": rng.uniform(0, 0.01) for i in range(60)}

    def slow(path: str) -> torch.Tensor:
        time.sleep(delays[path])
        return tensor_for(path)

    results = list(load_ordered(items(60), slow, workers=4, lookahead=8))
    assert [r.index for r in results] == list(range(60))
    assert all(r.tensor.item() == r.index for r in results)


def test_workers_run_in_parallel():
    # Four loads meet at a barrier: they pass only if four run at once (one at a time, the first
    # would wait there alone until the barrier's bound breaks it and the test fails).
    meeting = threading.Barrier(4, timeout=30)

    def together(path: str) -> torch.Tensor:
        meeting.wait()
        return tensor_for(path)

    assert len(list(load_ordered(items(8), together, workers=4, lookahead=8))) == 8


def test_errors_stay_in_place():
    error = InputError("gone.jpg", "no such file or directory")
    source = [*items(2), error, InputItem(index=2, path="img0002")]

    def load(path: str) -> torch.Tensor:
        if path == "img0001":
            raise InputError(path, "not an image")
        return tensor_for(path)

    results = list(load_ordered(source, load, workers=2, lookahead=4))
    assert isinstance(results[0], Loaded) and results[0].path == "img0000"
    assert isinstance(results[1], InputError) and results[1].reason == "not an image"
    assert results[2] is error
    assert isinstance(results[3], Loaded) and results[3].index == 2


def test_other_exceptions_propagate():
    def broken(path: str) -> torch.Tensor:
        raise RuntimeError("bug")

    with pytest.raises(RuntimeError, match="bug"):
        list(load_ordered(items(3), broken))


@pytest.mark.parametrize(("workers", "lookahead"), [(1, 1), (2, 3), (4, 16)])
def test_lookahead_bounds_work_in_flight(workers, lookahead):
    pulled = 0
    started = 0
    lock = threading.Lock()

    def source():
        nonlocal pulled
        for item in items(100):
            pulled += 1
            yield item

    def load(path: str) -> torch.Tensor:
        nonlocal started
        with lock:
            started += 1
        return tensor_for(path)

    consumed = 0
    for _ in load_ordered(source(), load, workers=workers, lookahead=lookahead):
        consumed += 1
        time.sleep(0.001)  # a slow consumer: the pool would race ahead if it could
        # In flight: the item being handled plus those queued behind it.
        assert pulled - (consumed - 1) <= lookahead
        assert started - (consumed - 1) <= lookahead
    assert consumed == 100


def test_closing_early_stops_loading():
    started = []

    def load(path: str) -> torch.Tensor:
        started.append(path)
        time.sleep(0.01)
        return tensor_for(path)

    stream = load_ordered(items(1000), load, workers=2, lookahead=10)
    next(stream)
    stream.close()
    time.sleep(0.1)
    count = len(started)
    time.sleep(0.1)
    assert len(started) == count <= 12  # cancelled, no more work after close


def test_keyboard_interrupt_in_a_worker_propagates_and_stops_the_pool():
    started = []

    def load(path: str) -> torch.Tensor:
        started.append(path)
        if path == "img0003":
            raise KeyboardInterrupt
        time.sleep(0.01)
        return tensor_for(path)

    with pytest.raises(KeyboardInterrupt):
        for _ in load_ordered(items(1000), load, workers=2, lookahead=8):
            pass
    time.sleep(0.1)
    count = len(started)
    time.sleep(0.1)
    assert len(started) == count < 20


def test_ctrl_c_while_waiting_on_a_slow_image_is_prompt():
    started = threading.Event()
    release = threading.Event()
    finished = []

    def stuck(path: str) -> torch.Tensor:
        started.set()
        release.wait(30)
        finished.append(path)
        return tensor_for(path)

    def interrupt() -> None:
        if started.wait(30):
            os.kill(os.getpid(), signal.SIGINT)

    killer = threading.Thread(target=interrupt)
    killer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            list(load_ordered(items(4), stuck, workers=2, lookahead=4))
        # Ctrl-C ended the wait while every image was still stuck in its worker.
        assert finished == []
    finally:
        release.set()
        killer.join()


def test_invalid_arguments():
    with pytest.raises(ValueError):
        list(load_ordered(items(1), tensor_for, workers=0))
    with pytest.raises(ValueError):
        list(load_ordered(items(1), tensor_for, lookahead=0))


def test_end_to_end_on_a_folder_matches_sequential_preprocessing(tmp_path):
    zoo = write_zoo(tmp_path / "zoo")
    (tmp_path / "zoo" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")
    cfg = PreprocessConfig(shortest_edge=64, crop_size=(64, 64))
    results = list(
        load_ordered(expand_inputs([str(tmp_path / "zoo")]), image_loader(cfg), workers=2, lookahead=4)
    )
    loaded = [r for r in results if isinstance(r, Loaded)]
    errors = [r for r in results if isinstance(r, InputError)]
    assert [e.path for e in errors] == [str(tmp_path / "zoo" / "broken.jpg")]
    assert len(loaded) == len(zoo)
    assert [r.path for r in loaded] == sorted(r.path for r in loaded)
    for result in loaded:
        assert torch.equal(result.tensor, preprocess(open_image(result.path), cfg)), result.path


def test_fast_jpeg_loader_uses_draft_mode():
    cfg = PreprocessConfig(shortest_edge=224, crop_size=(224, 224))
    path = str(SAMPLE_DIR / "retina.jpg")
    exact = image_loader(cfg)(path)
    fast = image_loader(cfg, fast_jpeg=True)(path)
    difference = (fast - exact).abs()
    assert fast.shape == exact.shape
    assert 0 < difference.mean().item() < 0.05  # different pixels, same picture


@pytest.mark.parametrize("orientation", range(1, 9))
def test_fast_jpeg_stays_close_to_exact_for_every_orientation(tmp_path, orientation):
    # 1201 x 901 decodes at 1/2 to 601 x 451: the last column and row are half outside the
    # picture, on the side each orientation moves them to. A misplaced box costs ~10x more.
    from images import exif_with_orientation, picture
    from PIL import Image

    path = tmp_path / "photo.jpg"
    Image.fromarray(picture(1201, 901, seed=5)).save(
        path, quality=95, exif=exif_with_orientation(orientation)
    )
    cfg = PreprocessConfig(shortest_edge=224, crop_size=(224, 224), resample=2)
    exact = image_loader(cfg)(str(path))
    fast = image_loader(cfg, fast_jpeg=True)(str(path))
    assert open_image(path, draft_size=cfg.draft_size()).size in ((601, 451), (451, 601))
    assert (fast - exact).abs().mean().item() < 0.015  # a misplaced box gives >= 0.033
