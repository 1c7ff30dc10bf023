"""`bit search` (the rows of an embedding most similar to each query, `collection.queries`) and
`bit info` (what an embedding holds)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from bitcli.cli.common import (
    EXIT_OK,
    EXIT_SOME_FAILED,
    ClassifyFormat,
    CsvRawOpt,
    NullOpt,
    Runtime,
    TableOrJson,
    Ui,
    epilog,
    load_model,
    option,
    require_stdout,
    server_option,
    takes,
)
from bitcli.errors import ModelNotFoundError, UsageError
from bitcli.util import npy_name

EPILOG = epilog(
    "bit search photos.npy photos/cat.jpg  # a photo already embedded: its stored row, no model",
    "bit search photos.npy new.jpg 'inbox/*.jpg' --top-k 5",
    "bit search photos.npy query.jpg --format csv > matches.csv",
    "bit search photos.npy query.jpg --html matches.html  # thumbnails embedded: open anywhere",
    "bit search photos.npy query.jpg --min-score 0.9  # only the matches scoring 0.9 or more",
    "bit search photos.npy --build-index  # approximate index beside it (pip install 'bitcli[search]')",
    note=(
        "Scores are cosine similarities. QUERY images are embedded with the model and settings INDEX "
        "was made with (from INDEX's .meta.json); a plain .npy without them needs --model."
    ),
)
INFO_EPILOG = epilog(
    "bit info photos.npy",
    "bit info photos.npy --format json | jq .model.reference",
    note="Reads the header, the manifest and the .npy header; no row, no model, no torch.",
)

IndexArg = Annotated[Path, typer.Argument(metavar="INDEX", help="An output of bit embed (the .npy file).", show_default=False)]
ManifestOpt = option(Optional[Path], "--manifest", metavar="FILE", help="The row paths, when not beside INDEX as INDEX.paths.txt.")
HtmlOpt = option(Optional[Path], "--html", metavar="FILE", help="Also write a self-contained HTML page with thumbnails.")
QueriesArg = Annotated[
    Optional[list[str]],
    typer.Argument(metavar="QUERY", help="Images (files, folders, quoted globs, - for paths on stdin) or paths of rows in INDEX.", show_default=False),
]
MinScoreOpt = option(
    Optional[float], "--min-score", "-s", metavar="S", show_default=False,
    help="List only matches whose cosine similarity is at least S (-1 to 1); with -k, of the k best.",
)
QueryModelOpt = option(
    Optional[str], "--model", "-m", metavar="MODEL", panel="Model and runtime",
    help="Embed queries with this model (default: the one INDEX was made with, from its metadata).",
)


@takes("device", "batch_size", "threads")
def search(
    index: IndexArg,
    queries: QueriesArg = None,
    top_k: Annotated[int, typer.Option("--top-k", "-k", min=1, help="Matches per query.")] = 10,
    min_score: MinScoreOpt = None,
    format: option(ClassifyFormat, "--format", "-f", help="auto: table on a terminal, jsonl otherwise.") = ClassifyFormat.auto,
    html: HtmlOpt = None,
    manifest: ManifestOpt = None,
    model: QueryModelOpt = None,
    exact: option(bool, "--exact", help="Exact search even when an approximate index is present.") = False,
    build_index: option(bool, "--build-index", help="Build the approximate index (faiss) beside INDEX, then answer any queries.") = False,
    null: NullOpt = False,
    csv_raw: CsvRawOpt = False,
    runtime: Runtime = Runtime(),
    server: server_option("Ask a running `bit serve --index INDEX` (INDEX: the collection's name there).") = None,
    ui: Ui = Ui(),
) -> int:
    """Rows of INDEX most similar to each query (cosine similarity)."""
    from bitcli.collection.queries import at_least, check_min_score

    check_min_score(min_score)
    if not queries and not build_index:
        raise UsageError("give at least one QUERY (an image, or a path in INDEX), or --build-index")
    if queries:
        require_stdout("the matches")
    if server is not None:
        if html is not None or build_index or manifest is not None or model is not None:
            raise UsageError("--server answers from the server's collection: drop --html, --build-index, --manifest and --model")
        from bitcli.cli.common import expand
        from bitcli.serve.client import Client, token_from_env

        client = Client(server, token=token_from_env())
        name = index.name.removesuffix(".npy")
        found = [r for group in client.search_groups(name, expand(queries, null), top_k=top_k, batch_size=runtime.batch_size) for r in group]
    else:
        collection = open_collection(index, manifest, html)
        if build_index:
            from bitcli.collection import ann

            with ui.progress(collection.rows, "indexing") as bar:
                built = ann.build(collection, progress=bar.advance)
            path = ann.AnnPaths.for_array(collection.array_path).index
            ui.info(f"built {path} ({built.info['factory']}, {collection.rows} rows) in {built.info['build_seconds']:.1f} s")
        if not queries:
            return EXIT_OK
        found = answer(ui, collection, queries, top_k, model, exact, runtime, null=null)
    from bitcli import output
    from bitcli.output.info import render_search

    found = at_least(found, min_score)
    render_search(found, output.resolve_format(format.value, sys.stdout), sys.stdout, csv_raw=csv_raw)
    if html is not None:
        from bitcli import __version__
        from bitcli.collection.html import search_page, write_page

        locate = lambda p: collection.locate(p) or (p if Path(p).exists() else None)  # noqa: E731  queries: as given
        about = f"{collection.rows} rows, top {top_k}, cosine similarity"
        write_page(html, search_page(found, locate, title=f"bit search {collection.array_path.name}", about=about, version=__version__))
    for result in found:
        if not result.ok:
            ui.error(f"{result.query}: {result.error}")
    return EXIT_SOME_FAILED if any(not r.ok for r in found) else EXIT_OK


def open_collection(index: Path, manifest: Path | None, html: Path | None) -> Any:
    """INDEX (`npy_name`) opened with its manifest, once the --html target is checked (before any work)."""
    from bitcli.collection import open_index

    if html is not None:
        from bitcli.collection.html import check_target

        check_target(html)
    return open_index(npy_name(index), manifest=manifest)


def answer(ui: Ui, index: Any, args: list[str], k: int, model: str | None, exact: bool, runtime: Runtime, *, null: bool = False) -> list[Any]:
    """One result per query, in order; the model loads only for queries that are not rows of INDEX."""
    from functools import partial

    from bitcli.collection.queries import answer

    found, outcome = answer(index, args, k, partial(embed_queries, ui, index, model, runtime), exact=exact, stdin=sys.stdin, null=null)
    if outcome is not None and outcome.notice:
        ui.warn(outcome.notice)
    if outcome is not None and not outcome.exact:
        ui.info(f"answered with the approximate index ({outcome.method}); --exact for exact search")
    return found


def embed_queries(ui: Ui, index: Any, model: str | None, runtime: Runtime, pending: list[Any]) -> list[Any]:
    """EmbedResults for the queries that are not rows of INDEX, with INDEX's model and settings."""
    from bitcli.collection.queries import query_settings, settings_differ
    from bitcli.pipeline import Embedder, RunOptions

    reference, settings = query_settings(index, model, pending[0].path)
    options = RunOptions.merge(runtime.options(), settings)  # search takes no --precision: the index's, else fp32
    try:
        loaded = load_model(reference, options, ui, runtime.threads)
    except ModelNotFoundError as exc:
        if model is not None or index.meta_path is None:
            raise
        raise ModelNotFoundError(
            f"the model {reference}, recorded in {index.meta_path}, does not exist any more; pass --model to embed the queries with another copy of it"
        ) from exc
    embedder = Embedder(loaded, options=options)
    differs = settings_differ(index, embedder.fingerprint())
    if differs:
        ui.warn(f"queries are embedded with other settings than the index: {differs}; scores may mislead")
    results: list[Any] = []
    with ui.progress(len(pending), "embedding queries") as bar:
        for group in embedder.embed_groups([query.item for query in pending]):
            results += group
            bar.advance(len(group))
    return results


@takes()
def info(
    index: IndexArg,
    format: option(TableOrJson, "--format", "-f", help="A table for people, or one JSON object.") = TableOrJson.table,
    manifest: ManifestOpt = None,
    ui: Ui = Ui(),
) -> int:
    """What an embedding holds: model and commit, rows, dimension, dtype, settings, identity policy."""
    from bitcli.collection import open_index
    from bitcli.output.info import render_info

    require_stdout("the report")
    collection = open_index(npy_name(index), manifest=manifest, allow_empty=True)
    try:
        report = collection.describe()
    finally:
        collection.close()
    render_info(report, format.value, sys.stdout)
    return EXIT_OK
