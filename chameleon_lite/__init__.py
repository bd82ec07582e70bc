"""chameleon-lite: an early-fusion generative model over text, images and audio in one token stream."""

__version__ = "0.1.0"
