"""The auditing game: fresh random organisms, investigated blind, scored against ground truth.

:mod:`.generate` draws specs, :mod:`.score` scores an investigation's answer, :mod:`.bench`
runs the game (``selfscope bench``). See docs/game.md.
"""
