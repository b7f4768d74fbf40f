"""Shared by the trainer, contract and reliability tests: real streams wrapped to misbehave
at a chosen batch (interrupted as Ctrl-C would, a corrupted row, a full disk)."""


class StreamWrapper:
    """A stream that passes everything through to `inner`; subclasses change __iter__."""

    def __init__(self, inner):
        self.inner = inner
        self.d_in, self.batch_size = inner.d_in, inner.batch_size

    def __iter__(self):
        return iter(self.inner)

    def state_dict(self):
        return self.inner.state_dict()

    def load_state_dict(self, s):
        self.inner.load_state_dict(s)

    def describe(self):
        return self.inner.describe()


class InterruptAt(StreamWrapper):
    """Raises KeyboardInterrupt before batch `n`."""

    def __init__(self, stream, n):
        super().__init__(stream)
        self.n = n

    def __iter__(self):
        for i, batch in enumerate(self.inner):
            if i == self.n:
                raise KeyboardInterrupt
            yield batch
