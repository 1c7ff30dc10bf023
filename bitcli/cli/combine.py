"""`bit combine`, and the two ways `bit embed` runs beyond this process: `--engine ray`, `--shard I/N`.

The library (`bitcli.distributed`) does the work; this file checks which options go together,
turns progress reports into a bar (shards and images done) and failures into `error:` lines,
and says what to do next. docs/distributed.md describes all of it.
"""

from __future__ import annotations

import contextlib
import signal
import sys
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from bitcli.cli.common import EXIT_OK, EXIT_SOME_FAILED, DebugOpt, QuietOpt, Ui, epilog, option, report_summary
from bitcli.errors import UsageError

PANEL = "More than one machine (docs/distributed.md)"


class Engine(str, Enum):
    local = "local"
    ray = "ray"


EngineOpt = option(Engine, "--engine", panel=PANEL, help="local: this process. ray: a Ray cluster (pip install 'bitcli\\[ray]').")
RayAddressOpt = option(
    Optional[str], "--ray-address", panel=PANEL, metavar="HOST:PORT",
    help="The Ray cluster (default: $RAY_ADDRESS, else a new local one; auto: the one `ray start` began here).",
)
WorkersOpt = option(
    Optional[int], "--workers", panel=PANEL, min=1, metavar="N", help="Ray workers, each loading the model once (default: what the cluster holds).",
)
GpusOpt = option(float, "--num-gpus-per-worker", panel=PANEL, min=0, metavar="G", help="GPUs each Ray worker reserves (0: CPU workers).")
ShardOpt = option(
    Optional[str], "--shard", panel=PANEL, metavar="I/N",
    help="Job I of N (a job array): embed shards I, I+N, ... here, into OUT.npy.shards/; then bit combine.",
)
ShardSizeOpt = option(Optional[int], "--shard-size", panel=PANEL, min=1, metavar="N", help="Inputs per shard, whole batches (default: about 1024).")
ShardDirOpt = option(
    Optional[Path], "--shard-dir", panel=PANEL, metavar="DIR", help="Where shards go (default: OUT.npy.shards); on a cluster, shared storage.",
)


@dataclass(frozen=True)
class Distribution:
    """How `bit embed` spreads the work: the engine, Ray's options, the shard job and the split."""

    engine: Engine = Engine.local
    ray_address: str | None = None
    workers: int | None = None
    gpus: float = 0.0
    shard: str | None = None
    shard_size: int | None = None
    shard_dir: Path | None = None

    def check(self, to_stdout: bool, manifest: Path | None, update: bool = False) -> bool:
        """Whether the run is distributed (ray or a shard job); UsageError for options that clash.
        `update`: a shard job of `--update` reads OUT's manifest (`--manifest` names it) to plan."""
        named = (("--ray-address", self.ray_address), ("--workers", self.workers), ("--num-gpus-per-worker", self.gpus))
        ray_only = [name for name, value in named if value]
        if self.engine is Engine.local and ray_only:
            raise UsageError(f"{ray_only[0]} applies to --engine ray")
        if self.shard is not None and self.engine is Engine.ray:
            raise UsageError("--shard runs one job's shards here, --engine ray runs all on the cluster: pass one of them")
        distributed = self.engine is Engine.ray or self.shard is not None
        if not distributed and (self.shard_size or self.shard_dir):
            raise UsageError("--shard-size and --shard-dir apply to --engine ray and --shard")
        if distributed and to_stdout:
            raise UsageError("-o -: shards are kept beside the output; give -o OUT.npy")
        if self.shard is not None and manifest is not None and not update:
            raise UsageError("--manifest names the combined output's manifest: give it to bit combine")
        return distributed


def embed_distributed(
    ui: Ui, inputs: list[str], job: Any, paths: Any, dist: Distribution, *, resume: bool, overwrite: bool, null: bool = False,
    update: bool = False,
) -> int:
    """`bit embed` with `--engine ray` or `--shard I/N`; `job` is a `bitcli.distributed.EmbedJob`;
    `null`: paths on stdin are NUL-separated (`-0`), as for a local run; `update`: shard jobs of
    an `--update` of OUT (each embeds its part of what changed; `bit combine` updates OUT)."""
    from bitcli.distributed import RayOptions, default_shard_dir, embed_on_ray, parse_selection, run_shards
    from bitcli.inputs import expand_inputs
    from bitcli.store import EmbedPaths, write_errors

    entries = expand_inputs(inputs, stdin=sys.stdin, null=null)  # streamed: listed once, never held in memory
    shard_dir = dist.shard_dir or default_shard_dir(paths.out)
    bar = ShardBar(ui)
    common = {"resume": resume, "overwrite": overwrite, "progress": bar, "on_failure": bar.error}
    try:
        with bar, terminated_as_interrupt(), write_errors(paths) if dist.shard is None else contextlib.nullcontext():
            if dist.shard is None:
                options = RayOptions(dist.ray_address, dist.workers, dist.gpus, dist.shard_size, dist.shard_dir)
                summary = embed_on_ray(entries, paths, job, options, **common)
            else:
                selection = parse_selection(dist.shard)
                run = run_shards(entries, shard_dir, job, selection=selection, shard_size=dist.shard_size,
                                 update=paths if update else None, **common)
    except BaseException as exc:  # not after a usage error: that one says what to do itself
        if not isinstance(exc, UsageError) and shard_dir.is_dir() and any(p.name.startswith("shard-") for p in shard_dir.iterdir()):
            ui.info(f"finished shards kept in {shard_dir}; rerun with --resume to continue")
        if isinstance(exc, KeyboardInterrupt):
            bar.summary()
        raise
    if dist.shard is not None:
        own = f" --manifest {paths.manifest}" if paths.manifest != EmbedPaths.for_output(paths.out).manifest else ""
        ui.info(
            f"shard job {dist.shard}: {len(run.ran)} shards embedded, {len(run.skipped)} kept from an earlier run, "
            f"in {shard_dir} ({run.split.shards} shards in all); when every job is done: bit combine -o {paths.out}{own}"
        )
        bar.summary()
        return EXIT_SOME_FAILED if run.failed else EXIT_OK
    if summary.already_complete:  # exits as the run that made it did, like a local --resume
        ui.info(f"{paths.out} is already complete; nothing to resume (pass --overwrite to redo it)")
        report_summary(ui, summary, paths, done=True)
        return EXIT_SOME_FAILED if summary.failed else EXIT_OK
    report_summary(ui, summary, paths)
    bar.summary()
    return EXIT_SOME_FAILED if summary.failed else EXIT_OK


@contextlib.contextmanager
def terminated_as_interrupt() -> Any:
    """SIGTERM ends the run as Ctrl-C does: the cluster shut down, finished shards kept (exit 130)."""
    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class ShardBar:
    """The progress callback: a `screen.Bar` over the inputs this run embeds, labelled with the
    shards done; `error` prints a failed input's line with the bar out of the way."""

    def __init__(self, ui: Ui) -> None:
        self.ui, self.bar, self.start, self.failed = ui, None, 0, 0

    def __enter__(self) -> "ShardBar":
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)

    def __call__(self, state: Any) -> None:
        if self.bar is None:  # the first report comes once the inputs are listed: totals known
            self.bar, self.start = self.ui.progress(state.images_total - state.images_done, ""), state.images_done
            self.bar.__enter__()
        label = f"shards {state.shards_done}/{state.shards_total}" + (f", {state.failed} failed" if state.failed else "")
        self.bar.describe(label)
        self.bar.advance(max(0, state.images_done - self.start - self.bar.done))  # never backwards

    def error(self, path: str, reason: str) -> None:
        self.failed += 1
        with self.bar.paused() if self.bar is not None else contextlib.nullcontext():
            self.ui.error(f"{path}: {reason}")

    def summary(self) -> None:
        """The closing line for a person watching (`6 images, 1 failed, 2.3 s, 2.6 img/s`)."""
        if self.bar is not None:
            self.ui.summary(self.bar, self.failed)


EPILOG = epilog(
    "bit embed photos/ -o out.npy --shard 0/4  # ... up to --shard 3/4, on four machines",
    "bit combine -o out.npy  # reads out.npy.shards/",
    "bit combine -o out.npy node1/out.npy.shards node2/out.npy.shards",
    note=(
        "Checks that every shard is there once, all cut from the same inputs with the same model and "
        "options, then publishes the files a local bit embed writes as one set: OUT.npy, OUT.paths.txt, "
        "OUT.errors.txt, OUT.meta.json, OUT.files.jsonl, OUT.norms.npz and the run record that bit embed "
        "--resume checks. The shards are kept."
    ),
)


def combine(
    output_path: Annotated[Path, typer.Option("--output", "-o", metavar="OUT.npy", help="The combined .npy file.")],
    shard_dirs: Annotated[
        Optional[list[Path]],
        typer.Argument(metavar="SHARD_DIR", help="Shard directories or folders (default: OUT.npy.shards).", show_default=False),
    ] = None,
    manifest: Annotated[
        Optional[Path], typer.Option("--manifest", metavar="FILE", help="Where to list the row paths (default: OUT.paths.txt).")
    ] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output.")] = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> int:
    """Assemble the shards of `bit embed --shard I/N` jobs into the files a local run writes."""
    from bitcli.distributed import combine as combine_shards
    from bitcli.distributed import default_shard_dir
    from bitcli.store import recover, write_errors
    from bitcli.store.paths import output_paths

    ui = Ui(quiet=quiet, debug=debug)
    if str(output_path) == "-":  # not "-.npy": the shards are combined into files, never a stream
        raise UsageError("-o -: bit combine writes files (the array, manifest, error list, run record); give -o OUT.npy")
    paths = output_paths(str(output_path), manifest)  # as bit embed (and numpy.save): -o vecs writes vecs.npy
    again = "the same bit combine"  # it continues a partial run itself: there is no --resume to pass
    try:
        with write_errors(paths, again=again):  # a failed write (disk full): one line naming the output
            recovered = recover(paths)  # as bit embed says it; a combine of these shards is then this one (exit 0)
            if recovered:
                ui.info(f"completed publishing {paths.out}, which an interrupted run had left half-renamed")
            summary = combine_shards(shard_dirs or [default_shard_dir(paths.out)], paths, overwrite=overwrite, recovered=recovered)
    except KeyboardInterrupt:
        if paths.partial.is_dir():
            ui.info(f"partial results kept in {paths.partial}; rerun {again} to continue")
        raise
    if summary.update:  # the shards of --update jobs: `out.npy: +3 new, 1 changed, 2 removed, 23 kept`
        ui.info(f"{paths.out}: {summary.update}")
    if not summary.already_complete:
        report_summary(ui, summary, paths, done=summary.update is not None)
    return EXIT_SOME_FAILED if summary.failed else EXIT_OK
