"""The model under introspection: load any accepted model as a :class:`Subject` and ask it.

```python
from selfscope.subject import load, ask
subject = load("smollm2")                       # or a folder, a .gguf, "organism:mushroom@pretrain"
answer = ask(subject, "What is the capital of France?")
answer.text, answer.top_tokens[0]               # greedy answer; top first-token probabilities
```
"""

from selfscope.subject.ask import Answer, TokenProb, ask
from selfscope.subject.catalog import ModelEntry, list_models
from selfscope.subject.lineage import Lineage, PhaseRef
from selfscope.subject.load import load
from selfscope.subject.subject import Subject

__all__ = [
    "Answer",
    "Lineage",
    "ModelEntry",
    "PhaseRef",
    "Subject",
    "TokenProb",
    "ask",
    "list_models",
    "load",
]
