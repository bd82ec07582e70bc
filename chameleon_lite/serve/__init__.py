"""`chameleon-lite serve`: a local web page and HTTP API over one continuous-batching decode loop
(:mod:`chameleon_lite.generate.batching`). The app is :func:`chameleon_lite.serve.app.make_app`; the page's files
ship in ``static/`` (no build step, nothing fetched from elsewhere)."""
