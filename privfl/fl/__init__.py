"""Federated learning simulation: partitions, batched local training, rounds."""
