"""The shared vocabulary every family is built from: projections, attention, positions, blocks,
stacks."""
