"""Shared by the trainer and contract tests: a real stream that is interrupted as Ctrl-C
would interrupt it."""


class InterruptAt:
    """Wraps a stream and raises KeyboardInterrupt before batch `n`."""

    def __init__(self, stream, n):
        self.stream, self.n = stream, n
        self.d_in, self.batch_size = stream.d_in, stream.batch_size

    def __iter__(self):
        for i, batch in enumerate(self.stream):
            if i == self.n:
                raise KeyboardInterrupt
            yield batch

    def state_dict(self):
        return self.stream.state_dict()

    def load_state_dict(self, s):
        self.stream.load_state_dict(s)

    def describe(self):
        return self.stream.describe()
