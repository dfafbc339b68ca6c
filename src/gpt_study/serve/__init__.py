"""``gpt-study serve``: a local web page to look inside the models, over a JSON API.

* :mod:`~gpt_study.serve.app`: the FastAPI app (routes under ``/api/``, the page at ``/``).
* :mod:`~gpt_study.serve.views`: what the token, attention and compare routes compute.
* :mod:`~gpt_study.serve.stream`: a generation streamed from a worker thread, one event a line.
* :mod:`~gpt_study.serve.registry`: the checkpoints and runs a server was started with.
* :mod:`~gpt_study.serve.limits`: the bounds on requests and the gate on concurrent work.
* ``static/``: the page (plain HTML, CSS and JavaScript, shipped in the package).

This ``__init__`` imports nothing, so the CLI can read the bounds (``limits``) without the web
stack; :mod:`~gpt_study.serve.app` needs the ``serve`` extra (FastAPI, uvicorn).
"""
