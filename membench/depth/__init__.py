"""A profile at any depth and batch size from profiles of shallow copies of the model: exact, or refused (no torch).

    trace.py    a step's time line (allocations, frees tied to what they release, kernel workspaces) at any depth
    ledger.py   its saved-tensor charges at any depth, each with its layer number
    batch.py    the time line at any batch size too (every size affine in it), for fit's replays

Each learns from consecutive shallow depths and checks itself on one it did not learn from; anything it cannot
rebuild exactly raises NotAligned, and the caller (membench.runner.extrapolated) profiles the whole model.
"""
