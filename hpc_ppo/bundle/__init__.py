"""Offline wheel bundles: hpc-ppo and everything it needs, for a node without internet."""
