"""A target that dies after a budget of calls, for the kill-and-resume tests."""


def _interrupt():
  raise KeyboardInterrupt("killed")


class Killable:
  """Passes calls to the real target until `budget` is spent, then calls `die` (by default it
  raises KeyboardInterrupt, as a Ctrl-C or a kill would end the run)."""

  def __init__(self, inner, budget, die=_interrupt):
    self.inner, self.identity = inner, inner.identity
    self.budget, self.calls, self.die = budget, 0, die

  def _spend(self, n):
    if self.calls + n > self.budget:
      self.die()
    self.calls += n

  def score_options(self, texts, options):
    self._spend(len(texts))
    return self.inner.score_options(texts, options)

  def generate(self, texts, max_new_tokens):
    self._spend(len(texts))
    return self.inner.generate(texts, max_new_tokens)
