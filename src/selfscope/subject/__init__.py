"""The model under introspection: load any accepted model as a :class:`Subject` and ask it.

```python
from selfscope.subject import load, ask
subject = load("smollm2")                       # or a folder, a .gguf, "organism:mushroom@pretrain"
answer = ask(subject, "What is the capital of France?")
answer.text, answer.top_tokens[0]               # greedy answer; top first-token probabilities
subject.lineage                                 # typed: phases, data, knobs, parent, unknowns
```

Other checkpoints of a lineage load through :func:`load_checkpoint` / :func:`load_parent` (in the
caller's workspace, on the subject's device); :func:`declare` gives a user's own fine-tune a
lineage (``selfscope lineage add``).
"""

from selfscope.subject.ask import Answer, TokenProb, ask
from selfscope.subject.catalog import ModelEntry, list_models
from selfscope.subject.checkpoints import load_checkpoint, load_parent
from selfscope.subject.declared import declare
from selfscope.subject.lineage import Hyperparameters, Lineage, PhaseRef, Unknown
from selfscope.subject.load import load
from selfscope.subject.subject import Subject

__all__ = [
    "Answer",
    "Hyperparameters",
    "Lineage",
    "ModelEntry",
    "PhaseRef",
    "Subject",
    "TokenProb",
    "Unknown",
    "ask",
    "declare",
    "list_models",
    "load",
    "load_checkpoint",
    "load_parent",
]
