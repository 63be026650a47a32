"""The HTTP door: ``selfscope serve`` (:mod:`.app` — the API and the dashboard; :mod:`.jobs` —
long work in processes of its own)."""
