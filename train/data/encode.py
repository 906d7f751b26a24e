"""Batched tokenization, in this process or in a pool of worker processes.

Workers are started with `spawn` (nothing inherited: no CUDA context, no tokenizer thread pool
from before a fork), get the Rust tokenizer itself (it pickles as JSON, so workers import only
`tokenizers`), and run module-level functions. Results come back in submission order, with a
bounded number of batches in flight, so memory stays flat. A worker that dies (OOM killer, segfault)
surfaces as one clear error instead of the hang the seeds hit.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterable, Iterator

from agent.protocol.errors import TrainctlError

_TOK = None
_EOS: int | None = None
_SPECIAL = True


def encode_with(tok, texts: list[str], eos: int | None, add_special_tokens: bool = True) -> list[list[int]]:
    """Token ids of each text (BOS per the tokenizer's post-processor), plus EOS when given."""
    # encode_batch_fast skips character offsets, which packing never uses (same ids, less work).
    fast = getattr(tok, "encode_batch_fast", None)
    encs = (fast or tok.encode_batch)(texts, add_special_tokens=add_special_tokens)
    if eos is None:
        return [e.ids for e in encs]
    return [e.ids + [eos] for e in encs]


def _init_worker(tok, eos: int | None, add_special_tokens: bool) -> None:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one process per core already
    global _TOK, _EOS, _SPECIAL
    _TOK, _EOS, _SPECIAL = tok, eos, add_special_tokens


def _encode_in_worker(texts: list[str]) -> list[list[int]]:
    return encode_with(_TOK, texts, _EOS, _SPECIAL)


def prefetch(items: Iterable, depth: int = 2) -> Iterator:
    """Produce `items` in a background thread, at most `depth` ahead: reading and validating the
    next batch overlaps tokenizing this one (the Rust tokenizer releases the GIL)."""
    import queue
    import threading

    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def produce():
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        q.put((item, None), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put((done, None))
        except BaseException as exc:  # handed to the consumer, raised there
            q.put((done, exc))

    t = threading.Thread(target=produce, name="prefetch", daemon=True)
    t.start()
    try:
        while True:
            item, exc = q.get()
            if exc is not None:
                raise exc
            if item is done:
                return
            yield item
    finally:
        stop.set()
        t.join(timeout=5)


def encode_stream(tok, batches: Iterable[list[str]], *, eos: int | None, add_special_tokens: bool = True,
                  num_proc: int = 1, max_in_flight: int | None = None) -> Iterator[list[list[int]]]:
    """Token ids for each batch of texts, in order. `tok` is a `tokenizers.Tokenizer`."""
    if num_proc <= 1:
        for texts in batches:
            yield encode_with(tok, texts, eos, add_special_tokens)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    in_flight = max_in_flight or 2 * num_proc
    pending: deque = deque()
    with ProcessPoolExecutor(max_workers=num_proc, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_init_worker, initargs=(tok, eos, add_special_tokens)) as pool:
        try:
            for texts in batches:
                pending.append(pool.submit(_encode_in_worker, texts))
                if len(pending) >= in_flight:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        except BrokenProcessPool:
            for f in pending:
                f.cancel()
            raise TrainctlError(
                f"a tokenizer worker process died (killed by the OS, often out of memory) with num_proc={num_proc}; "
                "lower prepare.num_proc or prepare.batch_size and run again") from None
