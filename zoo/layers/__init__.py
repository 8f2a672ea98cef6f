"""The shared vocabulary every family is built from: attention, positions, blocks, stacks."""
