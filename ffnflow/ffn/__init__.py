"""Flood-filling network: model, forward-pass predictor, canvas and movement policy."""
