"""Optional integrations built on privfl's contracts (the core never imports them).

- :mod:`privfl.integrations.flower` — Flower (``pip install privfl[flower]``): a robust, accounted
  strategy, client mods (local mechanism, Byzantine client) and a curious-server tap.
"""
