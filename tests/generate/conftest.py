import pytest
from toy import toy_model, toy_tokenizers

from chameleon_lite.generate import Generator


@pytest.fixture(scope="module")
def tk():
    """The toy tokenizers (text, a small image VQ, the toy audio codec)."""
    return toy_tokenizers()


@pytest.fixture(scope="module")
def gen(tk):
    """A Generator over a random-weight toy model of their vocabulary."""
    return Generator(toy_model(tk.vocab), tk)
