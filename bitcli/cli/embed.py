"""`bit embed`: pooled feature vectors as one .npy array, written atomically and resumably.

The store (`bitcli.store`) owns the files, the batch/commit loop and the error names; this file
builds the iterator of result groups and the progress bar, and reports.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from bitcli.cli.combine import (Distribution, Engine, EngineOpt, GpusOpt, RayAddressOpt, ShardDirOpt, ShardOpt,
                                ShardSizeOpt, WorkersOpt, embed_distributed)
from bitcli.cli.common import (EXIT_OK, EXIT_SOME_FAILED, BatchSizeOpt, DebugOpt, Device, DeviceOpt, Dtype, FastJpegOpt,
                               InputsArg, MaxPixelsOpt, ModelOpt, NullOpt, Precision, PrecisionOpt, QuietOpt, ThreadsOpt,
                               Ui, expand, load_model, report_summary, run_options)
from bitcli.cli.common import epilog
from bitcli.cli.screen import duration
from bitcli.errors import UsageError
from bitcli.output import is_terminal
from bitcli.pipeline import DEFAULT_BATCH_SIZE, DEFAULT_MODEL
from bitcli.util import DEFAULT_MAX_PIXELS

EPILOG = epilog(
    "bit embed photos/ -o photos.npy",
    "bit embed 'photos/**/*.jpg' -o photos.npy --normalize --dtype float16",
    "bit embed photos/ -o photos.npy --resume  # continue an interrupted run",
    "bit embed photos/ -o photos.npy --update  # embed new and changed files, drop removed ones",
    "bit embed a.jpg b.jpg -o - --manifest rows.txt > vectors.npy",
    "bit embed photos/ -o photos.npy --engine ray  # on a Ray cluster: docs/distributed.md",
    note=(
        "Writes OUT.npy [N, D] (.npy is added to a name without it, as numpy.save does), OUT.paths.txt "
        "(line i = path of row i), OUT.meta.json and OUT.files.jsonl (what made the rows, each row's "
        "file: docs/collection.md), OUT.norms.npz (the rows' norms, for search) and, when some inputs "
        "fail, OUT.errors.txt (PATH<TAB>reason). Files appear atomically; an interrupted run leaves "
        "OUT.npy.partial/ for --resume."
    ),
)


def embed(
    ctx: typer.Context,
    inputs: InputsArg,
    output_path: Annotated[
        str,
        typer.Option(
            "--output", "-o", metavar="OUT.npy",
            help="Output .npy file (.npy is added when missing); - writes the .npy bytes to stdout.",
        ),
    ],
    dtype: Annotated[Dtype, typer.Option("--dtype", help="Element type of the saved array.")] = Dtype.float32,
    normalize: Annotated[bool, typer.Option("--normalize", help="L2-normalize each row.")] = False,
    manifest: Annotated[
        Optional[Path],
        typer.Option("--manifest", metavar="FILE", help="Where to list the row paths (default: OUT.paths.txt)."),
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue an interrupted run, skipping the images already done.")
    ] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output (or discard a partial run).")] = False,
    update: Annotated[
        bool,
        typer.Option(
            "--update",
            help="Bring an existing OUT.npy up to date with INPUTS: embed new and changed files, drop rows of "
            "removed ones, keep every other row byte for byte (same options required; without --model, OUT's own).",
        ),
    ] = False,
    content_hash: Annotated[
        bool,
        typer.Option(
            "--hash",
            help="Record each file's sha256; with --update, compare contents instead of size and modification "
            "time, which also recognises moved files.",
        ),
    ] = False,
    null: NullOpt = False,
    model: ModelOpt = None,  # type: ignore[assignment]  # None: --update takes OUT's own model
    device: DeviceOpt = Device.auto,
    precision: PrecisionOpt = Precision.fp32,
    batch_size: BatchSizeOpt = DEFAULT_BATCH_SIZE,
    threads: ThreadsOpt = None,
    max_pixels: MaxPixelsOpt = DEFAULT_MAX_PIXELS,
    fast_jpeg: FastJpegOpt = False,
    engine: EngineOpt = Engine.local,
    ray_address: RayAddressOpt = None,
    workers: WorkersOpt = None,
    num_gpus_per_worker: GpusOpt = 0.0,
    shard: ShardOpt = None,
    shard_size: ShardSizeOpt = None,
    shard_dir: ShardDirOpt = None,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> int:
    """Pooled feature vectors (the embedding before the classifier) as one .npy array."""
    from bitcli import store
    from bitcli.distributed import EmbedJob, leftover_ray_run
    from bitcli.pipeline import Embedder
    from bitcli.store.collection import Collection

    ui = Ui(quiet=quiet, debug=debug)
    where = {"resume": resume, "overwrite": overwrite, "update": update}  # how the output is written
    # What --update / --resume continue, read before the model loads.
    before = store_paths(output_path, manifest, ui, check=False) if update or resume else None
    recorded = Collection(before).settings(update=update, resume=resume) if before is not None else None
    if recorded is not None:  # a setting not given is the recorded one; one given must agree
        mine = dict(model=model, normalize=normalize, dtype=dtype.value, content_hash=content_hash,
                    precision=precision.value, fast_jpeg=fast_jpeg, max_pixels=max_pixels)
        values = recorded.options({k: v for k, v in mine.items() if k in given_options(ctx)})
        model, normalize, content_hash, fast_jpeg, max_pixels = (values[k] for k in ("model", "normalize", "content_hash", "fast_jpeg", "max_pixels"))
        dtype, precision = Dtype(values["dtype"]), Precision(values["precision"])
    if resume and shard is None and engine is Engine.local:  # the rows' batches and kernels, as the run made them
        runtime = {k: v for k, v in continued_runtime(before).items() if k not in given_options(ctx)}
        batch_size, threads = runtime.get("batch_size", batch_size), runtime.get("threads", threads)
    model = model or DEFAULT_MODEL
    options = run_options(device, precision, batch_size, threads, max_pixels, fast_jpeg)
    dist = Distribution(engine, ray_address, workers, num_gpus_per_worker, shard, shard_size, shard_dir)
    job = EmbedJob(model, options, normalize=normalize, dtype=dtype.value, threads=threads, content_hash=content_hash)
    if dist.check(output_path == "-", manifest, update) and not (update and engine is Engine.ray):
        paths = store_paths(output_path, manifest, ui, **where, check=shard is None)  # a shard job writes shards, not OUT.npy
        return embed_distributed(ui, inputs, job, paths, dist, resume=resume, overwrite=overwrite, null=null, update=update)
    paths = store_paths(output_path, manifest, ui, **where)  # refuse a bad output before the model loads
    if engine is Engine.local and (discarded := leftover_ray_run(paths.out, overwrite=overwrite)):
        ui.info(f"removed {discarded}, the shards of an interrupted --engine ray run (--overwrite)")
    items = expand(inputs, null, ui)
    embedder = Embedder(load_model(model, options, ui, threads), normalize=normalize, options=options)
    fingerprint = {**embedder.fingerprint(), "dtype": dtype.value, **({"content_hash": "sha256"} if content_hash else {})}
    embed_groups = ray_groups(job, dist, paths.out) if engine is Engine.ray else embedder.embed_groups  # --update on Ray
    run = Collection(paths).plan(items, embed_groups, dim=embedder.feature_dim, fingerprint=fingerprint, dtype=dtype.value,
                                 content_hash=content_hash, **where)
    if run.up_to_date:
        ui.info(f"{paths.out}: up to date")
        return EXIT_OK
    if run.already_complete:  # exits as the run that made it did
        ui.info(f"{paths.out} is already complete; nothing to resume (pass --overwrite to redo it)")
        report_summary(ui, run.write(), paths, done=True)
        return EXIT_SOME_FAILED if run.writer.failed else EXIT_OK
    if run.writer.rows or run.writer.failed:
        ui.info(f"resuming: {run.writer.rows} images and {run.writer.failed} failures already recorded")
    # The bar counts images embedded; an update's copied rows are not work done (nor img/s).
    embeds = run.embeds
    bar, failed = ui.progress(sum(embeds), "embedding"), []
    again = "--update --resume" if update else "--resume"
    try:
        with store.write_errors(paths, again=again):
            with bar:
                summary = run.write(lambda group: report(ui, group, bar, failed, embeds),
                                    sys.stdout.buffer if paths.out is None else None)
    except BaseException as exc:
        if paths.partial is not None and paths.partial.exists():
            ui.info(f"partial results kept in {paths.partial}; rerun with {again} to continue")
        if isinstance(exc, KeyboardInterrupt):
            ui.summary(bar, len(failed))
        raise
    if run.summary:  # `photos.npy: +3 new, 1 changed, 2 removed, 23 kept; embedded 4 in 1.2 s`
        ui.info(f"{paths.out}: {run.summary}; embedded {bar.done} in {duration(bar.elapsed)}")
        report_summary(ui, summary, paths, done=True)
    else:
        report_summary(ui, summary, paths)
    ui.summary(bar, len(failed))
    stale_index_hint(ui, paths)
    return EXIT_SOME_FAILED if summary.failed else EXIT_OK


def ray_groups(job: Any, dist: Distribution, out: Path) -> Any:
    """`--update --engine ray`: what the update embeds, embedded on the cluster (a scratch set beside OUT)."""
    from bitcli.distributed import RayOptions, groups_on_ray

    options = RayOptions(dist.ray_address, dist.workers, dist.gpus, dist.shard_size, dist.shard_dir)
    return groups_on_ray(job, options, out.with_name(f".{out.name}.update.npy"))


def given_options(ctx: typer.Context) -> set[str]:
    """The options set on the command line (or through the environment), not left at defaults."""
    sources = {name: ctx.get_parameter_source(name) for name in ctx.params}
    return {name for name, source in sources.items() if source is not None and source.name != "DEFAULT"}


def continued_runtime(paths: Any) -> dict[str, Any]:
    """`--batch-size` and `--threads` as the run `--resume` continues had them (the interrupted run's
    state, else the finished output's run record), taken like the settings: batches are a run's
    unit of work, and oneDNN's own convolution (shard jobs' and Ray workers' default) runs on one thread only."""
    from bitcli.store.files import STATE, read_json_record

    for record in (paths.partial and read_json_record(paths.partial / STATE), paths.record and read_json_record(paths.record)):
        runtime = (record or {}).get("runtime")
        if isinstance(runtime, dict) and runtime:
            size = runtime.get("batch_size")
            valid = isinstance(size, int) and not isinstance(size, bool) and size >= 1
            return {**({"batch_size": size} if valid else {}), **({"threads": 1} if runtime.get("convolution") == "onednn" else {})}
    return {}


def stale_index_hint(ui: Ui, paths: Any) -> None:
    """After rewriting OUT.npy, an approximate index beside it no longer describes it."""
    from bitcli.collection.ann import AnnPaths

    if paths.out is not None and AnnPaths.for_array(paths.out).info.exists():
        ui.warn(f"{paths.out}'s approximate index is now out of date (search ignores it); rebuild: bit search {paths.out} --build-index")


def store_paths(output: str, manifest: Path | None, ui: Ui, *, resume: bool = False, overwrite: bool = False,
                update: bool = False, check: bool = True) -> Any:
    """The files this run writes, checked before the model loads (UsageError, exit 2). A
    publication an interrupted run had committed to is completed first, whatever the options."""
    from bitcli.store import check_output, recover
    from bitcli.store.paths import output_paths

    if output == "-" and is_terminal(sys.stdout):
        raise UsageError("-o - would write binary .npy data to the terminal; redirect stdout to a file or pipe")
    paths = output_paths(output, manifest)
    if paths.out is not None and recover(paths):
        ui.info(f"completed publishing {paths.out}, which an interrupted run had left half-renamed")
    if check:
        check_output(paths, resume=resume, overwrite=overwrite, update=update)
    return paths


def report(ui: Ui, group: list[Any], bar: Any, failed: list[str], embeds: list[bool]) -> None:
    """After each committed batch: one error line per failed input (the bar out of the way).
    `embeds` says, item by item in order, which ones are embedded (not copied): consumed here."""
    errors = [f"{result.path}: {result.error}" for result in group if not result.ok]
    failed += errors
    embedded = sum(embeds[: len(group)])
    del embeds[: len(group)]
    with bar.paused(done=embedded, screen=bool(errors)):
        for line in errors:
            ui.error(line)
