"""``gpt-study prepare``: a corpus -> cleaned stories -> vocabulary -> uint16 token streams.

One streaming pass over the stories, spread over all cores:

1. The main process reads raw stories (:mod:`gpt_study.data.sources`) in batches and hands them
   to worker processes, at most a few batches ahead, so memory stays flat.
2. A worker cleans each story (:func:`~gpt_study.data.clean.clean_text`), drops short ones and,
   for ``word``, splits it with spaCy once, caching the pieces of every space-free chunk. It
   encodes the pieces into its own provisional id space right away and sends back the ids plus
   the pieces it saw for the first time.
3. The main process maps provisional ids to corpus-wide ones (a numpy lookup), counts them and
   streams them to a temporary uint32 file. When the stream ends the frequency ranking gives the
   final vocabulary, and one numpy lookup per block turns the temporary file into ``train.bin``.
   So counting and encoding share one tokenization, as the issue asks; the study tokenized twice.

For ``bpe`` the workers only clean; the main process trains the byte-level BPE on the first
``--bpe_train_chars`` characters of the train split (a bounded sample) and encodes with the
``tokenizers`` library, which uses all cores itself. For ``byte`` there is nothing to learn:
the workers clean and encode each batch to its UTF-8 bytes (numpy over the whole batch) and the
main process only writes.

Everything is written into a hidden temporary folder renamed into place at the end, so a killed
run leaves nothing that looks finished; a finished folder with the same inputs and settings is
reused (``--force`` redoes it).

The modules, in import order (each imports only those before it):

- :mod:`.workers`: the worker side of step 2 (one batch cleaned, filtered and encoded) and the
  ordered, bounded pool that runs it.
- :mod:`.ids`: the main process's bookkeeping of step 3: provisional ids to corpus-wide ones and
  their counts, the split files being written, the held-out valid stories.
- :mod:`.passes`: the streaming pass itself, one function per tokenizer kind.
- :mod:`.folder`: the output folder's lifecycle (reuse, temp folder, meta.json, the rename into
  place) and :func:`prepare`, which runs it all.
"""

from gpt_study.data.prepare.folder import prepare

__all__ = ["prepare"]
