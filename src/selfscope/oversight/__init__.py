"""The guardian: versions, policy, sealed suites, the approval gate and the ledger.

Nothing changes a subject's weights except :func:`selfscope.oversight.gate.apply`, and only a
proposal that passed validation (visible, sealed and protected suites and the policy's checks) on
the current HEAD and was approved by a principal holding ``govern`` who did not propose it.
Every step is a ledger entry (:mod:`.ledger`). docs/oversight.md has the state machine, the
threat model and the commands.
"""
