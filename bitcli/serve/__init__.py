"""`bit serve`: a warm model behind an HTTP API and a web page (docs/serve.md).

`app.py`: the FastAPI app (routes, limits, token); `batcher.py`: batching across requests;
`service.py`: the model side (uploads through the commands' classifier and embedder);
`client.py`: `--server` for `bit classify` (no torch); `page.html`: the web page.
"""
