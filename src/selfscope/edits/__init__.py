"""The surgeon: targeted edits as stored proposals, validated on a sandbox copy.

Every ``propose`` tool (``edits.rank_one``, ``edits.revert_delta``, ``edits.ablate``,
``edits.steer``, ``edits.unlearn``, ``edits.reweight_experts``) computes a weight change from the
subject's read-only weights and stores it as a :class:`~selfscope.edits.proposal.Proposal`;
``edits.validate`` applies it to a deep copy and measures it on suites the caller passes in.
Nothing here changes the subject (docs/edits.md).
"""
