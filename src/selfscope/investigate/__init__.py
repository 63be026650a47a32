"""The therapist: investigate a behaviour end to end through the registered tools.

:class:`selfscope.investigate.run.Investigation` notices (characterises) a symptom, traces it to
its origin phase, components, weight changes and training documents, states the mechanism as a
causal chain of measured effects, proposes several fixes and validates them through the gate,
leaving the best for a human's approval. See :mod:`selfscope.investigate.run`.
"""
