"""selfscope: hyper-introspection for language models.

Read a model's weights, activations, attention, token probabilities and gradients; trace a
behaviour to the components, weight changes, training documents and training phase that caused
it; propose targeted changes that are validated, approved and recorded before they apply.

This release holds the foundation: the workspace and its store, loading real models
(:mod:`selfscope.subject`) and building model organisms with known causes
(:mod:`selfscope.organisms`).
"""

__version__ = "0.1.0"
