"""The senses: tools that read a model's weights, activations, attention, token probabilities
and gradients. Each module registers its tools in :mod:`selfscope.tools`."""
