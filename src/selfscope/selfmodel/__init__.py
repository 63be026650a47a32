"""The self-model: traits the model knows it has, each with a probe that predicts it from
internal activations, kept as measurements (:mod:`.traits`, :mod:`.probe`)."""
