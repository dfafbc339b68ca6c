"""What a trained model does on held-out text, measured one way for every caller.

What lives here: ``heldout`` (the one scorer: overlapping windows over whole stories, NLL to bits
per byte), ``stories`` (the story protocol and its metrics: ``<eot>`` share, repeated n-grams),
``report`` (``gpt-study evaluate``: a checkpoint on a prepared folder, as a table and JSON),
``hf`` (``evaluate --hf``: any transformers causal LM scored the same way on the same text) and
``introspect`` (per-token scores, attention weights and the logit lens, for the web page).
Imports: config, model (with its loss), data, generate and runtime; never training or the CLI.
"""
