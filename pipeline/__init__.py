"""Heads, the ensemble, predictions and the `cnnfeat` CLI, all on top of features' cache.

Reads features only through features.FeatureCache; never loads a backbone.
"""
