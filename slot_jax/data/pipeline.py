"""Host-side input pipeline: reproducible, resumable batches sliced per process."""
import queue
import threading
from typing import Iterator

import numpy as np

from slot_jax.data.builtin import DatasetInfo

Batch = dict[str, np.ndarray]


class BatchIterator:
    """Infinite batches of one split: step s covers examples [s * G, (s + 1) * G) of the stream.

    Each process yields its contiguous slice of the global batch G, so resuming at step s
    reproduces the batches of an uninterrupted run. A background thread keeps `prefetch`
    batches ready (0 generates on demand).
    """

    def __init__(
        self,
        info: DatasetInfo,
        split: str,
        global_batch_size: int,
        seed: int,
        start_step: int = 0,
        process_index: int = 0,
        process_count: int = 1,
        prefetch: int = 2,
    ):
        if global_batch_size % process_count:
            raise ValueError(
                f"global batch size {global_batch_size} is not divisible by the process count {process_count}"
            )
        if not 0 <= process_index < process_count:
            raise ValueError(f"process index {process_index} is outside [0, {process_count})")
        self.info, self.split, self.seed = info, split, seed
        self.global_batch_size = global_batch_size
        self.local_batch_size = global_batch_size // process_count
        self.process_index = process_index
        self.step = start_step  # the step the next batch belongs to
        self._stop = threading.Event()
        self._ready: queue.Queue | None = None
        if prefetch > 0:
            self._ready = queue.Queue(maxsize=prefetch)
            self._worker = threading.Thread(target=self._produce, args=(start_step,), daemon=True)
            self._worker.start()

    def batch_at(self, step: int) -> Batch:
        start = step * self.global_batch_size + self.process_index * self.local_batch_size
        return self.info.generate(self.seed, self.split, start, self.local_batch_size)

    def _produce(self, step: int) -> None:
        while not self._stop.is_set():
            try:
                item = self.batch_at(step)
            except Exception as error:  # handed to the consumer, which re-raises it
                item = error
            while not self._stop.is_set():
                try:
                    self._ready.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if isinstance(item, Exception):
                return
            step += 1

    def __iter__(self) -> "BatchIterator":
        return self

    def __next__(self) -> Batch:
        if self._stop.is_set():
            raise StopIteration
        if self._ready is None:
            batch = self.batch_at(self.step)
        else:
            batch = self._ready.get()
            if isinstance(batch, Exception):
                self.close()
                raise batch
        self.step += 1
        return batch

    def close(self) -> None:
        self._stop.set()
        if self._ready is not None:
            self._worker.join()

    def __enter__(self) -> "BatchIterator":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def pad_batch(batch: Batch, batch_size: int) -> Batch:
    """Zero-pads a batch of at most `batch_size` examples and adds `valid` bool [batch_size]."""
    count = len(next(iter(batch.values())))
    if count < batch_size:
        batch = {key: np.concatenate([value, np.zeros((batch_size - count, *value.shape[1:]), value.dtype)])
                 for key, value in batch.items()}
    return {**batch, "valid": np.arange(batch_size) < count}


def batches_of(examples: Batch, batch_size: int) -> Iterator[Batch]:
    """Fixed-size, padded batches over in-memory examples (e.g. the real samples)."""
    count = len(next(iter(examples.values())))
    for start in range(0, count, batch_size):
        yield pad_batch({k: v[start:start + batch_size] for k, v in examples.items()}, batch_size)


def eval_batches(info: DatasetInfo, split: str, num_examples: int, batch_size: int, seed: int) -> Iterator[Batch]:
    """Examples [0, num_examples) of a split in fixed batches; the last one is zero-padded.

    Every batch carries `valid` bool [batch_size], False on padding.
    """
    if batch_size <= 0 or num_examples < 0:
        raise ValueError(f"need batch_size > 0 and num_examples >= 0, got {batch_size} and {num_examples}")
    for start in range(0, num_examples, batch_size):
        count = min(batch_size, num_examples - start)
        yield pad_batch(info.generate(seed, split, start, count), batch_size)
