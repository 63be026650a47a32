"""The debugger: where in the network a behaviour lives, which weight changes made it, and in
which training phase it arose. Every tool here measures :mod:`selfscope.localize.metric`."""
